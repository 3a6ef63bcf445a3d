"""Prefill, the shared-prefix step, full-sequence logits and jitted generation.

Every function here is one call of `Transformer` with a RowCache (per-row keys) and an
optional Prefix (shared keys, no batch axis): ordinary generation has no prefix; the Markov
map is a step of many rows after one long prefix (docs/concepts.md, "The shared-prefix step").
`generate` returns one `Generation` (tokens, and where asked for the margins of the processed
scores, the top-K log-probabilities of the raw logits, the recorded sites).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dynsys.checks import (
    check_finite,
    check_int,
    check_positions,
    check_seed,
    check_tokens,
    usable_logits,
)
from dynsys.config import ModelConfig
from dynsys.decode import sampling
from dynsys.nn import Model, Transformer
from dynsys.nn.cache import (
    PREFIX_KEY_AXES,
    PREFIX_VALUE_AXES,
    Prefix,
    RowCache,
    bucket,
    digest_words,
    empty_rows,
    grow,
    prefix_of,
    source_digest,
    words_digest,
)
from dynsys.nn.sites import BLOCK_SITES, MODEL_SITES, Recorded, check_edits, resolve
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


def _recorded_sites(cfg: ModelConfig, recorded: Recorded | None, record: tuple[str, ...],
                    index: int) -> dict:
    """{site: its value at token `index` of the call}: [B, L, ...] for a block site (L layers),
    [B, ...] for a model site; {} when `record` is empty."""
    return {name: recorded(name)[:, index] if name in MODEL_SITES else
            jnp.stack([recorded(name, layer)[:, index] for layer in range(cfg.num_layers)], 1)
            for name in record}


def _prefill_rows(cfg: ModelConfig, params, tokens, positions, write_mask, rows: RowCache,
                  chunk: int, edits: dict | None = None, record: tuple[str, ...] = ()):
    """Write tokens [B, T] into an empty RowCache, `chunk` (dividing T) at a time; returns
    the last hidden state [B, D], the cache and the `record` sites at the last token (see
    `_recorded_sites`)."""
    B, T = tokens.shape

    def body(i, carry):
        rows = carry[1]
        piece = [jax.lax.dynamic_slice_in_dim(x, i * chunk, chunk, axis=1)
                 for x in (tokens, positions, write_mask)]
        out = run(cfg, params, *piece[:2], rows, piece[2], None, edits, bool(record))
        return out.hidden[:, -1], out.rows, _recorded_sites(cfg, out.recorded, record, -1)

    hidden = jnp.zeros((B, cfg.hidden_size), cfg.dtype)
    sites = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype),
                         jax.eval_shape(body, 0, (hidden, rows, None))[2]) if record else {}
    return jax.lax.fori_loop(0, T // chunk, body, (hidden, rows, sites))


@functools.partial(jax.jit, static_argnames=("cfg", "chunk"))
def _prefill(cfg: ModelConfig, chunk: int, params, tokens, length, source) -> Prefix:
    capacity = tokens.shape[0]
    positions = jnp.arange(capacity, dtype=jnp.int32)[None]
    _, rows, _ = _prefill_rows(cfg, params, tokens[None], positions, positions < length,
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


# --- generation ----------------------------------------------------------------------------


@struct.dataclass
class DecodeState:
    """What the generation loop carries from one step to the next."""

    logits: jnp.ndarray  # [B, V] the logits the next token is chosen from
    seq: jnp.ndarray  # [B, C] prompt and generated tokens so far (slot = cache slot)
    rows: RowCache
    position: jnp.ndarray  # [B] position of the next token
    finished: jnp.ndarray  # [B] rows that emitted a stop token (sampling.stop)


# The decode loop attends to a cache that grows with the trace in at most DECODE_SEGMENTS
# static steps (each segment a scan over a cache just large enough for it), so a step reads
# the filled part of the cache rounded up to its segment's end, not the whole capacity: with
# S equal segments the keys read fall from T·G + G² to about T·G + G²(S + 1)/(2S). Each
# segment compiles its own loop body, so segments are at least MIN_SEGMENT steps long.
DECODE_SEGMENTS = 4
MIN_SEGMENT = 64


def decode_segments(prompt: int, new_tokens: int) -> list[tuple[int, int, int]]:
    """(first step, end step, cache capacity) of each segment of the decode loop.

    The loop runs steps i = 0..G−2 (step i feeds token i at slot prompt + i); a segment
    ending at step b needs prompt + b slots, the last one prompt + G (as a single loop has).
    """
    steps = new_tokens - 1
    count = max(1, min(DECODE_SEGMENTS, steps // MIN_SEGMENT))
    ends = [steps * (j + 1) // count for j in range(count)]
    starts = [0, *ends[:-1]]
    return [(a, b, prompt + (b if j < count - 1 else new_tokens))
            for j, (a, b) in enumerate(zip(starts, ends))]


@struct.dataclass
class Generation:
    """What `generate` returns: always the same fields, None where not asked for.

    tokens [B, G]: the generated tokens. margins [B, G] (return_margins): top-1 minus top-2
    *processed* score of each step (the scores greedy takes the argmax of: after the penalties,
    DRY and the n-gram ban; transformers' `output_scores`). logprob_ids, logprobs [B, G, K]
    (top_logprobs = K > 0): the K most likely ids of each step and their log-probabilities
    log_softmax(raw logits), of the model's *raw* float32 logits before any sampler setting
    (transformers' `output_logits`, not its processed `output_scores`), sorted descending, ties
    to the lower id. recorded {site: [B, G, ...]} (record): see `generate`. finished [B, G]
    (the sampler has stop_tokens): row b had emitted a stop token before step i, so tokens[b, i]
    is the sampler's pad_token (its margins and log-probabilities are of the padded row);
    G − finished.sum(1) is each row's length, its stop token included."""

    tokens: jnp.ndarray
    margins: jnp.ndarray | None
    logprob_ids: jnp.ndarray | None
    logprobs: jnp.ndarray | None
    recorded: dict
    finished: jnp.ndarray | None


@functools.partial(jax.jit,
                   static_argnames=("cfg", "max_new_tokens", "kind", "with_margins", "record",
                                    "top_logprobs"))
def _generate(cfg: ModelConfig, max_new_tokens: int, kind: tuple, with_margins: bool, params,
              tokens, write_mask, values, key, edits, record: tuple[str, ...] = (),
              generated_key_bias=None, top_logprobs: int = 0):
    B, T = tokens.shape
    segments = decode_segments(T, max_new_tokens)
    key_bias = None if generated_key_bias is None else (T, generated_key_bias)
    capacity = segments[0][2]
    positions = jnp.maximum(jnp.cumsum(write_mask, axis=1) - 1, 0).astype(jnp.int32)
    edits = _steps_as_positions(edits, positions[:, -1] + 1, T, max_new_tokens)
    hidden, rows, first = _prefill_rows(cfg, params, tokens, positions, write_mask,
                                        empty_rows(cfg, B, capacity),
                                        prefill_chunk(cfg, B, T, capacity),
                                        _at_step(edits, 0), record)
    state = DecodeState(logits=logits(cfg, params, hidden),
                        seq=jnp.zeros((B, capacity), jnp.int32).at[:, :T].set(tokens),
                        rows=rows, position=positions[:, -1] + 1, finished=jnp.zeros(B, bool))

    def choose(state: DecodeState, i):
        """The next token (pad_token in a finished row), whether its row is finished after it,
        and the step's outputs: the token, its margin, whether the logits it came from are
        usable (finite, not all equal), whether the row had finished before it, and the
        top_logprobs most likely ids with their raw log-probabilities ([B, 0] each when off)."""
        scores = sampling.process(state.logits, state.seq, state.rows.valid, kind, values,
                                  generated_from=T)
        token = sampling.select(scores, jax.random.fold_in(key, i), kind, values)
        token, finished = sampling.stop(token, state.finished, kind, values)
        margin = sampling.margin(scores) if with_margins else jnp.zeros(B)
        ids, logprobs = sampling.top_logprobs(state.logits, top_logprobs)
        return token, finished, (token, margin, usable_logits(state.logits), state.finished,
                                 ids, logprobs)

    def body(state: DecodeState, i):
        token, finished, outputs = choose(state, i)
        out = run(cfg, params, token[:, None], state.position[:, None], state.rows,
                  jnp.ones((B, 1), bool), None, _at_step(edits, i + 1), bool(record), key_bias)
        state = DecodeState(logits=logits(cfg, params, out.hidden[:, 0]),
                            seq=jax.lax.dynamic_update_slice(state.seq, token[:, None],
                                                             (0, T + i)),
                            rows=out.rows, position=state.position + 1, finished=finished)
        return state, (*outputs, _recorded_sites(cfg, out.recorded, record, 0))

    def full_width(sites: dict) -> dict:
        """attn_weights over a segment's cache, zero-padded to the last segment's slots."""
        return {name: jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, segments[-1][2] - x.shape[-1])])
                if name == "attn_weights" else x for name, x in sites.items()}

    first, pieces = full_width(first), []
    for start, end, size in segments:
        extra = size - state.rows.capacity
        state = state.replace(seq=jnp.pad(state.seq, [(0, 0), (0, extra)]),
                              rows=grow(state.rows, size))
        state, (*piece, sites) = jax.lax.scan(body, state, jnp.arange(start, end))
        pieces.append((*piece, full_width(sites)))
    *steps, sites = jax.tree.map(lambda *x: jnp.concatenate(x), *pieces)
    last = choose(state, max_new_tokens - 1)[2]
    # [B, G] each: tokens, margins, usable logits, finished before; [B, G, K] each: top ids,
    # their log-probs; then {site: [B, G, ...]}, entry 0 from the last prompt token, entry
    # i > 0 from step i − 1 (which fed token i − 1)
    return (*(jnp.concatenate([jnp.moveaxis(x, 0, 1), y[:, None]], axis=1)
              for x, y in zip(steps, last)),
            jax.tree.map(lambda x, y: jnp.concatenate([x[:, None], jnp.moveaxis(y, 0, 1)], 1),
                         first, sites))


