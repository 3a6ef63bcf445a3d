"""Attention dilution: the single-head identity, and probes along a greedy trace (docs/concepts.md).

One head: scores z_j over the present keys, a = softmax(z), R a set of removed keys, a′ the
softmax over the others, a(R) = Σ_{j∈R} a_j and ō_R = Σ_{j∈R} a_j v_j / a(R). Exactly

    o − o′ = a(R) · (ō_R − o′)                                   (proofs/single_head.md)

Along a greedy trace x_{n+1..n+G} after a prompt P of n tokens, step t runs the current token
x_{n+t} at position n+t−1 after P, with the generated tokens x_{n+1..n+t−1} as extra keys (the
real step) or hidden (the reference step: the Markov map f_{P,t−1} of docs/concepts.md; the query
token itself stays a key). Both are one model call each: the real steps are one row of G tokens
(causality gives step t exactly its keys), the reference steps G rows of one token. The model's
intermediates (the sown block outputs, the captured projections) are requested only here and in
dynsys.theory, inside their own jitted functions; ordinary generation does not request them, so
Flax's sow is a no-op there and whatever only fed it is dead code that XLA removes
(tests/theory/test_dilution.py::test_probing_leaves_generation_alone).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from dynsys.checks import check_finite, check_tokens, usable_logits
from dynsys.config import ModelConfig
from dynsys.decode import logits, prefix_for, run, step
from dynsys.decode.sampling import margin
from dynsys.nn import Model
from dynsys.nn.cache import Prefix, RowCache, empty_rows
from dynsys.nn.sites import Recorded

# --- one head --------------------------------------------------------------------------------


@struct.dataclass
class Dilution:
    """One head with the keys R removed: a(R), o (all present keys), o′ (present keys outside
    R) and ō_R (0 when R is empty), each computed by its own softmax."""

    mass: jnp.ndarray
    out: jnp.ndarray
    kept: jnp.ndarray
    removed: jnp.ndarray

    @property
    def gap(self) -> jnp.ndarray:
        """(o − o′) − a(R)(ō_R − o′): zero in exact arithmetic, rounding error in floats."""
        return (self.out - self.kept) - self.mass[..., None] * (self.removed - self.kept)


def _part(z, v, where):
    """(log Σ_{j∈where} e^{z_j}, Σ_{j∈where} e^{z_j} v_j / Σ_{j∈where} e^{z_j}), each part
    shifted by its own max, so no part underflows because another part is large; (−inf, 0)
    for an empty part."""
    top = jnp.max(jnp.where(where, z, -jnp.inf))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    p = jnp.where(where, jnp.exp(jnp.where(where, z, top) - top), 0.0)
    total = jnp.sum(p)
    mean = (p @ v) / jnp.where(total > 0, total, 1.0)
    return top + jnp.log(total), mean


def dilute(z, v, removed, present) -> Dilution:
    """The single-head decomposition of one query: scores z [S], values v [S, H], the removed
    keys R and the present keys as [S] masks (R ⊆ present, present ∖ R non-empty).

    a(R) = σ(log Σ_R e^z − log Σ_{present∖R} e^z), stable for any score range; vmap for heads.
    """
    z, v = z.astype(jnp.float32), v.astype(jnp.float32)
    removed = removed & present
    log_removed, removed_mean = _part(z, v, removed)
    log_kept, kept_mean = _part(z, v, present & ~removed)
    _, out = _part(z, v, present)
    return Dilution(jax.nn.sigmoid(log_removed - log_kept), out, kept_mean, removed_mean)


# --- the model's intermediates ------------------------------------------------------------------


def run_recorded(cfg: ModelConfig, params, tokens, positions, rows: RowCache,
                 prefix: Prefix | None):
    """One model call on tokens [B, T] at positions [B, T] (all written), every site recorded:
    returns logits [B, T, V], the updated RowCache and the Recorded sites."""
    out = run(cfg, params, tokens, positions, rows, jnp.ones(tokens.shape, bool), prefix,
              record=True)
    return logits(cfg, params, out.hidden), out.rows, out.recorded


def streams(cfg: ModelConfig, recorded: Recorded) -> list[jnp.ndarray]:
    """The residual stream [B, T, D] entering each block, then the one leaving the last:
    x_0 (the embedding), x_1, …, x_L."""
    return [recorded("embed_out"), *(recorded("resid_post", i) for i in range(cfg.num_layers))]


def queries(cfg: ModelConfig, recorded: Recorded, layer: int) -> jnp.ndarray:
    """Layer `layer`'s rotated queries [B, T, K, G, H], scaled by H^{-1/2} like the scores."""
    q = recorded("query", layer)
    B, T = q.shape[:2]
    return q.astype(jnp.float32).reshape(B, T, cfg.num_kv_heads, cfg.heads_per_kv,
                                         cfg.head_dim) * cfg.head_dim ** -0.5


