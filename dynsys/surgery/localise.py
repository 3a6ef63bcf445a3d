"""Localise loops to layers and neurons: which branches and which MLP neurons keep greedy
decoding in its loop.

Three instruments, after the Gemma-loops study (per-layer ablation, per-neuron attribution,
confirmation by full-generation sweeps) and Hiraoka & Inui, "Repetition Neurons" (NAACL 2025):

- `ablation_sweep`: greedy generation with one branch of one layer ablated, for every
  layer × component; the loop rate against the unablated model on the same prompts.
- `neuron_attribution`: on looping traces, every MLP neuron (site "mlp_hidden") scored by
  activation × gradient of the loop-continuation margin, and by its mean activation after the
  final loop's onset minus before it.
- `confirm`: greedy generation with the top-k candidate neurons zeroed or sign-flipped; the
  loop rate before and after, with a paired test.

Definitions used throughout (traces are greedy continuations x_0..x_{G−1} of prompts):

- a trace **loops** when some period p has its last 3p tokens p-periodic (its minimal cycle
  at the end, repeated at least k = 3 times: `periodicity(...).shortest > 0`);
- the **loop rate** of B traces is r = #loops / B, with its exact (Clopper–Pearson) interval;
  a change of loop rate between two conditions on the same prompts is the paired difference
  d = r_after − r_before with its exact conditional interval (`dynsys.stats.paired_difference`);
- the **final loop** of a looping trace is its longest periodic suffix: period p and onset o
  (`dynsys.dynamics.traces.periodicity`), so x_t = x_{t−p} for o + p ≤ t < G;
- the **loop-continuation margin** at step t is m_t = ℓ_t(x_t) − max_{v ≠ x_t} ℓ_t(v), with
  ℓ_t the logits after prompt + x_0..x_{t−1} (teacher-forced); a trace's loop margin is
  M = Σ_{t ∈ T} m_t over the continuation steps T = {t : o + p ≤ t < G} (empty if the trace
  does not loop).

Every edit tree passed to `generate` by one call here has the same structure and shapes (the
ablated entry changes only values), so one compiled program serves the whole sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_tokens
from dynsys.config import ModelConfig
from dynsys.decode.engine import generate, left_pad, logits, run
from dynsys.dynamics.traces import periodicity, periodicity_batch
from dynsys.nn import Model, init_params
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import BLOCK_SITES, edits
from dynsys.stats import paired_difference, proportion_interval

__all__ = ["COMPONENTS", "METHODS", "MODES", "OPS", "Attribution", "Confirmation",
           "ConfirmRow", "LoopRate", "Neuron", "Sweep", "SweepRow", "ablation_sweep",
           "component_means", "confirm", "loop_margin", "looping", "neuron_attribution",
           "neuron_edits"]

COMPONENTS: tuple[str, ...] = ("attn_out", "mlp_out")
MODES: tuple[str, ...] = ("zero", "mean")
OPS: dict[str, float] = {"zero": 0.0, "flip": -1.0}  # the scale put on a chosen neuron
METHODS: tuple[str, ...] = ("grad_x_act", "onset_diff")
K = 3  # whole copies of the period for a trace to count as looping


# --- results -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoopRate:
    """Greedy traces of B prompts under one condition and their loop rate.

    Attributes:
        traces: [B, G] the generated tokens.
        loops: [B] bool, trace b loops (`looping`).
        rate: r = loops.sum() / B.
        interval: the exact (Clopper–Pearson) 95% interval of r.
    """

    traces: np.ndarray
    loops: np.ndarray
    rate: float
    interval: tuple[float, float]

    @classmethod
    def of(cls, traces, k: int = K) -> LoopRate:
        traces = np.asarray(traces)
        loops = looping(traces, k)
        return cls(traces, loops, float(loops.mean()),
                   proportion_interval(int(loops.sum()), loops.size))


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """One ablation of `ablation_sweep`: `component` of `layer` ablated (`mode`), its loop
    rate and the paired change d = r_ablated − r_base on the same prompts, with the exact
    conditional interval of d."""

    layer: int
    component: str
    mode: str
    result: LoopRate
    change: float
    change_interval: tuple[float, float]

    def row(self) -> dict:
        """A table row (no arrays)."""
        return {"layer": self.layer, "component": self.component, "mode": self.mode,
                "loops": int(self.result.loops.sum()), "n": int(self.result.loops.size),
                "rate": self.result.rate, "rate_lo": self.result.interval[0],
                "rate_hi": self.result.interval[1], "change": self.change,
                "change_lo": self.change_interval[0], "change_hi": self.change_interval[1]}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """`ablation_sweep`'s result: the unablated loop rate and one row per layer × component
    (layer-major)."""

    base: LoopRate
    rows: tuple[SweepRow, ...]

    def table(self) -> list[dict]:
        """The rows as dicts, the unablated condition first (layer −1, component "none")."""
        b = self.base
        first = {"layer": -1, "component": "none", "mode": "none", "loops": int(b.loops.sum()),
                 "n": int(b.loops.size), "rate": b.rate, "rate_lo": b.interval[0],
                 "rate_hi": b.interval[1], "change": 0.0, "change_lo": 0.0, "change_hi": 0.0}
        return [first, *(r.row() for r in self.rows)]


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


@dataclasses.dataclass(frozen=True)
class ConfirmRow:
    """The top-k neurons edited together (`op`: scale 0 or −1 on each), the loop rate after,
    and the paired change d = r_after − r_before with its exact conditional interval."""

    k: int
    op: str
    neurons: tuple[tuple[int, int], ...]
    result: LoopRate
    change: float
    change_interval: tuple[float, float]

    def row(self) -> dict:
        """A table row (no arrays)."""
        return {"k": self.k, "op": self.op, "loops": int(self.result.loops.sum()),
                "n": int(self.result.loops.size), "rate": self.result.rate,
                "rate_lo": self.result.interval[0], "rate_hi": self.result.interval[1],
                "change": self.change, "change_lo": self.change_interval[0],
                "change_hi": self.change_interval[1]}


@dataclasses.dataclass(frozen=True)
class Confirmation:
    """`confirm`'s result: the unedited loop rate (`before`) and one row per k."""

    before: LoopRate
    rows: tuple[ConfirmRow, ...]

    def table(self) -> list[dict]:
        """The rows as dicts, each with the unedited rate and its interval."""
        b = self.before
        return [{**r.row(), "before": b.rate, "before_lo": b.interval[0],
                 "before_hi": b.interval[1]} for r in self.rows]