def _edit_map(fn, tree: dict | None) -> dict | None:
    """fn applied to every edit (the mappings holding "scale") of an edit tree."""
    if tree is None:
        return None
    return fn(tree) if "scale" in tree else {k: _edit_map(fn, v) for k, v in tree.items()}


def _steps_as_positions(edits: dict | None, lengths, width: int, steps: int) -> dict | None:
    """Each edit's "steps" scope (an int t: steps i >= t; a mask [G] or [B, G]; every step for
    an edit with "values") as a positions mask [B, width + G]: step i of row b is position
    lengths[b] − 1 + i, ANDed with the edit's own "positions" (False beyond its width)."""
    B = lengths.shape[0]
    index = jnp.arange(steps)

    def scoped(edit):
        if "steps" not in edit and "values" not in edit:
            return edit
        mask = edit.get("steps", jnp.ones(steps, bool))
        mask = jnp.broadcast_to(index >= mask if mask.ndim == 0 else mask, (B, steps))
        at = jnp.zeros((B, width + steps), bool).at[
            jnp.arange(B)[:, None], lengths[:, None] - 1 + index].set(mask)
        if "positions" in edit:
            own = jnp.broadcast_to(edit["positions"], (B, edit["positions"].shape[-1]))
            own = jnp.pad(own, [(0, 0), (0, max(0, width + steps - own.shape[1]))])
            at &= own[:, :width + steps]
        return {k: v for k, v in edit.items() if k != "steps"} | {"positions": at}

    return _edit_map(scoped, edits)