# --- probes along a trace ----------------------------------------------------------------------


def _trace_dilution(cfg: ModelConfig, prefix: Prefix, rows: RowCache, q, layer: int):
    """Per step and head, the dilution of the real query by the generated keys: q [T, K, G, H]
    of the one real row; keys are the prefix [K, H, S] then the row's own [K, H, T]; step i sees
    prefix slots < n and row slots ≤ i, of which slots < i form R."""
    T, S = q.shape[0], prefix.capacity
    keys = jnp.concatenate([prefix.k[layer], rows.k[layer][0]], axis=2).astype(jnp.float32)
    values = jnp.concatenate([prefix.v[layer], rows.v[layer][0]], axis=1).astype(jnp.float32)
    z = jnp.einsum("TKGH,KHS->TKGS", q, keys)
    slot = jnp.arange(T)
    present = jnp.concatenate([jnp.broadcast_to(prefix.valid, (T, S)),
                               slot[None, :] <= slot[:, None]], axis=1)
    removed = jnp.concatenate([jnp.zeros((T, S), bool), slot[None, :] < slot[:, None]], axis=1)
    head = jax.vmap(dilute, (0, None, None, None))  # G: query heads sharing a kv head
    head = jax.vmap(head, (0, 0, None, None))  # K
    head = jax.vmap(head, (0, None, 0, 0))  # T: steps
    return head(z, values, removed, present)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _probe(cfg: ModelConfig, params, prefix: Prefix, trace, positions):
    G, N = trace.shape[0], cfg.num_heads
    real_logits, real_rows, real = run_recorded(cfg, params, trace[None], positions[None],
                                                empty_rows(cfg, 1, G), prefix)
    ref_logits, _, ref = run_recorded(cfg, params, trace[:, None], positions[:, None],
                                      empty_rows(cfg, G, 1), prefix)
    real_logits, ref_logits = real_logits[0], ref_logits[:, 0]
    masses, gaps, changes = [], [], []
    for layer in range(cfg.num_layers):
        d = _trace_dilution(cfg, prefix, real_rows,
                            queries(cfg, real, layer)[0], layer)
        masses.append(d.mass.reshape(G, N))
        gaps.append(jnp.max(jnp.abs(d.gap), axis=(1, 2, 3)))
        changes.append(jnp.linalg.norm(d.out - d.kept, axis=-1).reshape(G, N))
    residual = [jnp.linalg.norm(a[0] - b[:, 0], axis=-1)
                for a, b in zip(streams(cfg, real)[1:], streams(cfg, ref)[1:])]
    return dict(
        mass=jnp.stack(masses, 1), identity_error=jnp.stack(gaps, 1),
        attention_change=jnp.stack(changes, 1), residual=jnp.stack(residual, 1),
        logit_change=jnp.max(jnp.abs(real_logits - ref_logits), axis=-1),
        real_next=jnp.argmax(real_logits, -1), markov_next=jnp.argmax(ref_logits, -1),
        margin=margin(ref_logits),
        finite=usable_logits(real_logits) & usable_logits(ref_logits))


