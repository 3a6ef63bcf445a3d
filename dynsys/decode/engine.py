"""Prefill, the shared-prefix step, full-sequence logits, and the checks of generation's input.

Every function here is one call of `Transformer` with a RowCache (per-row keys) and an
optional Prefix (shared keys, no batch axis): ordinary generation has no prefix; the Markov
map is a step of many rows after one long prefix (docs/concepts.md, "The shared-prefix step").
Generation, built on these, is `dynsys.decode.generation`; its input checks are here.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dynsys.checks import check_positions, check_tokens
from dynsys.config import ModelConfig
from dynsys.nn import Model, Transformer
from dynsys.nn.cache import (
    PREFIX_KEY_AXES,
    PREFIX_VALUE_AXES,
    Prefix,
    RowCache,
    bucket,
    digest_words,
    empty_rows,
    prefix_of,
    source_digest,
    words_digest,
)
from dynsys.nn.sites import MODEL_SITES, Recorded, check_edits, resolve
from dynsys.sharding import constrain, use

SCORE_BUDGET = 1 << 25  # attention scores held at once while prefilling (floats)


@struct.dataclass
class Output:
    """One model call: the final-norm hidden states [B, T, D], the updated row cache and, when
    asked for, what the named sites recorded."""

    hidden: jnp.ndarray
    rows: RowCache | None
    recorded: Recorded | None = None


def run(cfg: ModelConfig, params, tokens, positions, rows: RowCache | None, write_mask,
        prefix: Prefix | None, edits: dict | None = None, record: bool = False,
        key_bias: tuple | None = None) -> Output:
    """The one call of the model: tokens [B, T] at positions [B, T] written into `rows` where
    write_mask [B, T] (see Transformer.__call__), after the shared `prefix`; rows=None: one
    full causal sequence, no cache (Output.rows is None). `edits` (a
    `dynsys.nn.sites.edits` tree, traced; checked against the model's sites, scopes resolved
    at these positions) changes named sites; `record` stores every site (with a row cache,
    "attn_weights" too); key_bias = (first slot, b) adds b to the scores of the row keys from
    slot `first` up to each query's own slot, exclusive (Transformer)."""
    check_edits(edits, cfg.num_layers)
    variables = ({"params": params} if edits is None else
                 {"params": params, "edits": resolve(edits, positions)})
    args = (tokens, positions, rows, write_mask, prefix, key_bias)
    if record:
        (hidden, rows), state = Transformer(cfg).apply(variables, *args, mutable=["record"])
        return Output(hidden, rows, Recorded(state["record"]))
    hidden, rows = Transformer(cfg).apply(variables, *args)
    return Output(hidden, rows)


def logits(cfg: ModelConfig, params, hidden) -> jnp.ndarray:
    """Float32 logits [..., V] of final-norm hidden states [..., D]."""
    return Transformer(cfg).apply({"params": params}, hidden, method=Transformer.logits)


def last_logits(cfg: ModelConfig, params, prefix: Prefix, suffixes, positions,
                edits: dict | None = None) -> jnp.ndarray:
    """Logits [B, V] after P + suffixes[b] (at positions[b]): one shared-prefix step."""
    out = run(cfg, params, suffixes, positions, empty_rows(cfg, *suffixes.shape),
              jnp.ones(suffixes.shape, bool), prefix, edits)
    return logits(cfg, params, out.hidden[:, -1])


last_logits_jit = jax.jit(last_logits, static_argnames=("cfg",))


# --- the shared prefix ---------------------------------------------------------------------


def prefill_chunk(cfg: ModelConfig, batch: int, length: int, capacity: int) -> int:
    """Largest chunk c = length / 2^j with B·N·c·capacity attention scores within
    SCORE_BUDGET, so a long prompt's T×T scores are never held at once."""
    chunk = length
    while chunk % 2 == 0 and chunk > 16 and batch * cfg.num_heads * chunk * capacity > SCORE_BUDGET:
        chunk //= 2
    return chunk


def recorded_sites(cfg: ModelConfig, recorded: Recorded | None, record: tuple[str, ...],
                   index: int) -> dict:
    """{site: its value at token `index` of the call}: [B, L, ...] for a block site (L layers),
    [B, ...] for a model site; {} when `record` is empty."""
    return {name: recorded(name)[:, index] if name in MODEL_SITES else
            jnp.stack([recorded(name, layer)[:, index] for layer in range(cfg.num_layers)], 1)
            for name in record}