# --- checks --------------------------------------------------------------------------------


def _check_length(G) -> int:
    if not isinstance(G, int | np.integer) or isinstance(G, bool) or G < 2:
        raise ValueError(f"G={G!r} must be an integer >= 2 (generated tokens per prompt)")
    return int(G)


def _check_layers(layers, num_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(num_layers))
    out = []
    for layer in layers:
        if not isinstance(layer, int | np.integer) or not 0 <= layer < num_layers:
            raise ValueError(f"layer={layer!r} is outside [0, {num_layers})")
        out.append(int(layer))
    return tuple(out)


@functools.lru_cache(maxsize=None)
def _site_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The block sites this family's model records, with each value's trailing shape (after
    [B, T]); nothing is drawn or computed (eval_shape of a recorded call)."""
    tokens = jnp.zeros((1, 1), jnp.int32)

    def call(params):
        out = run(cfg, params, tokens, tokens, empty_rows(cfg, 1, 1), tokens >= 0, None,
                  record=True)
        return out.recorded.tree

    params = jax.eval_shape(lambda: init_params(cfg, 0))
    tree = jax.eval_shape(call, params)["blocks_0"]
    shapes = {}
    for name, owner in BLOCK_SITES.items():
        node = tree
        for key in owner:
            node = node.get(key, {})
        if name in node:
            shapes[name] = tuple(node[name][0].shape[2:])
    return shapes


def _check_components(cfg: ModelConfig, components) -> tuple[str, ...]:
    if isinstance(components, str):
        components = (components,)
    shapes = _site_shapes(cfg)
    for c in components:
        if c not in shapes:
            raise ValueError(f"component {c!r} is not a site of the {cfg.family} family; "
                             f"sites: {sorted(shapes)}")
    if not components:
        raise ValueError("no components given")
    return tuple(components)


def _check_prompts(cfg: ModelConfig, prompts, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts (tokens, real mask), as `generate` pads them, checked to fit G."""
    if isinstance(prompts, np.ndarray | jnp.ndarray) and np.ndim(prompts) != 2:
        raise ValueError(f"prompts must be 2-D [batch, length], got shape {np.shape(prompts)}")
    tokens, mask = left_pad(list(prompts), cfg.vocab_size)
    longest = int(mask.sum(1).max())
    if longest + G > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {longest} + G={G} exceeds max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    return tokens, mask


def _as_prompts(prompts):
    """An int array [B, n] as given, any other iterable as a list of 1-D arrays (so that a
    generator can be read more than once)."""
    if isinstance(prompts, np.ndarray | jnp.ndarray):
        return prompts
    return [np.asarray(p) for p in prompts]


