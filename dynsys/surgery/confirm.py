"""Confirmation: generation with the candidate neurons edited, and the loop rate it leaves.

For a ranking of neurons (e.g. `Attribution.ranked()`) and each k in `ks`, greedy generation
of G tokens per prompt with the top-k neurons' activations h_{l,j} (site "mlp_hidden") scaled
by s = NEURON_SCALES[op] at every position: s = 0 ("zero") or s = −1 ("flip"). Each row gives
the loop rate after (exact interval) and the paired change d = r_after − r_before against the
unedited model on the same prompts, with its score interval (Tango)
(`dynsys.stats.paired_difference`). A site edit scaling h_j by s is the weight edit scaling
W_down[:, j] by s (`dynsys.surgery.edit`). After the Gemma-loops study's confirmation sweeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dynsys.config import ModelConfig
from dynsys.decode.engine import generate
from dynsys.nn import Model
from dynsys.nn.sites import edits
from dynsys.stats import paired_difference
from dynsys.surgery.loops import K, LoopRate, as_prompts, check_length, check_prompts

__all__ = ["NEURON_SCALES", "ConfirmRow", "Confirmation", "confirm", "neuron_edits"]

NEURON_SCALES: dict[str, float] = {"zero": 0.0, "flip": -1.0}  # the scale put on a neuron


@dataclasses.dataclass(frozen=True)
class ConfirmRow:
    """The top-k neurons edited together (`op`: scale 0 or −1 on each), the loop rate after,
    and the paired change d = r_after − r_before with its score interval (Tango)."""

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


# --- edits and the sweep -------------------------------------------------------------------


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
    """The edit tree scaling each (layer, neuron) of `neurons` by NEURON_SCALES[op] (0 or −1)
    on site "mlp_hidden": scale vectors [F] on every layer (1 elsewhere), shift 0, so every set
    of neurons gives a tree of the same structure and shapes."""
    if op not in NEURON_SCALES:
        raise ValueError(f"op={op!r} must be one of {', '.join(NEURON_SCALES)}")
    scales = np.ones((cfg.num_layers, cfg.intermediate_size), np.float32)
    for layer, index in _neuron_pairs(neurons, cfg):
        scales[layer, index] = NEURON_SCALES[op]
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
    cfg, prompts = model.config, as_prompts(prompts)
    G = check_length(G)
    pairs = _neuron_pairs(neurons, cfg)
    if op not in NEURON_SCALES:
        raise ValueError(f"op={op!r} must be one of {', '.join(NEURON_SCALES)}")
    for kk in ks:
        if not isinstance(kk, int | np.integer) or not 1 <= kk <= len(pairs):
            raise ValueError(f"k={kk!r} must be an integer in [1, {len(pairs)}] (neurons given)")
    check_prompts(cfg, prompts, G)

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
