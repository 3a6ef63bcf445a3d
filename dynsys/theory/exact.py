"""What the proofs treat as exact, in float64: the model's pieces as pure jax functions of
float64 parameter trees, and the float32 precondition of every certificate.

The certificates (proofs/multi_layer.md, history_uniform.md, periodic.md) bound an
exact-arithmetic model from quantities of its reference run. The model itself runs in float32
(RMSNorm, softmax and logits always; matmuls in `ModelConfig.dtype`); the recorded reference
streams are taken as given, and everything derived from them that the proofs read as exact
(norm layers, MLP branches, queries and keys, their Jacobians, operator norms, the prompt
attention's covariance and value spread) is recomputed here in float64. Call these functions
inside `jax.enable_x64(True)`: outside it jax computes in float32 (`float64` below checks).

The certificates' rounding slack is the float32 unit roundoff of the LM head: a model whose
activations or KV cache are not float32 (bfloat16 rounds 2¹⁶ times coarser) is refused by
`check_float32`, not bounded with the wrong unit."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig
from dynsys.nn.rope import rope_angles, rotate

F64 = 2.0 ** -40  # float64 evaluation slack, relative (≈ 8000 u₆₄: dot products up to ~10⁴)


def check_float32(cfg: ModelConfig, what: str) -> None:
    """Refuse a model whose activations or KV cache are not float32: the certificates' rounding
    slack is float32's (u = 2⁻²⁴)."""
    for name in ("dtype", "cache_dtype"):
        value = getattr(cfg, name)
        if value != "float32":
            raise ValueError(f"{what}: {name}={value!r}; the certificates model float32 "
                             f"rounding only (use model.config.with_dtype('float32'))")


def float64(tree):
    """A parameter tree (or any pytree of arrays) as float64 numpy arrays."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def on_host(fn):
    """fn evaluated under jax.enable_x64 on numpy (or float64) inputs, returning numpy arrays:
    the float64 pieces below for host-side numpy code."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return jax.tree_util.tree_map(np.asarray, fn(*args, **kwargs))

    return wrapped


def _check_x64(x):
    if x.dtype != jnp.float64:
        raise ValueError(f"dynsys.theory.exact computes in float64, got {x.dtype} "
                         "(call it inside jax.enable_x64(True))")
    return x


def spread(cfg: ModelConfig, x):
    """rms(x) (RMSNorm) or std(x) (LayerNorm) over the last axis."""
    if cfg.norm == "layer":
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return jnp.sqrt(jnp.mean(x * x, axis=-1))


def norm(cfg: ModelConfig, tree: dict, x):
    """The norm layer y = w ⊙ (x − μ)/√(ms(x − μ) + ε) (+ b), μ = 0 for RMSNorm, on x [..., D]."""
    x = _check_x64(jnp.asarray(x))
    if cfg.norm == "layer":
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    y = x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + cfg.norm_eps) * tree["scale"]
    return y + tree["bias"] if "bias" in tree else y


def mlp(cfg: ModelConfig, tree: dict, y):
    """The MLP on norm outputs y [..., D]: SwiGLU W_d(silu(W_g y) ⊙ (W_u y + b_u)) + b_d, or
    GELU (erf) W_d gelu(W_u y + b_u) + b_d."""
    up = y @ tree["up"]["kernel"].T + tree["up"].get("bias", 0.0)
    if cfg.mlp == "swiglu":
        g = y @ tree["gate"]["kernel"].T
        hidden = g * jax.nn.sigmoid(g) * up
    else:
        hidden = up * (1 + jax.scipy.special.erf(up / math.sqrt(2))) / 2
    return hidden @ tree["down"]["kernel"].T + tree["down"].get("bias", 0.0)


def project(dense: dict, u, cfg: ModelConfig | None = None, positions=None):
    """Heads u [..., D] → [..., heads, H] through a kernel [heads, H, D] and its bias, rotated
    by RoPE at positions [...] (the model's float32 angles, float64 cos/sin) when given."""
    y = jnp.einsum("hkD,...D->...hk", dense["kernel"], u) + dense.get("bias", 0.0)
    if positions is None or not cfg.use_rope:
        return y
    angles = rope_angles(jnp.asarray(positions), cfg).astype(jnp.float64)
    return rotate(y, angles[..., None, :], cfg.rotary_dim)
