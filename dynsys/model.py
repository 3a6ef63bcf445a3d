"""The transformer families in Flax (linen), initialised like Hugging Face.

Parameters are one layout for all families. Linear kernels are stored [out…, in…] like
PyTorch's weights: q [N, H, D], k and v [K, H, D], o [D, N, H], gate and up [F, D], down
[D, F], lm_head [V, D]; at decode batch sizes XLA's CPU matmul runs 2-3x faster on this layout
than on [in, out]. GPT-NeoX's fused QKV is split on import (dynsys.weights). Initialisation:
normal(0, initializer_range) for linear and embedding weights, ones for norm scales, zeros for
biases.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dynsys.attention import Segment, attend
from dynsys.cache import ROW_KEY_AXES, ROW_VALUE_AXES, Prefix, RowCache, empty_rows
from dynsys.config import ModelConfig
from dynsys.rope import apply_rope
from dynsys.sharding import constrain, partitioned
from dynsys.sites import site


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
    """The config's norm: LayerNorm w ⊙ (x − mean x)/√(var x + ε) + b (norm "layer", output
    float32) or RMSNorm w ⊙ x/√(mean(x²) + ε) (norm "rms"); ε = cfg.norm_eps."""
    if cfg.norm == "layer":
        return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=jnp.float32, param_dtype=cfg.param_dtype,
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


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, rows: tuple, prefix: tuple | None):
        """x [B, T, D] at positions [B, T]; rows = (k, v, slot, key_mask): this layer's row
        cache (k [B, K, H, C], v [B, K, C, H]), the first slot to write and the row mask
        [B, T, C]; prefix = (k [K, H, S], v [K, S, H], key mask [S]). Returns the output
        [B, T, D] and the updated (k, v)."""
        cfg = self.cfg
        B, T, _ = x.shape
        N, K, G, H = cfg.num_heads, cfg.num_kv_heads, cfg.heads_per_kv, cfg.head_dim
        q = Linear(cfg, (N, H), cfg.qkv_bias, ("heads", "head_dim", "embed"), name="q")(x)
        k = Linear(cfg, (K, H), cfg.qkv_bias, ("kv_heads", "head_dim", "embed"), name="k")(x)
        v = Linear(cfg, (K, H), cfg.qkv_bias, ("kv_heads", "head_dim", "embed"), name="v")(x)
        q = constrain(q, ("batch", "seq", "heads", "head_dim"))
        q, k = site(self, "query", apply_rope(q, positions, cfg)), apply_rope(k, positions, cfg)
        cache_k, cache_v, slot, key_mask = rows
        # Padding slots are written too; key_mask keeps every query from reading them.
        cache_k = jax.lax.dynamic_update_slice(
            cache_k, k.astype(cache_k.dtype).transpose(0, 2, 3, 1), (0, 0, 0, slot))
        cache_v = jax.lax.dynamic_update_slice(
            cache_v, v.astype(cache_v.dtype).transpose(0, 2, 1, 3), (0, 0, slot, 0))
        # One buffer for the updated cache: without the barrier XLA fuses the update into the
        # attention reads and the carried cache separately, copying every cache at every step.
        cache_k, cache_v = jax.lax.optimization_barrier((cache_k, cache_v))
        cache_k, cache_v = constrain(cache_k, ROW_KEY_AXES), constrain(cache_v, ROW_VALUE_AXES)
        segments = [Segment(cache_k, cache_v, key_mask)]
        if prefix is not None:
            segments.insert(0, Segment(*prefix))
        out, _ = attend(q.reshape(B, T, K, G, H), segments)
        out = site(self, "heads", out.reshape(B, T, N, H).astype(cfg.dtype))
        y = Linear(cfg, (cfg.hidden_size,), cfg.out_bias, ("embed", "heads", "head_dim"),
                   inputs=2, name="o")(out)
        return y, (cache_k, cache_v)


class MLP(nn.Module):
    """down(silu(gate x) ⊙ up x) (mlp "swiglu") or down(gelu(up x + b)) + b (mlp "gelu");
    sites "mlp_up" (up x) and "mlp_hidden" (what enters down)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        D, F = cfg.hidden_size, cfg.intermediate_size
        up = site(self, "mlp_up", Linear(cfg, (F,), cfg.out_bias, ("mlp", "embed"), name="up")(x))
        if cfg.mlp == "gelu":
            hidden = jax.nn.gelu(up, approximate=False)
        else:
            gate = Linear(cfg, (F,), False, ("mlp", "embed"), name="gate")(x)
            hidden = jax.nn.silu(gate) * up
        hidden = site(self, "mlp_hidden", constrain(hidden, ("batch", "seq", "mlp")))
        return Linear(cfg, (D,), cfg.out_bias, ("embed", "mlp"), name="down")(hidden)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, rows, prefix):
        cfg = self.cfg
        h, kv = Attention(cfg, name="attn")(norm_layer(cfg, "norm1")(x), positions, rows, prefix)
        mid = site(self, "resid_mid", x + site(self, "attn_out", h))
        # parallel: x + attn(ln1 x) + mlp(ln2 x); sequential: mid + mlp(ln2 mid)
        mlp_in = x if cfg.parallel_residual else mid
        m = site(self, "mlp_out", MLP(cfg, name="mlp")(norm_layer(cfg, "norm2")(mlp_in)))
        return site(self, "resid_post", mid + m), kv