@dataclasses.dataclass(frozen=True)
class Probe:
    """Dilution along a trace of G steps (step t = row t−1), L layers, N heads.

    mass [G, L, N]: a_t(R), the real query's attention on the t−1 generated keys.
    identity_error [G, L]: max |(o − o′) − a(R)(ō_R − o′)| over heads and dims (float32).
    attention_change [G, L, N]: ‖o − o′‖, the same query without the generated keys.
    residual [G, L]: ‖x_l − x′_l‖ leaving block l at the query position, real vs reference run.
    logit_change [G]: max_v |logits − logits′|; real_next, markov_next [G]: the two argmaxes
    (markov_next = f_{P,t−1}(x_{n+t})); margin [G]: top-1 − top-2 of the reference logits.
    """

    mass: np.ndarray
    identity_error: np.ndarray
    attention_change: np.ndarray
    residual: np.ndarray
    logit_change: np.ndarray
    real_next: np.ndarray
    markov_next: np.ndarray
    margin: np.ndarray

    @property
    def flipped(self) -> np.ndarray:
        """[G] bool: removing the generated keys changes the greedy token."""
        return self.real_next != self.markov_next

    @property
    def agreement(self) -> int:
        """Leading steps whose greedy token equals the Markov map's (the measured horizon)."""
        return int(np.argmax(self.flipped)) if self.flipped.any() else len(self.flipped)


def check_trace(model: Model, prompt, trace, prefix: Prefix | None):
    """Validated (prompt, trace, prefix, positions n..n+G−1): ids in the vocabulary, positions
    within max_position_embeddings, a given prefix computed from this model and prompt."""
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    trace = check_tokens(trace, cfg.vocab_size, "trace", ndim=1)
    n, G = len(prompt), len(trace)
    if n + G > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {n} + trace length {G} exceeds "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    return prompt, trace, prefix_for(model, prompt, prefix), np.arange(n, n + G, dtype=np.int32)


def probe_trace(model: Model, prompt, trace, prefix: Prefix | None = None) -> Probe:
    """Probe the G steps of a trace x_{n+1..n+G} (any tokens; greedy ones in practice) after
    the prompt: real step vs reference step (generated keys hidden), per step, layer and head.

    prefix: the prompt's `prefill`, when already computed. One compile per (config, prefix
    capacity, G).
    """
    _, trace, prefix, positions = check_trace(model, prompt, trace, prefix)
    out = _probe(model.config, model.params, prefix, jnp.asarray(trace), jnp.asarray(positions))
    check_finite(out.pop("finite"), "probe_trace (trace steps)")
    return Probe(**{k: np.asarray(v) for k, v in out.items()})


# --- position drift ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Drift:
    """Position drift of the Markov map: f_{P,τ} against f_{P,0} (docs/concepts.md, proofs/
    position_drift.md). logit_change [O, B]: max_v |logits_{P,τ}(v) − logits_{P,0}(v)| per
    offset τ and token v; changed [O, B]: f_{P,τ}(v) ≠ f_{P,0}(v)."""

    offsets: np.ndarray
    logit_change: np.ndarray
    changed: np.ndarray


def position_drift(model: Model, prompt, tokens, offsets, prefix: Prefix | None = None) -> Drift:
    """The current tokens [B] placed at position n+τ for each offset τ, after the prompt."""
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    tokens = check_tokens(tokens, cfg.vocab_size, "tokens", ndim=1)[:, None]
    offsets = np.asarray(offsets, np.int64)
    n = len(prompt)
    prefix = prefix_for(model, prompt, prefix)

    def at(tau: int) -> np.ndarray:
        logits = np.asarray(step(model, prefix, tokens, np.full_like(tokens, n + tau))[0][:, 0])
        check_finite(usable_logits(logits), f"position_drift (offset {tau}, tokens)")
        return logits

    base = at(0)
    runs = [at(int(tau)) for tau in offsets]
    return Drift(offsets, np.stack([np.abs(r - base).max(-1) for r in runs]),
                 np.stack([r.argmax(-1) != base.argmax(-1) for r in runs]))
