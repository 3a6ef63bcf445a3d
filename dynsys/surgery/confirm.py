"""Confirmation: generation with the candidate neurons edited, and the loop rate it leaves.

For a ranking of neurons (e.g. `Attribution.ranked()`) and each k in `ks`, greedy generation
of G tokens per prompt with the top-k neurons' activations h_{l,j} (site "mlp_hidden") scaled
by s = SCALES[op] (`dynsys.surgery.edit`) at every position: s = 0 ("zero") or s = −1
("flip"). Each row gives the loop rate after (exact interval) and the paired change
d = r_after − r_before against the unedited model on the same prompts, with its score
interval (Tango) (`dynsys.stats.paired_difference`). A site edit scaling h_j by s is the
weight edit scaling W_down[:, j] by s (`dynsys.surgery.edit`). After the Gemma-loops study's
confirmation sweeps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from dynsys.checks import check_int, check_neuron
from dynsys.config import ModelConfig
from dynsys.decode.engine import pad_prompts
from dynsys.decode.generation import generate
from dynsys.nn import Model
from dynsys.nn.sites import edits
from dynsys.stats import paired_difference
from dynsys.surgery.edit import FIXED_OPS, SCALES
from dynsys.surgery.loops import K, LoopRate, as_prompts, check_length

__all__ = ["ConfirmRow", "Confirmation", "confirm", "neuron_edits"]


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


def _scale(op: str) -> float:
    """The scale `op` (one of FIXED_OPS) puts on a neuron (`dynsys.surgery.edit.SCALES`)."""
    if op not in FIXED_OPS:
        raise ValueError(f"op={op!r} must be one of {', '.join(FIXED_OPS)}")
    return SCALES[op]


def _neurons(ranking, cfg: ModelConfig) -> list[tuple[int, int]]:
    """The (layer, neuron) pairs of a ranking's (layer, neuron[, score]) items, checked
    against the model."""
    return [check_neuron(tuple(item[:2]), cfg.num_layers, cfg.intermediate_size)
            for item in ranking]


def neuron_edits(cfg: ModelConfig, neurons, op: str = "zero") -> dict:
    """The edit tree scaling each (layer, neuron) of `neurons` by SCALES[op] (0 or −1)
    on site "mlp_hidden": scale vectors [F] on every layer (1 elsewhere), shift 0, so every set
    of neurons gives a tree of the same structure and shapes."""
    scale = _scale(op)
    scales = np.ones((cfg.num_layers, cfg.intermediate_size), np.float32)
    for layer, index in _neurons(neurons, cfg):
        scales[layer, index] = scale
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
    pairs = _neurons(neurons, cfg)
    _scale(op)
    for kk in ks:
        check_int("k", kk, 1, len(pairs))  # at most the neurons given
    pad_prompts(cfg, prompts, G)

    def traces(chosen):
        return np.asarray(generate(model, prompts, G, edits=neuron_edits(cfg, chosen, op)).tokens)

    before = LoopRate.of(traces([]), k)
    rows = []
    for kk in ks:
        chosen = tuple(pairs[:kk])
        result = LoopRate.of(traces(chosen), k)
        d, interval = paired_difference(result.loops, before.loops)
        rows.append(ConfirmRow(int(kk), op, chosen, result, d, interval))
    return Confirmation(before, tuple(rows))
