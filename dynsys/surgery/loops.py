"""Loops of greedy traces, their rate over a batch of prompts, and the checks the surgery
instruments share.

Traces are greedy continuations x_0..x_{G−1} of prompts (`dynsys.decode.generate`).

- a trace **loops** when some period p has its last k·p tokens p-periodic, k = K = 3: its
  minimal cycle at the end, repeated at least k times (`periodicity_batch(...).shortest > 0`);
- the **loop rate** of B traces is r = #loops / B, with its exact (Clopper–Pearson) 95%
  interval (`dynsys.stats.proportion_interval`); a change of loop rate between two conditions
  on the same prompts is the paired difference d = r_after − r_before with Tango's score
  interval (`dynsys.stats.paired_difference`);
- the **final loop** of a looping trace is its longest periodic suffix: period p and onset o
  (`dynsys.dynamics.traces.periodicity`), so x_t = x_{t−p} for o + p ≤ t < G.

The checks (`check_length`, `check_layers`, `check_components`, and for prompts
`dynsys.decode.engine.pad_prompts`) raise ValueError naming the offending value;
`as_prompts`, `left_positions` and `site_shapes` give prompts, positions and site shapes the
way `generate` sees them.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_int
from dynsys.config import ModelConfig
from dynsys.decode.engine import run
from dynsys.dynamics.traces import periodicity_batch
from dynsys.nn import Model, init_params
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import BLOCK_SITES, Recorded
from dynsys.stats import proportion_interval

__all__ = ["K", "LoopRate", "as_prompts", "check_components", "check_layers", "check_length",
           "check_pair", "left_positions", "looping", "site_shapes"]

K = 3  # whole copies of the period for a trace to count as looping


@dataclasses.dataclass(frozen=True)
class LoopRate:
    """Greedy traces of B prompts under one condition and their loop rate.

    Attributes:
        traces: [B, G] the generated tokens (None when made from stored flags, `of_loops`).
        loops: [B] bool, trace b loops (`looping`).
        rate: r = loops.sum() / B.
        interval: the exact (Clopper–Pearson) 95% interval of r.
    """

    traces: np.ndarray | None
    loops: np.ndarray
    rate: float
    interval: tuple[float, float]

    @classmethod
    def of(cls, traces, k: int = K) -> LoopRate:
        traces = np.asarray(traces)
        return cls.of_loops(looping(traces, k), traces)

    @classmethod
    def of_loops(cls, loops, traces: np.ndarray | None = None) -> LoopRate:
        """The rate of [B] loop flags (of `traces` where given)."""
        loops = np.asarray(loops, bool)
        return cls(traces, loops, float(loops.mean()),
                   proportion_interval(int(loops.sum()), loops.size))


def looping(traces, k: int = K) -> np.ndarray:
    """[B] bool: trace b loops, i.e. some period p has its last k·p tokens p-periodic (the
    minimal cycle length at the end, `periodicity_batch(traces, k).shortest`, is > 0)."""
    traces = np.asarray(traces)
    if traces.ndim != 2 or traces.shape[1] < 2:
        raise ValueError(f"traces must be 2-D [batch, G] with G >= 2, got shape {traces.shape}")
    return periodicity_batch(traces, k).shortest > 0


# --- checks --------------------------------------------------------------------------------


def check_length(G) -> int:
    """G, the generated tokens per prompt: an integer >= 2 (a loop needs two tokens)."""
    return check_int("G", G, minimum=2)


def check_layers(layers, num_layers: int) -> tuple[int, ...]:
    """The layers named (every layer for None), each an integer in [0, num_layers)."""
    if layers is None:
        return tuple(range(num_layers))
    return tuple(check_int("layer", layer, 0, num_layers - 1) for layer in layers)


@functools.cache
def site_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The block sites this family's model records, with each value's trailing shape (after
    [B, T]); nothing is drawn or computed (eval_shape of a recorded call)."""
    tokens = jnp.zeros((1, 1), jnp.int32)

    def call(params):
        out = run(cfg, params, tokens, tokens, empty_rows(cfg, 1, 1), tokens >= 0, None,
                  record=True)
        return out.recorded.tree

    recorded = Recorded(jax.eval_shape(call, jax.eval_shape(lambda: init_params(cfg, 0))))
    shapes = {}
    for name in BLOCK_SITES:
        try:
            shapes[name] = tuple(recorded(name, 0).shape[2:])
        except KeyError:  # a site this family does not have
            continue
    return shapes


def check_components(cfg: ModelConfig, components) -> tuple[str, ...]:
    if isinstance(components, str):
        components = (components,)
    shapes = site_shapes(cfg)
    for c in components:
        if c not in shapes:
            raise ValueError(f"component {c!r} is not a site of the {cfg.family} family; "
                             f"sites: {sorted(shapes)}")
    if not components:
        raise ValueError("no components given")
    return tuple(components)


def as_prompts(prompts):
    """An int array [B, n] as given, any other iterable as a list of 1-D arrays (so that a
    generator can be read more than once)."""
    if isinstance(prompts, np.ndarray | jnp.ndarray):
        return prompts
    return [np.asarray(p) for p in prompts]


def left_positions(mask: np.ndarray) -> np.ndarray:
    """Positions of left-padded rows: 0 at the first real token (as `generate` counts)."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)


def check_pair(before: Model, after: Model) -> ModelConfig:
    """The before model's config, after checking that the after model shares its vocabulary
    and context length (so the same tokens and maps compare)."""
    a, b = before.config, after.config
    if a.vocab_size != b.vocab_size:
        raise ValueError(f"after model's vocab_size={b.vocab_size} differs from the before "
                         f"model's {a.vocab_size}")
    if a.max_position_embeddings != b.max_position_embeddings:
        raise ValueError(f"after model's max_position_embeddings={b.max_position_embeddings} "
                         f"differs from the before model's {a.max_position_embeddings}")
    return a
