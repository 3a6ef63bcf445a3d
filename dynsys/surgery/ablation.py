"""Ablation sweep: which layer and which branch keep greedy decoding in its loop.

For every layer l × component c (a block site, e.g. "attn_out" or "mlp_out": the branch's
output before it joins the residual stream), greedy generation of G tokens per prompt with
that site's value x replaced at every position (prompt included) by

    x ↦ s·x + b,   s = 0, b = 0 ("zero")   or   s = 0, b = μ_{c,l} ("mean"),

where μ_{c,l} = (1/|R|) Σ_{(b,s) ∈ R} x[b, s] is the site's mean over the prompts' real
positions R (padding left out; `component_means`). Each condition gives a loop rate r
(`dynsys.surgery.loops`) and the paired change d = r_ablated − r_base against the unablated
model on the same prompts, with its score interval (Tango). After the Gemma-loops study's
per-layer ablation.

Every edit tree passed to `generate` by one sweep has the same structure and shapes (the
ablated entry changes only values), so one compiled program serves the whole sweep.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig
from dynsys.decode.engine import pad_prompts, run
from dynsys.decode.generation import generate
from dynsys.nn import Model
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import Recorded, edits
from dynsys.stats import paired_difference
from dynsys.surgery.loops import (
    K,
    LoopRate,
    as_prompts,
    check_components,
    check_layers,
    check_length,
    left_positions,
    site_shapes,
)

__all__ = ["COMPONENTS", "MODES", "Sweep", "SweepRow", "ablation_sweep", "component_means"]

COMPONENTS: tuple[str, ...] = ("attn_out", "mlp_out")
MODES: tuple[str, ...] = ("zero", "mean")


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """One ablation of `ablation_sweep`: `component` of `layer` ablated (`mode`), its loop
    rate and the paired change d = r_ablated − r_base on the same prompts, with the score
    interval (Tango) of d."""

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

    @classmethod
    def of(cls, base: LoopRate, conditions) -> Sweep:
        """The sweep of `conditions`, (layer, component, mode, LoopRate) in order, each with
        its paired change against `base` on the same prompts."""
        rows = []
        for layer, component, mode, result in conditions:
            d, interval = paired_difference(result.loops, base.loops)
            rows.append(SweepRow(int(layer), component, mode, result, d, interval))
        return cls(base, tuple(rows))

    def table(self) -> list[dict]:
        """The rows as dicts, the unablated condition first (layer −1, component "none")."""
        b = self.base
        first = {"layer": -1, "component": "none", "mode": "none", "loops": int(b.loops.sum()),
                 "n": int(b.loops.size), "rate": b.rate, "rate_lo": b.interval[0],
                 "rate_hi": b.interval[1], "change": 0.0, "change_lo": 0.0, "change_hi": 0.0}
        return [first, *(r.row() for r in self.rows)]


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
    cfg, prompts = model.config, as_prompts(prompts)
    components = check_components(cfg, components)
    layers = check_layers(layers, cfg.num_layers)
    tokens, mask = pad_prompts(cfg, prompts, 0)
    recorded = Recorded(_record(cfg, model.params, jnp.asarray(tokens),
                                jnp.asarray(left_positions(mask)), jnp.asarray(mask)))
    weights = mask / mask.sum()
    out = {}
    for layer in layers:
        for c in components:
            x = np.asarray(recorded(c, layer), np.float64)
            out[c, layer] = np.tensordot(weights, x, axes=([0, 1], [0, 1])).astype(np.float32)
    return out


def _uniform_edits(cfg: ModelConfig, components, changes: dict) -> dict:
    """An edit tree over every (component, layer): identity (scale 1, shift 0) except the
    (scale, shift) in `changes`; scale scalar, shift of the site's trailing shape, so the tree's
    structure and shapes do not depend on which entry is changed (one compile)."""
    shapes = site_shapes(cfg)
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
    cfg, prompts = model.config, as_prompts(prompts)
    G = check_length(G)
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} must be one of {', '.join(MODES)}")
    components = check_components(cfg, components)
    layers = check_layers(layers, cfg.num_layers)
    pad_prompts(cfg, prompts, G)
    means = component_means(model, prompts, components, layers) if mode == "mean" else {}

    def traces(changes):
        return np.asarray(generate(model, prompts, G,
                                   edits=_uniform_edits(cfg, components, changes)).tokens)

    base = LoopRate.of(traces({}), k)
    return Sweep.of(base, [(layer, c, mode,
                            LoopRate.of(traces({(c, layer): (0.0, means.get((c, layer)))}), k))
                           for layer in layers for c in components])
