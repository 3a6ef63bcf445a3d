"""Neuron attribution: which MLP neurons hold a looping trace in its loop.

On the looping traces (`dynsys.surgery.loops.looping`) with final loop (p, o), teacher-forced
over prompt + trace:

- the **loop-continuation margin** at step t is m_t = ℓ_t(x_t) − max_{v ≠ x_t} ℓ_t(v), with
  ℓ_t the logits after prompt + x_0..x_{t−1}; a trace's **loop margin** is
  M = Σ_{t ∈ T} m_t over the continuation steps T = {t : o + p ≤ t < G} (empty, M = 0, if the
  trace does not loop) (`loop_margin`);
- **grad_x_act**: a_{l,j} = Σ_b Σ_s h_{l,j}[b,s] · ∂M_b/∂h_{l,j}[b,s] over the looping traces b
  and every real position s (h the site "mlp_hidden" of block l): the derivative of Σ_b M_b
  along scaling neuron (l, j) by α at α = 1, so zeroing it changes Σ_b M_b by −a_{l,j} to
  first order; positive means the neuron supports the loop;
- **onset_diff**: (1/|used|) Σ_b (mean_{s ≥ n_b + o_b} h[b,s] − mean_{s < n_b + o_b} h[b,s])
  over the real positions of prompt + trace (n_b the prompt length): the after-minus-before-
  onset activation difference of Hiraoka & Inui, "Repetition Neurons" (NAACL 2025).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_int, check_tokens
from dynsys.config import ModelConfig
from dynsys.decode.engine import logits, pad_prompts, run
from dynsys.dynamics.traces import periodicity
from dynsys.nn import Model
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import check_edits, edits
from dynsys.surgery.loops import K, as_prompts, check_length, left_positions

__all__ = ["METHODS", "Attribution", "Neuron", "loop_margin", "neuron_attribution"]

METHODS: tuple[str, ...] = ("grad_x_act", "onset_diff")


class Neuron(NamedTuple):
    """One MLP neuron (coordinate `neuron` of site "mlp_hidden" in block `layer`) and its
    score under an attribution method."""

    layer: int
    neuron: int
    score: float


@dataclasses.dataclass(frozen=True)
class Attribution:
    """`neuron_attribution`'s result over the looping traces (indices `used`).

    Attributes:
        grad_x_act: [L, F], a_{l,j} = Σ_b Σ_s h_{l,j}[b,s] · ∂M_b/∂h_{l,j}[b,s] over the
            looping traces b and every real position s of prompt + trace (h the site
            "mlp_hidden"): the derivative of Σ_b M_b along scaling neuron (l, j) by α at α = 1,
            so zeroing the neuron changes Σ_b M_b by −a_{l,j} to first order. Positive: the
            neuron supports the loop.
        onset_diff: [L, F], (1/|used|) Σ_b (mean_{s ≥ n_b + o_b} h[b,s] − mean_{s < n_b + o_b}
            h[b,s]) over real positions of prompt + trace (n_b the prompt length, o_b the
            onset): Hiraoka & Inui's after-minus-before-onset activation difference.
        used: indices of the looping traces the scores come from.
        period, onset: [len(used)] each trace's final loop (p, o).
        margin: [len(used)] each trace's loop margin M_b (unedited model).
    """

    grad_x_act: np.ndarray
    onset_diff: np.ndarray
    used: np.ndarray
    period: np.ndarray
    onset: np.ndarray
    margin: np.ndarray

    def ranked(self, method: str = "grad_x_act", top: int | None = None) -> list[Neuron]:
        """The neurons by decreasing score of `method` ("grad_x_act" or "onset_diff"; ties
        by layer, then index), the first `top` of them (all when None)."""
        if method not in METHODS:
            raise ValueError(f"method={method!r} must be one of {', '.join(METHODS)}")
        scores = getattr(self, method)
        order = np.argsort(-scores, axis=None, kind="stable")[:top]
        layers, neurons = np.unravel_index(order, scores.shape)
        return [Neuron(int(i), int(j), float(scores[i, j])) for i, j in zip(layers, neurons)]


class _Layout(NamedTuple):
    """Teacher-forced inputs of prompt + trace rows, left-padded: tokens, positions, real
    mask [B, W + G], next-token targets [B, W + G] and weights of the continuation steps,
    of the after-onset and before-onset positions [B, W + G] (float32)."""

    tokens: np.ndarray
    positions: np.ndarray
    mask: np.ndarray
    targets: np.ndarray
    steps: np.ndarray
    after: np.ndarray
    before: np.ndarray


def _layout(cfg: ModelConfig, prompts, traces, k: int):
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise ValueError(f"traces must be 2-D [batch, G], got shape {traces.shape}")
    G = check_length(traces.shape[1])
    prompt_tokens, prompt_mask = pad_prompts(cfg, prompts, G)
    if len(prompt_tokens) != len(traces):
        raise ValueError(f"{len(prompt_tokens)} prompts but {len(traces)} traces")
    traces = check_tokens(traces, cfg.vocab_size, "traces", ndim=2)
    B, W = prompt_tokens.shape
    tokens = np.concatenate([prompt_tokens, traces], axis=1)
    mask = np.concatenate([prompt_mask, np.ones((B, G), bool)], axis=1)
    targets = np.zeros_like(tokens)
    targets[:, :-1] = tokens[:, 1:]
    steps, after, before = (np.zeros(tokens.shape, np.float32) for _ in range(3))
    period, onset = np.zeros(B, np.int64), np.full(B, G, np.int64)
    for b in range(B):
        per = periodicity(traces[b], k)
        if not per.period:
            continue
        p, o = int(per.period), int(per.onset)
        period[b], onset[b] = p, o
        # logits at position W + t − 1 predict x_t; continuation steps o + p <= t < G
        steps[b, W + o + p - 1: W + G - 1] = 1
        after[b, W + o:] = 1 / (G - o)
        before[b, :W + o] = np.concatenate([prompt_mask[b], np.ones(o, bool)])
        before[b] /= before[b].sum()
    return _Layout(tokens, left_positions(mask), mask, targets, steps, after, before), period, onset


def _margins(lg, targets):
    """m[b, s] = lg[b, s, y] − max_{v ≠ y} lg[b, s, v], y = targets[b, s]."""
    onehot = jax.nn.one_hot(targets, lg.shape[-1], dtype=bool)
    top = jnp.take_along_axis(lg, targets[..., None], axis=-1)[..., 0]
    return top - jnp.where(onehot, -jnp.inf, lg).max(-1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _loop_margin(cfg: ModelConfig, params, tokens, positions, mask, targets, steps, tree):
    B, T = tokens.shape
    out = run(cfg, params, tokens, positions, empty_rows(cfg, B, T), mask, None, tree)
    return (_margins(logits(cfg, params, out.hidden), targets) * steps).sum(1)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _attribute(cfg: ModelConfig, params, tokens, positions, mask, targets, steps, after,
               before):
    """Per row: loop margin M [B], activation × gradient [L, B, F] and after − before mean
    activation [L, B, F]."""
    B, T = tokens.shape
    L = cfg.num_layers

    def total(shifts):
        tree = edits({("mlp_hidden", i): {"scale": 1.0, "shift": shifts[i]} for i in range(L)},
                     L)
        out = run(cfg, params, tokens, positions, empty_rows(cfg, B, T), mask, None, tree,
                  record=True)
        margin = (_margins(logits(cfg, params, out.hidden), targets) * steps).sum(1)
        acts = jnp.stack([out.recorded("mlp_hidden", i) for i in range(L)]).astype(jnp.float32)
        return margin.sum(), (margin, acts)

    shifts = jnp.zeros((L, B, T, cfg.intermediate_size), jnp.float32)
    grad, (margin, acts) = jax.grad(total, has_aux=True)(shifts)
    real = mask.astype(jnp.float32)[None, :, :, None]
    axg = (acts * grad * real).sum(2)
    diff = jnp.einsum("lbtf,bt->lbf", acts, after - before)
    return margin, axg, diff


def _chunks(B: int, batch: int):
    """Row indices in chunks of exactly `batch` rows (the last padded with row 0, whose
    results are dropped), so every call has the same shapes: one compile."""
    batch = check_int("batch", batch, minimum=1)
    for start in range(0, B, batch):
        rows = np.arange(start, min(start + batch, B))
        yield rows, np.concatenate([rows, np.zeros(batch - rows.size, np.int64)])


def loop_margin(model: Model, prompts, traces, edits: dict | None = None,
                k: int = K, batch: int = 8) -> np.ndarray:
    """[B] each trace's loop margin M_b = Σ_{t ∈ T_b} m_t (module docstring; 0 when the trace
    does not loop), teacher-forced over prompt + trace with the site `edits` applied at every
    position; `batch` rows per call (padded to `batch`)."""
    cfg, prompts = model.config, as_prompts(prompts)
    check_edits(edits, cfg.num_layers)
    lay, _, _ = _layout(cfg, prompts, traces, k)
    B = len(lay.tokens)
    out = np.zeros(B, np.float32)
    for rows, padded in _chunks(B, batch):
        m = _loop_margin(cfg, model.params, *(jnp.asarray(x[padded]) for x in lay[:5]), edits)
        out[rows] = np.asarray(m)[:rows.size]
    return out


def neuron_attribution(model: Model, prompts, traces, k: int = K,
                       batch: int = 8) -> Attribution:
    """Score every MLP neuron (site "mlp_hidden", each layer) on the looping traces among
    `traces` [B, G], the greedy continuations of `prompts` (e.g. `generate(model, prompts,
    G).tokens`).

    Two methods (see `Attribution` for the formulas): "grad_x_act", activation × gradient of
    the loop margin M_b, one teacher-forced forward and backward pass over prompt + trace with
    a zero shift edit on "mlp_hidden" as the differentiation variable (x ↦ x·1 + δ, ∂M/∂δ at
    δ = 0 is ∂M/∂x); and "onset_diff", the mean activation after the final loop's onset minus
    before it. `batch` rows per call (activations and gradients of L·batch·(n + G)·F floats
    are held at once). ValueError when no trace loops.
    """
    cfg, prompts = model.config, as_prompts(prompts)
    lay, period, onset = _layout(cfg, prompts, traces, k)
    used = np.flatnonzero(period > 0)
    if not used.size:
        raise ValueError(f"none of the {len(period)} traces loops (no period repeated {k} "
                         "times at the end): nothing to attribute")
    lay = _Layout(*(x[used] for x in lay))
    L, F = cfg.num_layers, cfg.intermediate_size
    axg, diff = np.zeros((L, F), np.float64), np.zeros((L, F), np.float64)
    margin = np.zeros(used.size, np.float32)
    for rows, padded in _chunks(used.size, batch):
        m, a, d = _attribute(cfg, model.params, *(jnp.asarray(x[padded]) for x in lay))
        n = rows.size
        margin[rows] = np.asarray(m)[:n]
        axg += np.asarray(a, np.float64)[:, :n].sum(1)
        diff += np.asarray(d, np.float64)[:, :n].sum(1)
    return Attribution(axg.astype(np.float32), (diff / used.size).astype(np.float32), used,
                       period[used], onset[used], margin)
