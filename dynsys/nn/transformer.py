"""The transformer families in Flax (linen): attention, MLP, block and the whole model, with
named sites (dynsys.nn.sites) and logical axis names (dynsys.sharding)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dynsys.checks import check_seed
from dynsys.config import ModelConfig
from dynsys.nn.attention import Segment, attend
from dynsys.nn.blockwise import causal_attention
from dynsys.nn.cache import ROW_KEY_AXES, ROW_VALUE_AXES, Prefix, RowCache, empty_rows
from dynsys.nn.layers import Linear, norm_layer
from dynsys.nn.rope import apply_rope
from dynsys.nn.sites import record, site
from dynsys.sharding import constrain, partitioned


def _cached(q, k, v, rows: tuple, prefix: tuple | None, weights: bool):
    """Write k, v [B, T, K, H] into the row cache and attend q [B, T, K, G, H] to the
    prefix and the rows (see Attention.__call__): (`Attended`, updated (k, v))."""
    cache_k, cache_v, slot, key_mask, key_bias = rows
    # Padding slots are written too; key_mask keeps every query from reading them.
    cache_k = jax.lax.dynamic_update_slice(
        cache_k, k.astype(cache_k.dtype).transpose(0, 2, 3, 1), (0, 0, 0, slot))
    cache_v = jax.lax.dynamic_update_slice(
        cache_v, v.astype(cache_v.dtype).transpose(0, 2, 1, 3), (0, 0, slot, 0))
    # One buffer for the updated cache: without the barrier XLA fuses the update into the
    # attention reads and the carried cache separately, copying every cache at every step.
    cache_k, cache_v = jax.lax.optimization_barrier((cache_k, cache_v))
    cache_k, cache_v = constrain(cache_k, ROW_KEY_AXES), constrain(cache_v, ROW_VALUE_AXES)
    segments = [Segment(cache_k, cache_v, key_mask, key_bias)]
    if prefix is not None:
        segments.insert(0, Segment(*prefix))
    return attend(q, segments, weights), (cache_k, cache_v)


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, rows: tuple, prefix: tuple | None):
        """x [B, T, D] at positions [B, T]; rows = (k, v, slot, key_mask, key_bias): this
        layer's row cache (k [B, K, H, C], v [B, K, C, H]), the first slot to write, the row
        mask [B, T, C] and an additive score bias [1, T, C] or None; prefix = (k [K, H, S],
        v [K, S, H], key mask [S]). Returns the output [B, T, D] and the updated (k, v).
        rows=None (and no prefix): causal attention of the T tokens alone, in blocks
        (dynsys.nn.blockwise), no cache; returns (output, None).

        When recording, the record-only site "attn_weights" [B, T, N, S + C] holds each
        head's softmax weights over the prefix's S slots, then the C row slots (0 where
        masked), from the scores the output is computed from; the blockwise path has none."""
        cfg = self.cfg
        B, T, _ = x.shape
        N, K, G, H = cfg.num_heads, cfg.num_kv_heads, cfg.heads_per_kv, cfg.head_dim
        q = Linear(cfg, (N, H), cfg.qkv_bias, ("heads", "head_dim", "embed"), name="q")(x)
        k = Linear(cfg, (K, H), cfg.qkv_bias, ("kv_heads", "head_dim", "embed"), name="k")(x)
        v = Linear(cfg, (K, H), cfg.qkv_bias, ("kv_heads", "head_dim", "embed"), name="v")(x)
        q = constrain(q, ("batch", "seq", "heads", "head_dim"))
        q, k = site(self, "query", apply_rope(q, positions, cfg)), apply_rope(k, positions, cfg)
        if rows is None:
            out, kv = causal_attention(q.reshape(B, T, K, G, H), k, v), None
        else:
            recording = self.is_mutable_collection("record")
            attended, kv = _cached(q.reshape(B, T, K, G, H), k, v, rows, prefix, recording)
            out = attended.output
            if recording:
                record(self, "attn_weights", attended.weights.reshape(B, T, N, -1))
        out = site(self, "heads", out.reshape(B, T, N, H).astype(cfg.dtype))
        y = Linear(cfg, (cfg.hidden_size,), cfg.out_bias, ("embed", "heads", "head_dim"),
                   inputs=2, name="o")(out)
        return y, kv


class MLP(nn.Module):
    """down(silu(gate x) ⊙ up x) (mlp "swiglu") or down(gelu(up x + b)) + b (mlp "gelu");
    sites "mlp_up" (up x) and "mlp_hidden" (what enters down)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        D, F = cfg.hidden_size, cfg.intermediate_size
        swiglu = cfg.mlp == "swiglu"
        gate = Linear(cfg, (F,), False, ("mlp", "embed"), name="gate")(x) if swiglu else None
        up = site(self, "mlp_up", Linear(cfg, (F,), cfg.out_bias, ("mlp", "embed"), name="up")(x))
        hidden = jax.nn.silu(gate) * up if swiglu else jax.nn.gelu(up, approximate=False)
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

    def __call__(self, tokens, positions, rows: RowCache, write_mask, prefix: Prefix | None,
                 key_bias: tuple | None = None):
        """Run tokens [B, T] at positions [B, T], written to row slots [end, end + T) where
        write_mask [B, T] is True (False: left padding, attends to nothing, is never a key).

        Row keys visible to query t: written, valid slots c ≤ end + t. Prefix keys: its
        [0, length) slots. Returns hidden [B, T, D] and the updated RowCache.

        key_bias = (first, b): in every layer and head, the scores of the row keys in slots
        first ≤ c < end + t (those before query t's own slot) get + b (a traced float; −inf
        hides them). With first = the first generated slot these are the earlier generated
        keys: the prompt's keys and the query's own are untouched.

        rows=None (training's full sequence; write_mask and prefix are then unused): every
        query t sees tokens 0..t of this call alone, by dynsys.nn.blockwise, and no cache is
        kept (the RowCache returned is None).
        """
        x = site(self, "embed_out", constrain(self.embed(tokens), ("batch", "seq", "embed")))
        if rows is None:
            if key_bias is not None:
                raise ValueError("key_bias needs a row cache (rows=None attends in blocks)")
            for block in self.blocks:
                x, _ = block(x, positions, None, None)
            return self.final_norm(x), None
        _, T = tokens.shape
        slots = rows.end + jnp.arange(T)
        valid = jax.lax.dynamic_update_slice(rows.valid, write_mask, (0, rows.end))
        causal = jnp.arange(rows.capacity)[None, :] <= slots[:, None]  # [T, C]
        key_mask = valid[:, None, :] & causal[None] & write_mask[:, :, None]
        bias = None
        if key_bias is not None:
            first, b = key_bias
            slot = jnp.arange(rows.capacity)[None, :]
            earlier = (slot >= first) & (slot < slots[:, None])  # [T, C]
            bias = jnp.where(earlier, jnp.asarray(b, jnp.float32), 0.0)[None]  # [1, T, C]
        new_k, new_v = [], []
        for i, block in enumerate(self.blocks):
            layer_prefix = None if prefix is None else (prefix.k[i], prefix.v[i], prefix.valid)
            x, (k, v) = block(x, positions, (rows.k[i], rows.v[i], rows.end, key_mask, bias),
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
    """Random parameters drawn like Hugging Face's `_init_weights`: normal(0, initializer_range)
    for linear and embedding weights, ones for norm scales, zeros for biases (dynsys.nn.layers),
    in the tree dynsys.nn.params describes."""
    return nn.meta.unbox(_init_boxed(cfg, check_seed(seed)))


def param_axes(cfg: ModelConfig) -> dict:
    """The logical axis names of every parameter: a tree like the parameters whose leaves are
    PartitionSpecs of names (see dynsys.sharding), e.g. q's kernel ("heads", "head_dim",
    "embed"). Nothing is computed."""
    return nn.get_partition_spec(jax.eval_shape(lambda: _init_boxed(cfg, 0)))
