"""Jitted generation: `generate` continues prompts by G tokens in one compiled loop (prefill,
then decode steps over a KV cache grown in segments), with the sampler, edits (scoped by step
and position, or patched values: `dynsys.nn.sites`), recording, and the generated-key bias,
and returns one `Generation` (tokens, and where asked for the margins of the processed
scores, the top-K log-probabilities of the raw logits, the recorded sites, the rows'
stops). Every model call is `dynsys.decode.engine.run`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dynsys.checks import check_finite, check_int, check_seed, usable_logits
from dynsys.config import ModelConfig
from dynsys.decode import sampling
from dynsys.decode.engine import (
    check_generation_fits,
    check_key_bias,
    logits,
    pad_prompts,
    prefill_chunk,
    prefill_rows,
    recorded_sites,
    run,
)
from dynsys.nn import Model
from dynsys.nn.cache import RowCache, empty_rows, grow
from dynsys.nn.sites import BLOCK_SITES, MODEL_SITES, check_edits
from dynsys.sharding import use


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
    hidden, rows, first = prefill_rows(cfg, params, tokens, positions, write_mask,
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
        return state, (*outputs, recorded_sites(cfg, out.recorded, record, 0))

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