def _positions(mask: np.ndarray) -> np.ndarray:
    """Positions of left-padded rows: 0 at the first real token (as `generate` counts)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)


# --- loops ---------------------------------------------------------------------------------


def looping(traces, k: int = K) -> np.ndarray:
    """[B] bool: trace b loops, i.e. some period p has its last k·p tokens p-periodic (the
    minimal cycle length at the end, `periodicity_batch(traces, k).shortest`, is > 0)."""
    traces = np.asarray(traces)
    if traces.ndim != 2 or traces.shape[1] < 2:
        raise ValueError(f"traces must be 2-D [batch, G] with G >= 2, got shape {traces.shape}")
    return periodicity_batch(traces, k).shortest > 0


# --- the ablation sweep --------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def _record(cfg: ModelConfig, params, tokens, positions, mask) -> dict:
    B, T = tokens.shape
    out = run(cfg, params, tokens, positions, empty_rows(cfg, B, T), mask, None, record=True)
    return out.recorded.tree


def component_means(model: Model, prompts, components: Sequence[str] = COMPONENTS,
                    layers: Iterable[int] | None = None) -> dict[tuple[str, int], np.ndarray]:
    """{(component, layer): μ}: the mean of the site's value over the prompts' real positions,
    μ = (1/|R|) Σ_{(b,s) ∈ R} x[b, s] with R every (prompt, position) pair (padding left out),
    from one recorded forward pass of the prompts. μ has the site's trailing shape ([D] for
    the branches), the shift of a mean ablation."""
    cfg, prompts = model.config, _as_prompts(prompts)
    components = _check_components(cfg, components)
    layers = _check_layers(layers, cfg.num_layers)
    tokens, mask = _check_prompts(cfg, prompts, 0)
    tree = _record(cfg, model.params, jnp.asarray(tokens), jnp.asarray(_positions(mask)),
                   jnp.asarray(mask))
    weights = mask / mask.sum()
    out = {}
    for layer in layers:
        for c in components:
            node = tree[f"blocks_{layer}"]
            for key in BLOCK_SITES[c]:
                node = node[key]
            x = np.asarray(node[c][0], np.float64)
            out[c, layer] = np.tensordot(weights, x, axes=([0, 1], [0, 1])).astype(np.float32)
    return out


def _uniform_edits(cfg: ModelConfig, components, changes: dict) -> dict:
    """An edit tree over every (component, layer): identity (scale 1, shift 0) except the
    (scale, shift) in `changes`; scale scalar, shift of the site's trailing shape, so the tree's
    structure and shapes do not depend on which entry is changed (one compile)."""
    shapes = _site_shapes(cfg)
    tree = {}
    for layer in range(cfg.num_layers):
        for c in components:
            scale, shift = changes.get((c, layer), (1.0, None))
            shift = np.zeros(shapes[c], np.float32) if shift is None else shift
            tree[c, layer] = {"scale": np.float32(scale),
                              "shift": np.broadcast_to(np.asarray(shift, np.float32),
                                                       shapes[c])}
    return edits(tree, cfg.num_layers)


def ablation_sweep(model: Model, prompts, G: int, components: Sequence[str] = COMPONENTS,
                   mode: str = "zero", layers: Iterable[int] | None = None,
                   k: int = K) -> Sweep:
    """Greedy generation of G tokens per prompt with one branch ablated at a time, for every
    layer × component, at every position (prompt included).

    The ablation replaces the site value x by s·x + b with s = 0 and b = 0 ("zero") or
    b = μ, the component's mean over the prompts' real positions (`component_means`, "mean").
    Each row gives the loop rate r (exact interval) and the paired change r − r_base against
    the unablated model on the same prompts (`dynsys.stats.paired_difference`). Every
    condition, the unablated one included, runs one edit tree of the same structure (identity
    elsewhere), so the sweep compiles `generate` once.
    """
    cfg, prompts = model.config, _as_prompts(prompts)
    G = _check_length(G)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
    components = _check_components(cfg, components)
    layers = _check_layers(layers, cfg.num_layers)
    _check_prompts(cfg, prompts, G)
    means = component_means(model, prompts, components, layers) if mode == "mean" else {}

    def traces(changes):
        return np.asarray(generate(model, prompts, G,
                                   edits=_uniform_edits(cfg, components, changes)))

    base = LoopRate.of(traces({}), k)
    rows = []
    for layer in layers:
        for c in components:
            result = LoopRate.of(traces({(c, layer): (0.0, means.get((c, layer)))}), k)
            d, interval = paired_difference(result.loops, base.loops)
            rows.append(SweepRow(layer, c, mode, result, d, interval))
    return Sweep(base, tuple(rows))


# --- neuron attribution --------------------------------------------------------------------


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
    G = _check_length(traces.shape[1])
    prompt_tokens, prompt_mask = _check_prompts(cfg, prompts, G)
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
    return _Layout(tokens, _positions(mask), mask, targets, steps, after, before), period, onset


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
    if not isinstance(batch, int | np.integer) or batch < 1:
        raise ValueError(f"batch={batch!r} must be a positive integer")
    for start in range(0, B, batch):
        rows = np.arange(start, min(start + batch, B))
        yield rows, np.concatenate([rows, np.zeros(batch - rows.size, np.int64)])


def loop_margin(model: Model, prompts, traces, edits: dict | None = None,
                k: int = K, batch: int = 8) -> np.ndarray:
    """[B] each trace's loop margin M_b = Σ_{t ∈ T_b} m_t (module docstring; 0 when the trace
    does not loop), teacher-forced over prompt + trace with the site `edits` applied at every
    position; `batch` rows per call (padded to `batch`)."""
    cfg, prompts = model.config, _as_prompts(prompts)
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
    `traces` [B, G], the greedy continuations of `prompts` (e.g. `generate(model, prompts, G)`).

    Two methods (see `Attribution` for the formulas): "grad_x_act", activation × gradient of
    the loop margin M_b, one teacher-forced forward and backward pass over prompt + trace with
    a zero shift edit on "mlp_hidden" as the differentiation variable (x ↦ x·1 + δ, ∂M/∂δ at
    δ = 0 is ∂M/∂x); and "onset_diff", the mean activation after the final loop's onset minus
    before it. `batch` rows per call (activations and gradients of L·batch·(n + G)·F floats
    are held at once). ValueError when no trace loops.
    """
    cfg, prompts = model.config, _as_prompts(prompts)
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