def prefill_rows(cfg: ModelConfig, params, tokens, positions, write_mask, rows: RowCache,
                 chunk: int, edits: dict | None = None, record: tuple[str, ...] = ()):
    """Write tokens [B, T] into an empty RowCache, `chunk` (dividing T) at a time; returns
    the last hidden state [B, D], the cache and the `record` sites at the last token (see
    `recorded_sites`)."""
    B, T = tokens.shape

    def body(i, carry):
        rows = carry[1]
        piece = [jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)
                 for x in (tokens, positions, write_mask)]
        out = run(cfg, params, *piece[:2], rows, piece[2], None, edits, bool(record))
        return out.hidden[:, -1], out.rows, recorded_sites(cfg, out.recorded, record, -1)

    hidden = jnp.zeros((B, cfg.hidden_size), cfg.dtype)
    sites = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         jax.eval_shape(body, 0, (hidden, rows, None))[2]) if record else {}
    return jax.lax.fori_loop(0, T // chunk, body, (hidden, rows, sites))


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def _prefill(cfg: ModelConfig, chunk: int, params, tokens, length, source) -> Prefix:
    capacity = tokens.shape[0]
    positions = jnp.arange(capacity, dtype=jnp.int32)[None]
    _, rows, _ = prefill_rows(cfg, params, tokens[None], positions, positions < length,
                              empty_rows(cfg, 1, capacity), chunk)
    prefix = prefix_of(rows.replace(end=length), source)
    return prefix.replace(k=tuple(constrain(k, PREFIX_KEY_AXES) for k in prefix.k),
                          v=tuple(constrain(v, PREFIX_VALUE_AXES) for v in prefix.v))


def prefill(model: Model, prompt, capacity: int | None = None,
            chunk: int | None = None) -> Prefix:
    """The shared prefix of a 1-D prompt: its keys and values at positions 0..n−1.

    Capacity defaults to bucket(n); the prompt is processed `chunk` tokens at a time
    (default `prefill_chunk`; it must divide the capacity). With the parameters on a mesh
    (dynsys.sharding) the prefix's keys and values are split over "model" by kv head.
    """
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    n = prompt.shape[0]
    capacity = bucket(n) if capacity is None else capacity
    if capacity < n:
        raise ValueError(f"capacity={capacity} is smaller than the prompt length {n}")
    if n > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {n} exceeds max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    tokens = np.zeros(capacity, np.int32)
    tokens[:n] = prompt
    chunk = prefill_chunk(cfg, 1, capacity, capacity) if chunk is None else chunk
    if chunk < 1 or capacity % chunk:
        raise ValueError(f"chunk={chunk} must be a positive divisor of the capacity {capacity}")
    source = digest_words(source_digest(model.digest, prompt))
    with use(model.params):
        return _prefill(cfg, chunk, model.params, jnp.asarray(tokens), jnp.int32(n),
                        jnp.asarray(source))


def prefix_for(model: Model, prompt, prefix: Prefix | None = None) -> Prefix:
    """`prefix` if it was computed from this model and prompt (ValueError otherwise), or the
    prompt's `prefill` when None: the one check behind every entry point taking a prefix."""
    if prefix is None:
        return prefill(model, prompt)
    prompt = check_tokens(prompt, model.config.vocab_size, "prompt", ndim=1)
    if words_digest(prefix.source) != source_digest(model.digest, prompt):
        raise ValueError(f"the prefix given was computed from another model or prompt (it "
                         f"holds {int(prefix.length)} tokens; the prompt has {len(prompt)}): "
                         "pass prefill(model, prompt) of this model and prompt")
    return prefix


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("rows",))
def _step(cfg: ModelConfig, params, prefix, tokens, positions, rows, edits):
    out = run(cfg, params, tokens, positions, rows, jnp.ones(tokens.shape, bool), prefix, edits)
    return logits(cfg, params, out.hidden), out.rows


def step(model: Model, prefix: Prefix | None, tokens, positions,
         rows: RowCache | None = None, edits: dict | None = None
         ) -> tuple[jnp.ndarray, RowCache]:
    """Logits [B, T, V] of B rows after the shared prefix: row b holds tokens[b] at
    positions[b] (any positions, e.g. skipping), after what `rows` already holds, with the
    site `edits` applied.

    With rows=None a fresh RowCache of capacity T is used. The prefix is never copied per row.
    A `rows` passed in is consumed (donated: updated in place, not copied): use the RowCache
    returned, never the one given, afterwards.
    """
    cfg = model.config
    tokens = check_tokens(tokens, cfg.vocab_size, "tokens", ndim=2)
    positions = check_positions(positions, tokens.shape, cfg.max_position_embeddings)
    check_edits(edits, cfg.num_layers)
    if rows is None:
        rows = empty_rows(cfg, tokens.shape[0], tokens.shape[1])
    elif int(rows.end) + tokens.shape[1] > rows.capacity:
        raise ValueError(f"{tokens.shape[1]} tokens do not fit: the row cache holds "
                         f"{int(rows.end)} of {rows.capacity} slots")
    with use(model.params):
        return _step(cfg, model.params, prefix, jnp.asarray(tokens), jnp.asarray(positions),
                     rows, edits)


# From this many tokens on, sequence_logits attends in blocks (dynsys.nn.blockwise: O(T)
# memory, a recomputing backward pass, only the causal half of the scores) instead of through
# a row cache with its T×T scores; below it the cached path is as fast or faster on CPU.
BLOCKWISE_MIN_LENGTH = 512