def _at_step(edits: dict | None, i) -> dict | None:
    """The edits of the call at generation step i: each "values" [B, G, ...] sliced to step i,
    [B, 1, ...] (broadcast over the call's tokens; its positions scope picks the step's)."""
    def sliced(edit):
        if "values" not in edit:
            return edit
        return edit | {"values": jax.lax.dynamic_slice_in_dim(edit["values"], i, 1, axis=1)}

    return _edit_map(sliced, edits)


def _check_generation_edits(edits: dict | None, batch: int, steps: int) -> None:
    """generate's shapes of an edit's scope: "steps" masks [G] or [B, G], "positions"
    [P] or [B, P], "values" [B, G, ...] (ValueError naming the edit otherwise)."""
    def check(edit):
        shape = np.shape(edit["steps"]) if "steps" in edit else ()
        if shape and shape not in ((steps,), (batch, steps)):
            raise ValueError(f"an edit's 'steps' has shape {shape}; generate wants ({steps},) "
                             f"or ({batch}, {steps})")
        shape = np.shape(edit["positions"]) if "positions" in edit else ()
        if len(shape) == 2 and shape[0] != batch:
            raise ValueError(f"an edit's 'positions' has shape {shape}; generate wants [P] or "
                             f"({batch}, P)")
        if "values" in edit and np.shape(edit["values"])[:2] != (batch, steps):
            raise ValueError(f"an edit's 'values' has shape {np.shape(edit['values'])}; "
                             f"generate wants [B, G, ...] = ({batch}, {steps}, ...)")
        return edit

    _edit_map(check, edits)


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