# --- confirmation --------------------------------------------------------------------------


def _neuron_pairs(neurons, cfg: ModelConfig) -> list[tuple[int, int]]:
    out = []
    for item in neurons:
        layer, index = int(item[0]), int(item[1])
        if not 0 <= layer < cfg.num_layers:
            raise ValueError(f"layer={layer} is outside [0, {cfg.num_layers})")
        if not 0 <= index < cfg.intermediate_size:
            raise ValueError(f"neuron={index} is outside [0, {cfg.intermediate_size}) "
                             f"(layer {layer})")
        out.append((layer, index))
    return out


def neuron_edits(cfg: ModelConfig, neurons, op: str = "zero") -> dict:
    """The edit tree scaling each (layer, neuron) of `neurons` by OPS[op] (0 or −1) on site
    "mlp_hidden": scale vectors [F] on every layer (1 elsewhere), shift 0, so every set of
    neurons gives a tree of the same structure and shapes."""
    if op not in OPS:
        raise ValueError(f"op={op!r} must be one of {', '.join(OPS)}")
    scales = np.ones((cfg.num_layers, cfg.intermediate_size), np.float32)
    for layer, index in _neuron_pairs(neurons, cfg):
        scales[layer, index] = OPS[op]
    return edits({("mlp_hidden", i): {"scale": scales[i], "shift": 0.0}
                  for i in range(cfg.num_layers)}, cfg.num_layers)


def confirm(model: Model, prompts, G: int, neurons, op: str = "zero",
            ks: Sequence[int] = (1, 4, 16), k: int = K) -> Confirmation:
    """Full-generation sweep: greedy G tokens per prompt with the top-`kk` of `neurons` (a
    ranking: (layer, neuron[, score]) items, e.g. `Attribution.ranked()`) scaled by 0 ("zero")
    or −1 ("flip") on site "mlp_hidden" at every position, for each kk in `ks`. Each row gives
    the loop rate after (exact interval) and the paired change r_after − r_before against the
    unedited model on the same prompts (`dynsys.stats.paired_difference`). One compile for
    all conditions (`neuron_edits`)."""
    cfg, prompts = model.config, _as_prompts(prompts)
    G = _check_length(G)
    pairs = _neuron_pairs(neurons, cfg)
    if op not in OPS:
        raise ValueError(f"op={op!r} must be one of {', '.join(OPS)}")
    for kk in ks:
        if not isinstance(kk, int | np.integer) or not 1 <= kk <= len(pairs):
            raise ValueError(f"k={kk!r} must be an integer in [1, {len(pairs)}] (neurons given)")
    _check_prompts(cfg, prompts, G)

    def traces(chosen):
        return np.asarray(generate(model, prompts, G, edits=neuron_edits(cfg, chosen, op)))

    before = LoopRate.of(traces([]), k)
    rows = []
    for kk in ks:
        chosen = tuple(pairs[:kk])
        result = LoopRate.of(traces(chosen), k)
        d, interval = paired_difference(result.loops, before.loops)
        rows.append(ConfirmRow(int(kk), op, chosen, result, d, interval))
    return Confirmation(before, tuple(rows))
