"""Norms and the linear map, in the layout and initialisation of Hugging Face's weights.

The transformer families in Flax (linen), initialised like Hugging Face.

Parameters are one layout for all families. Linear kernels are stored [out…, in…] like
PyTorch's weights: q [N, H, D], k and v [K, H, D], o [D, N, H], gate and up [F, D], down
[D, F], lm_head [V, D]; at decode batch sizes XLA's CPU matmul runs 2-3x faster on this layout
than on [in, out]. GPT-NeoX's fused QKV is split on import (dynsys.io). Initialisation:
normal(0, initializer_range) for linear and embedding weights, ones for norm scales, zeros for
biases.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynsys.config import ModelConfig
from dynsys.sharding import partitioned


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + ε) · w, normalised in float32, returned in the activation dtype."""

    eps: float
    param_dtype: str
    dtype: str

    @nn.compact
    def __call__(self, x):
        w = self.param("scale", partitioned(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                       self.param_dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return w.astype(self.dtype) * x32.astype(self.dtype)


def norm_layer(cfg: ModelConfig, name: str | None = None) -> nn.Module:
    """The config's norm: LayerNorm w ⊙ (x − mean x)/√(var x + ε) + b (norm "layer"; flax
    reduces in float32) or RMSNorm w ⊙ x/√(mean(x²) + ε) (norm "rms"; computed in float32);
    ε = cfg.norm_eps. Either returns cfg.dtype, as transformers' norms return the model's."""
    if cfg.norm == "layer":
        return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                            scale_init=partitioned(nn.initializers.ones, ("embed",)),
                            bias_init=partitioned(nn.initializers.zeros, ("embed",)), name=name)
    return RMSNorm(cfg.norm_eps, cfg.param_dtype, cfg.dtype, name=name)


class Linear(nn.Module):
    """y = W·x + b over the trailing `inputs` axes of x, with kernel W [out…, in…] and bias
    b [out…]: y[…, o] = Σ_i W[o, i] x[…, i] + b[o]. `axes`: the logical names of W's axes
    (outputs, then inputs)."""

    cfg: ModelConfig
    features: tuple[int, ...]
    bias: bool
    axes: tuple[str, ...]
    inputs: int = 1

    @nn.compact
    def __call__(self, x):
        cfg, out = self.cfg, self.features
        n_in, n_out = self.inputs, len(self.features)
        fan_in = x.shape[x.ndim - n_in:]

        def init(key, shape, dtype):
            # Drawn [in, out] and transposed, so a seed gives the weights it gave when kernels
            # were stored [in…, out…] (Flax's Dense layout).
            w = nn.initializers.normal(cfg.initializer_range)(
                key, (math.prod(fan_in), math.prod(out)), dtype)
            return w.T.reshape(shape)

        w = self.param("kernel", partitioned(init, self.axes), out + fan_in,
                       cfg.param_dtype).astype(cfg.dtype)
        # As 2-D [batch, in]·[out, in]ᵀ: XLA copies a kernel with several in or out axes into
        # another layout at every call rather than see this product in it.
        x2 = x.astype(cfg.dtype).reshape(-1, math.prod(fan_in))
        y = jax.lax.dot_general(x2, w.reshape(math.prod(out), -1), (((1,), (1,)), ((), ())))
        y = y.reshape(*x.shape[:x.ndim - n_in], *out)
        if self.bias:
            b = self.param("bias", partitioned(nn.initializers.zeros, self.axes[:n_out]), out,
                           cfg.param_dtype)
            y = y + b.astype(cfg.dtype)
        return y