class Transformer(nn.Module):
    """tokens [B, T] → final hidden states [B, T, D] (call), hidden → logits (method `logits`)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                              param_dtype=cfg.param_dtype,
                              embedding_init=partitioned(
                                  nn.initializers.normal(cfg.initializer_range),
                                  ("vocab", "embed")))
        self.blocks = [Block(cfg) for _ in range(cfg.num_layers)]
        self.final_norm = norm_layer(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg, (cfg.vocab_size,), False, ("vocab", "embed"))

    def __call__(self, tokens, positions, rows: RowCache, write_mask, prefix: Prefix | None):
        """Run tokens [B, T] at positions [B, T], written to row slots [end, end + T) where
        write_mask [B, T] is True (False: left padding, attends to nothing, is never a key).

        Row keys visible to query t: written, valid slots c ≤ end + t. Prefix keys: its
        [0, length) slots. Returns hidden [B, T, D] and the updated RowCache.
        """
        B, T = tokens.shape
        slots = rows.end + jnp.arange(T)
        valid = jax.lax.dynamic_update_slice(rows.valid, write_mask, (0, rows.end))
        causal = jnp.arange(rows.capacity)[None, :] <= slots[:, None]  # [T, C]
        key_mask = valid[:, None, :] & causal[None] & write_mask[:, :, None]
        x = site(self, "embed_out", constrain(self.embed(tokens), ("batch", "seq", "embed")))
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i], prefix.valid)
            x, (k, v) = block(x, positions, (rows.k[i], rows.v[i], rows.end, key_mask),
                              layer_prefix)
            new_k.append(k)
            new_v.append(v)
        rows = RowCache(k=tuple(new_k), v=tuple(new_v), valid=valid, end=rows.end + T)
        return self.final_norm(x), rows

    def logits(self, hidden):
        """hidden [..., D] → float32 logits [..., V]."""
        if self.cfg.tie_embeddings:
            return self.embed.attend(hidden).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)


def _init_boxed(cfg: ModelConfig, seed: int) -> dict:
    """The parameters as Flax initialises them: each leaf boxed with its logical axis names."""
    tokens = jnp.zeros((1, 1), jnp.int32)

    def everything(module: Transformer):
        hidden, _ = module(tokens, tokens, empty_rows(cfg, 1, 1), tokens >= 0, None)
        return module.logits(hidden)

    return Transformer(cfg).init(jax.random.PRNGKey(seed), method=everything)["params"]


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random parameters drawn like Hugging Face's `_init_weights` (see module docstring)."""
    return nn.meta.unbox(_init_boxed(cfg, seed))


def param_axes(cfg: ModelConfig) -> dict:
    """The logical axis names of every parameter: a tree like the parameters whose leaves are
    PartitionSpecs of names (see dynsys.sharding), e.g. q's kernel ("heads", "head_dim",
    "embed"). Nothing is computed."""
    return nn.get_partition_spec(jax.eval_shape(lambda: _init_boxed(cfg, 0)))


@dataclasses.dataclass(frozen=True)
class Model:
    """A configuration and its parameters; pass `model.params` into jitted functions.

    Parameter leaves are treated as immutable (jax arrays): `digest` is cached against the
    identity of the leaves, so replacing a leaf in the tree is noticed, mutating a numpy leaf
    in place is not.
    """

    config: ModelConfig
    params: dict

    @property
    def module(self) -> Transformer:
        return Transformer(self.config)

    def with_rope(self, use_rope: bool) -> Model:
        """The same weights with the rotary embedding on, or replaced by the identity."""
        other = Model(self.config.with_rope(use_rope), self.params)
        other.__dict__["_params_digest"] = self.__dict__.get("_params_digest")
        return other

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree_util.tree_leaves(self.params))

    @property
    def params_digest(self) -> str:
        """SHA-256 of every parameter: its path, dtype, shape and bytes (all of them)."""
        leaves = jax.tree_util.tree_leaves_with_path(self.params)
        ids = tuple(id(x) for _, x in leaves)
        cached = self.__dict__.get("_params_digest")
        if cached is not None and cached[0] == ids:
            return cached[1]
        h = hashlib.sha256()
        for path, x in leaves:
            x = np.asarray(x)
            h.update(f"{jax.tree_util.keystr(path)}:{x.dtype}:{x.shape};".encode())
            h.update(np.ascontiguousarray(x).data)
        self.__dict__["_params_digest"] = (ids, h.hexdigest())
        return self.__dict__["_params_digest"][1]

    @property
    def digest(self) -> str:
        """SHA-256 of the configuration and all parameters: what a cached prefix or map of
        this model depends on."""
        return hashlib.sha256(f"{self.config!r}|{self.params_digest}".encode()).hexdigest()

    def copy(self) -> Model:
        """The same model with a fresh parameter tree (the immutable leaves are shared), so
        editing one tree's structure leaves the other alone."""
        return Model(self.config, jax.tree_util.tree_map(lambda x: x, self.params))