def sequence_logits(cfg: ModelConfig, params, tokens) -> jnp.ndarray:
    """Float32 logits [B, T, V] of tokens [B, T] at positions 0..T−1 (causal attention): a pure
    function of the parameters, to jit and differentiate (training's forward pass). From
    BLOCKWISE_MIN_LENGTH tokens on, attention runs in blocks without a cache."""
    B, T = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    rows = empty_rows(cfg, B, T) if T < BLOCKWISE_MIN_LENGTH else None
    out = run(cfg, params, tokens, positions, rows, jnp.ones((B, T), bool), None)
    return logits(cfg, params, out.hidden)


def forward(model: Model, tokens) -> jnp.ndarray:
    """Full-sequence logits [B, T, V] of tokens [B, T] at positions 0..T−1."""
    tokens = check_tokens(tokens, model.config.vocab_size, "tokens", ndim=2)
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return step(model, None, tokens, positions)[0]


# --- checks of generation's input (dynsys.decode.generation) ---------------------------


def left_pad(prompts: Sequence, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ragged prompts → (tokens [B, bucket(max n)], real-token mask), left-padded with 0."""
    rows = [check_tokens(p, vocab_size, f"prompts[{i}]", ndim=1) for i, p in enumerate(prompts)]
    if not rows:
        raise ValueError("no prompts given")
    width = bucket(max(len(r) for r in rows))
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, width - len(r):] = r
        mask[i, width - len(r):] = True
    return tokens, mask


def memory_bytes() -> int:
    """Bytes of memory this process's devices hold together: each accelerator's bytes_limit,
    or the host's RAM for CPU devices (which share it). Only addressable devices report
    their memory (under jax.distributed, jax.devices() also lists other processes')."""
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    if all("bytes_limit" in s for s in stats):
        return sum(s["bytes_limit"] for s in stats)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_generation_fits(cfg: ModelConfig, rows: int, width: int, max_new_tokens: int,
                          attn_weights: bool = False) -> None:
    """Refuse (ValueError) generating from `rows` prompts padded to `width` tokens when their
    KV cache and logits alone (and the recorded attention weights, with `attn_weights`)
    exceed `memory_bytes()` (XLA would fail with RESOURCE_EXHAUSTED after compiling, or the
    host would swap). A lower bound of the need: nothing that fits is refused."""
    slots = width + max_new_tokens
    cache = (2 * cfg.num_layers * rows * cfg.num_kv_heads * cfg.head_dim
             * slots * jnp.dtype(cfg.cache_dtype).itemsize)
    weights = 4 * rows * max_new_tokens * cfg.num_layers * cfg.num_heads * slots
    need, have = cache + 4 * rows * cfg.vocab_size + attn_weights * weights, memory_bytes()
    if need > have:
        what = "KV cache, logits and attention weights" if attn_weights else "KV cache and logits"
        raise ValueError(f"{rows} prompts of {width} tokens (padded) + {max_new_tokens} new "
                         f"tokens need at least {need / 2**30:.1f} GiB ({what}); "
                         f"the devices hold {have / 2**30:.1f} GiB: generate fewer at a time")


def check_key_bias(bias) -> jnp.ndarray:
    """A generated-key bias b = log λ as a float32 scalar: a real number (or 0-d array of one)
    below +inf (−inf is λ = 0); anything else is a ValueError naming it."""
    value = np.asarray(bias) if isinstance(bias, int | float | np.generic | np.ndarray
                                           | jax.Array) else None
    if value is None or value.ndim or value.dtype.kind not in "iuf":
        raise ValueError(f"generated_key_bias={bias!r} must be a float (log λ, −inf for λ = 0)")
    if not float(value) <= float(np.finfo(np.float32).max):  # NaN, +inf or beyond float32
        raise ValueError(f"generated_key_bias={bias!r} must be a float32 number below +inf "
                         "(log λ, −inf for λ = 0)")
    return jnp.float32(bias)


def pad_prompts(cfg: ModelConfig, prompts, new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompts left-padded as generation pads them: (tokens [B, W], real mask [B, W]), after
    checking that an array is 2-D and that the longest prompt and `new_tokens` more fit in
    the model's positions (ValueError naming the value otherwise)."""
    if isinstance(prompts, np.ndarray | jnp.ndarray) and np.ndim(prompts) != 2:
        raise ValueError(f"prompts must be 2-D [batch, length], got shape {np.shape(prompts)}")
    tokens, mask = left_pad(list(prompts), cfg.vocab_size)
    longest = int(mask.sum(1).max())
    if longest + new_tokens > cfg.max_position_embeddings:
        raise ValueError(
            f"prompt length {longest} + max_new_tokens {new_tokens} exceeds the cache limit "
            f"max_position_embeddings={cfg.max_position_embeddings}")
    return tokens, mask
