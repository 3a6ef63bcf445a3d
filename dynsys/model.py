"""The transformer families in Flax (linen), initialised like Hugging Face.

Parameters are one layout for all families: q [D, N, H], k and v [D, K, H], o [N, H, D];
GPT-NeoX's fused QKV is split on import (dynsys.weights). Initialisation: normal(0,
initializer_range) for linear and embedding weights, ones for norm scales, zeros for biases.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynsys.attention import Segment, attend
from dynsys.cache import Prefix, RowCache, empty_rows
from dynsys.config import ModelConfig
from dynsys.rope import apply_rope


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + ε) · w, computed in float32."""

    eps: float
    dtype: str

    @nn.compact
    def __call__(self, x):
        w = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return w * x32.astype(self.dtype)


def norm_layer(cfg: ModelConfig, name: str | None = None) -> nn.Module:
    """The family's norm layer: LayerNorm w ⊙ (x − mean x)/√(var x + ε) + b for gpt_neox,
    RMSNorm w ⊙ x/√(mean(x²) + ε) otherwise (ε = cfg.norm_eps; normalised in float32)."""
    if cfg.family == "gpt_neox":
        return nn.LayerNorm(epsilon=cfg.norm_eps, dtype=jnp.float32, param_dtype=cfg.dtype,
                            name=name)
    return RMSNorm(cfg.norm_eps, cfg.dtype, name=name)


def _dense(cfg: ModelConfig, features, name: str | None, bias: bool, axis=-1) -> nn.DenseGeneral:
    return nn.DenseGeneral(
        features, axis=axis, use_bias=bias, dtype=cfg.dtype, param_dtype=cfg.dtype,
        kernel_init=nn.initializers.normal(cfg.initializer_range),
        bias_init=nn.initializers.zeros, name=name)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, rows: tuple, prefix: tuple | None):
        """x [B, T, D] at positions [B, T]; rows = (k, v, slot, key_mask): this layer's row
        cache [B, K, C, H], the first slot to write and the row mask [B, T, C]; prefix = (k, v,
        key mask [S]) with k, v [K, S, H]. Returns the output [B, T, D] and the updated (k, v)."""
        cfg = self.cfg
        B, T, _ = x.shape
        N, K, G, H = cfg.num_heads, cfg.num_kv_heads, cfg.heads_per_kv, cfg.head_dim
        q = _dense(cfg, (N, H), "q", cfg.qkv_bias)(x)
        k = _dense(cfg, (K, H), "k", cfg.qkv_bias)(x)
        v = _dense(cfg, (K, H), "v", cfg.qkv_bias)(x)
        q, k = apply_rope(q, positions, cfg), apply_rope(k, positions, cfg)
        cache_k, cache_v, slot, key_mask = rows
        # Padding slots are written too; key_mask keeps every query from reading them.
        cache_k = jax.lax.dynamic_update_slice(
            cache_k, k.astype(cache_k.dtype).transpose(0, 2, 1, 3), (0, 0, slot, 0))
        cache_v = jax.lax.dynamic_update_slice(
            cache_v, v.astype(cache_v.dtype).transpose(0, 2, 1, 3), (0, 0, slot, 0))
        segments = [Segment(cache_k, cache_v, key_mask)]
        if prefix is not None:
            segments.insert(0, Segment(*prefix))
        out, _ = attend(q.reshape(B, T, K, G, H), segments)
        out = out.reshape(B, T, N, H).astype(cfg.dtype)
        y = _dense(cfg, cfg.hidden_size, "o", cfg.family == "gpt_neox", axis=(-2, -1))(out)
        return y, (cache_k, cache_v)


class MLP(nn.Module):
    """SwiGLU down(silu(gate x) ⊙ up x) for llama/qwen2; down(gelu(up x + b) ) + b for gpt_neox."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        if cfg.family == "gpt_neox":
            h = jax.nn.gelu(_dense(cfg, cfg.intermediate_size, "up", True)(x), approximate=False)
            return _dense(cfg, cfg.hidden_size, "down", True)(h)
        gate = _dense(cfg, cfg.intermediate_size, "gate", False)(x)
        up = _dense(cfg, cfg.intermediate_size, "up", False)(x)
        return _dense(cfg, cfg.hidden_size, "down", False)(jax.nn.silu(gate) * up)


class Block(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, rows, prefix):
        cfg = self.cfg
        h, kv = Attention(cfg, name="attn")(norm_layer(cfg, "norm1")(x), positions, rows, prefix)
        if cfg.family == "gpt_neox" and cfg.parallel_residual:
            x = x + h + MLP(cfg, name="mlp")(norm_layer(cfg, "norm2")(x))
        else:
            x = x + h
            x = x + MLP(cfg, name="mlp")(norm_layer(cfg, "norm2")(x))
        self.sow("intermediates", "residual", x)
        return x, kv


class Transformer(nn.Module):
    """tokens [B, T] → final hidden states [B, T, D] (call), hidden → logits (method `logits`)."""

    cfg: ModelConfig

    def setup(self):
        cfg = self.cfg
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                              param_dtype=cfg.dtype,
                              embedding_init=nn.initializers.normal(cfg.initializer_range))
        self.blocks = [Block(cfg) for _ in range(cfg.num_layers)]
        self.final_norm = norm_layer(cfg)
        if not cfg.tie_embeddings:
            self.lm_head = _dense(cfg, cfg.vocab_size, None, False)

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
        x = self.embed(tokens)
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


def init_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random parameters drawn like Hugging Face's `_init_weights` (see module docstring)."""
    tokens = jnp.zeros((1, 1), jnp.int32)

    def everything(module: Transformer):
        hidden, _ = module(tokens, tokens, empty_rows(cfg, 1, 1), tokens >= 0, None)
        return module.logits(hidden)

    return Transformer(cfg).init(jax.random.PRNGKey(seed), method=everything)["params"]


@dataclasses.dataclass(frozen=True)
class Model:
    """A configuration and its parameters; pass `model.params` into jitted functions."""

    config: ModelConfig
    params: dict

    @property
    def module(self) -> Transformer:
        return Transformer(self.config)

    def with_rope(self, use_rope: bool) -> Model:
        """The same weights with the rotary embedding on, or replaced by the identity."""
        return Model(self.config.with_rope(use_rope), self.params)

    @property
    def num_params(self) -> int:
        return sum(x.size for x in jax.tree_util.tree_leaves(self.params))