def generate(model: Model, prompts, max_new_tokens: int, *,
             sampler: sampling.Sampler = sampling.GREEDY, seed: int = 0,
             return_margins: bool = False, top_logprobs: int = 0, edits: dict | None = None,
             record: Sequence[str] = (), generated_key_bias: float | None = None
             ) -> Generation:
    """Continue each prompt by G = max_new_tokens tokens; returns a `Generation`: tokens
    [B, G]; with return_margins each step's top-1 minus top-2 processed score [B, G]; with
    top_logprobs = K > 0 each step's K most likely ids and their log-probabilities under the
    raw logits [B, G, K] (`Generation` says which scores each is of); with `record` the
    recorded sites; with the sampler's stop_tokens which steps come after a row's stop token
    (fixed length stays: a finished row emits pad_token until step G; see `sampling`). Fields
    not asked for are None ({} for recorded).

    record: site names (`dynsys.nn.sites`; a str is one name). recorded[name] is [B, G, L, ...]
    for a block site (L layers), [B, G, ...] for "embed_out": entry [b, i] is the site's value
    at the position whose logits token i was chosen from, the last prompt token for i = 0 and
    generated token i − 1 (fed at step i − 1) for i > 0, i.e. position p_b + i − 1 for a prompt
    of length p_b. record=() compiles the program generation has without recording.
    recorded["attn_weights"] is [B, G, L, N, W + G]: each head's softmax weights over the key
    slots, W = the padded prompt width (bucket of the longest prompt). Slot c < W holds prompt
    token c − (W − p_b) (left padding: slots below W − p_b are 0), slot W + j generated token
    j, at position p_b + j; entry [b, i] weighs slots up to W + i − 1 (its own), later ones 0.

    generated_key_bias: b = log λ (a float, −inf allowed; None: the program without it). At
    every decode step, in every layer and head, the scores of the earlier generated keys (every
    generated token before the one fed, whose own key is untouched, as are the prompt's) get
    + b. Token 0 (chosen after the prompt) and token 1 are unaffected; with b = −inf token i + 1
    is f_{P,i}(token i), the greedy next token after the prompt and token i alone at its real
    position p_b + i (forced-Markov decoding; `dynsys.dynamics.markov_map` with offset i).
    b = 0 gives the tokens of b = None. b is traced: all values share one compile.

    prompts: an int array [B, n] or a list of 1-D sequences of different lengths (left-padded
    and masked). `edits` (a `dynsys.nn.sites.edits` tree) changes named sites at every step,
    prompt included, or only at its "steps" (step i: the position entry i of `recorded` is
    of) and "positions"; "values" [B, G, ...] are written per step (activation patching:
    `dynsys.nn.sites.patch` of another run's `recorded`). New edit values and scopes reuse
    the compiled program. One compile per (B, length bucket, max_new_tokens, sampler kind,
    edit structure). With the parameters on a mesh
    (dynsys.sharding) the rows are split over "data" and the model and KV cache over "model".
    """
    cfg = model.config
    if isinstance(prompts, np.ndarray | jnp.ndarray) and np.ndim(prompts) != 2:
        raise ValueError(f"prompts must be 2-D [batch, length], got shape {np.shape(prompts)}")
    if (not isinstance(max_new_tokens, int | np.integer) or isinstance(max_new_tokens, bool)
            or max_new_tokens < 1):
        raise ValueError(f"max_new_tokens={max_new_tokens!r} must be a positive integer")
    record = tuple(dict.fromkeys((record,) if isinstance(record, str) else record))
    for name in record:
        if name not in BLOCK_SITES and name not in MODEL_SITES:
            raise ValueError(f"record names an unknown site {name!r}; sites: "
                             f"{[*MODEL_SITES, *BLOCK_SITES]}")
    check_edits(edits, cfg.num_layers, generation=True)
    seed = check_seed(seed)
    for name, ids in (("stop_tokens", sampler.stop_tokens), ("pad_token", (sampler.pad_token,))):
        if max(ids, default=0) >= cfg.vocab_size:
            raise ValueError(f"{name}={getattr(sampler, name)!r} must be token ids below the "
                             f"vocabulary size {cfg.vocab_size}")
    top_logprobs = check_int("top_logprobs", top_logprobs, minimum=0, maximum=cfg.vocab_size)
    if generated_key_bias is not None:
        generated_key_bias = check_key_bias(generated_key_bias)
    tokens, mask = pad_prompts(cfg, prompts, max_new_tokens)
    _check_generation_edits(edits, tokens.shape[0], max_new_tokens)
    check_generation_fits(cfg, *tokens.shape, max_new_tokens, "attn_weights" in record)
    with use(model.params):
        out, margins, finite, finished, ids, logprobs, recorded = _generate(
            cfg, int(max_new_tokens), sampler.kind, return_margins, model.params,
            jnp.asarray(tokens), jnp.asarray(mask), sampler.values, jax.random.PRNGKey(seed),
            edits, record=record, generated_key_bias=generated_key_bias,
            top_logprobs=top_logprobs)
    check_finite(finite, "generate ([row, step])")
    return Generation(out, margins if return_margins else None,
                      ids if top_logprobs else None, logprobs if top_logprobs else None,
                      recorded, finished if sampler.stop_tokens else None)
