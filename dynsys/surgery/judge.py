"""Judge a fix three ways: loop and collapse rates, held-out loss, and the attractors of the
Markov map, each before and after on the same inputs.

(a) **Rates** (`rate_changes`), on greedy continuations of G tokens of held-out prompts:

- a trace is a **verbatim loop** when it ends in a minimal cycle repeated at least k = 3 times
  (`dynsys.surgery.loops.looping`);
- a trace is a **list collapse** when, split at the `delimiter` token(s) into non-empty entries
  (compared verbatim), it has at least 2w entries, its first w entries hold at least w/2
  distinct ones, and one entry holds a strict majority (share > 1/2) of its last w entries
  (`dynsys.dynamics.traces.collapse`, window w; a two-entry alternation is a loop, not a
  collapse). Without a delimiter no collapse rate is reported;
- each rate r = #flagged / B has its exact (Clopper–Pearson) 95% interval; the change
  d = r_after − r_before on the same prompts is a paired difference with Tango's score
  interval (`dynsys.stats.paired_difference`).

(b) **Held-out loss** (`loss_change`), on windows x [n, T + 1]: per window i,

    ℓ_i = −(1/T) Σ_{t<T} log softmax(f_θ(x_i,0..t))[x_i,t+1]

(f_θ the logits at positions 0..T−1, as `dynsys.train.step.loss`); L = mean_i ℓ_i before and
after, and the paired change D = mean_i (ℓ_i^after − ℓ_i^before) with a paired t interval
D ± t_{n−1, 0.975} · s_δ / √n (s_δ the sample standard deviation of the differences δ_i), or a
percentile bootstrap over windows (`method="bootstrap"`, `dynsys.stats.bootstrap_interval`).
An unchanged model gives δ_i = 0: D = 0 and the interval [0, 0].

(c) **Attractors of the Markov map** f_P before and after, and whether the edited model's
greedy trace (or a sampled loop breaker's) leaves f_P's attractor or only changes its surface:
`dynsys.surgery.attractors`.

`judge` runs the three on a before and an after model and returns a `Judgement` whose
`table()` has one row per quantity. The before model's side (greedy traces, window losses,
maps and the map prompts' greedy traces) is a `Baseline`: computed once (`Baseline.of`) it
serves every fix judged on the same inputs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_int, check_tokens
from dynsys.config import ModelConfig
from dynsys.decode.engine import pad_prompts, sequence_logits
from dynsys.decode.generation import generate
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.traces import collapse
from dynsys.nn import Model
from dynsys.stats import bootstrap_interval, mean_interval, paired_difference, proportion_interval
from dynsys.surgery.attractors import AttractorChange, Surface, compare_attractors, surface
from dynsys.surgery.loops import K, as_prompts, check_length, check_pair, looping

__all__ = ["LOSS_METHODS", "Baseline", "Judgement", "LossChange", "RateChange", "collapsing",
           "judge", "loss_change", "rate_changes", "window_losses"]

LOSS_METHODS: tuple[str, ...] = ("t", "bootstrap")


# --- (a) loop and collapse rates -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RateChange:
    """One failure mode ("loop" or "collapse") flagged per prompt before and after.

    Attributes:
        name: "loop" or "collapse".
        flags_before, flags_after: [B] bool, the trace of prompt b is flagged.
        before, after: the rates #flagged / B; before_interval, after_interval their exact 95%
            intervals.
        change: d = after − before; change_interval its exact paired interval.
    """

    name: str
    flags_before: np.ndarray
    flags_after: np.ndarray
    before: float
    before_interval: tuple[float, float]
    after: float
    after_interval: tuple[float, float]
    change: float
    change_interval: tuple[float, float]

    @classmethod
    def of(cls, name: str, before, after) -> RateChange:
        before, after = np.asarray(before, bool), np.asarray(after, bool)
        n = before.size
        d, interval = paired_difference(after, before)
        return cls(name, before, after, float(before.mean()),
                   proportion_interval(int(before.sum()), n), float(after.mean()),
                   proportion_interval(int(after.sum()), n), float(d), interval)

    def row(self) -> dict:
        """A table row (no arrays)."""
        return {"quantity": self.name, "n": int(self.flags_before.size), "before": self.before,
                "before_lo": self.before_interval[0], "before_hi": self.before_interval[1],
                "after": self.after, "after_lo": self.after_interval[0],
                "after_hi": self.after_interval[1], "change": self.change,
                "change_lo": self.change_interval[0], "change_hi": self.change_interval[1]}


def collapsing(traces, delimiter, window: int = 8) -> np.ndarray:
    """[B] bool: trace b is a list collapse (module docstring; `dynsys.dynamics.traces.collapse`
    with this `delimiter` token or tokens and `window`)."""
    traces = np.asarray(traces)
    if traces.ndim != 2 or traces.shape[1] < 1:
        raise ValueError(f"traces must be 2-D [batch, G], got shape {traces.shape}")
    window = check_int("window", window, minimum=1)
    return np.array([collapse(t, delimiter, window).is_collapse for t in traces], bool)


def _check_delimiter(delimiter, vocab_size: int):
    if delimiter is None:
        return None
    ids = np.atleast_1d(np.asarray(delimiter))
    if ids.ndim != 1 or not ids.size or not np.issubdtype(ids.dtype, np.integer) or (
            (ids < 0) | (ids >= vocab_size)).any():
        raise ValueError(f"delimiter={delimiter!r} must be token ids in [0, {vocab_size})")
    return ids


def rate_changes(before: Model, after: Model, prompts, G: int, *, delimiter=None,
                 window: int = 8, k: int = K) -> tuple[RateChange, ...]:
    """Greedy continuations of G tokens of `prompts` by both models, and the loop rate (and,
    with a `delimiter`, the collapse rate with `window`) before and after with the paired
    change. Returns (loop,) or (loop, collapse)."""
    cfg = check_pair(before, after)
    prompts, G = as_prompts(prompts), check_length(G)
    pad_prompts(cfg, prompts, G)
    delimiter = _check_delimiter(delimiter, cfg.vocab_size)
    x0, x1 = (np.asarray(generate(m, prompts, G).tokens) for m in (before, after))
    return _rates(x0, x1, delimiter, window, k)


def _rates(x0: np.ndarray, x1: np.ndarray, delimiter, window: int, k: int
           ) -> tuple[RateChange, ...]:
    """(loop,) or (loop, collapse) changes from the traces before (x0) and after (x1)."""
    out = [RateChange.of("loop", looping(x0, k), looping(x1, k))]
    if delimiter is not None:
        out.append(RateChange.of("collapse", collapsing(x0, delimiter, window),
                                 collapsing(x1, delimiter, window)))
    return tuple(out)


# --- (b) held-out loss ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LossChange:
    """Held-out cross-entropy before and after on the same windows.

    Attributes:
        losses_before, losses_after: [n] per-window mean cross-entropy ℓ_i (nats per token).
        before, after: their means L.
        change: D = mean(after − before); change_interval its paired interval (`method`).
        method: "t" (paired t) or "bootstrap" (paired percentile bootstrap over windows).
    """

    losses_before: np.ndarray
    losses_after: np.ndarray
    before: float
    after: float
    change: float
    change_interval: tuple[float, float]
    method: str

    def row(self) -> dict:
        """A table row (no arrays)."""
        return {"quantity": "heldout_loss", "n": int(self.losses_before.size),
                "before": self.before, "after": self.after,
                "change": self.change, "change_lo": self.change_interval[0],
                "change_hi": self.change_interval[1], "method": self.method}


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_losses(cfg: ModelConfig, params, windows) -> jnp.ndarray:
    lg = sequence_logits(cfg, params, windows[:, :-1])
    picked = jnp.take_along_axis(lg, windows[:, 1:, None], axis=-1)[..., 0]
    return (jax.nn.logsumexp(lg, axis=-1) - picked).mean(1)


def _check_windows(cfg: ModelConfig, windows) -> np.ndarray:
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must be 2-D [n, T + 1] with T >= 1, got shape "
                         f"{windows.shape}")
    if windows.shape[1] - 1 > cfg.max_position_embeddings:
        raise ValueError(f"window length T={windows.shape[1] - 1} exceeds "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    return check_tokens(windows, cfg.vocab_size, "windows", ndim=2)


def window_losses(model: Model, windows, batch: int = 16) -> np.ndarray:
    """[n] ℓ_i, the mean next-token cross-entropy of each window x_i [T + 1] (module
    docstring), `batch` windows per call (the last call padded, so one compile)."""
    cfg = model.config
    windows = _check_windows(cfg, windows)
    n = len(windows)
    batch = min(check_int("batch", batch, minimum=1), n)
    out = np.zeros(n, np.float64)
    for start in range(0, n, batch):
        rows = windows[start:start + batch]
        padded = np.concatenate([rows, np.repeat(rows[:1], batch - len(rows), 0)])
        out[start:start + len(rows)] = np.asarray(
            _window_losses(cfg, model.params, jnp.asarray(padded, jnp.int32)))[:len(rows)]
    return out


def loss_change(before: Model, after: Model, windows, *, method: str = "t",
                batch: int = 16, seed: int = 0) -> LossChange:
    """Per-window held-out losses of both models on `windows` [n, T + 1] (n >= 2) and the
    paired change D = mean(ℓ^after − ℓ^before) with a 95% paired t interval ("t") or paired
    percentile bootstrap interval ("bootstrap", 2000 resamples, `seed`)."""
    check_pair(before, after)
    windows = _check_loss_inputs(before.config, windows, method)
    return _loss(window_losses(before, windows, batch), window_losses(after, windows, batch),
                 method, seed)


def _check_loss_inputs(cfg: ModelConfig, windows, method: str) -> np.ndarray:
    if method not in LOSS_METHODS:
        raise ValueError(f"method={method!r} must be one of {', '.join(LOSS_METHODS)}")
    windows = _check_windows(cfg, windows)
    if len(windows) < 2:
        raise ValueError(f"{len(windows)} window(s): a paired interval needs at least 2")
    return windows


def _loss(l0: np.ndarray, l1: np.ndarray, method: str, seed: int = 0) -> LossChange:
    """The LossChange of per-window losses before (l0) and after (l1)."""
    delta = l1 - l0
    if not delta.any():
        interval = (0.0, 0.0)
    elif method == "t":
        interval = mean_interval(delta)
    else:
        interval = bootstrap_interval(delta, np.mean, seed=seed)
    return LossChange(l0, l1, float(l0.mean()), float(l1.mean()), float(delta.mean()),
                      (float(interval[0]), float(interval[1])), method)


# --- all three -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Baseline:
    """The before model's side of a judgement on fixed inputs: what `judge` compares every
    after model with. Computed once (`Baseline.of`), it serves any number of fixes.

    Attributes:
        traces: [B, G] greedy continuations of the held-out prompts.
        losses: [n] per-window held-out losses ℓ_i (`window_losses`).
        maps: [M, V] the Markov map f_P of each map prompt (`markov_map(...).next`).
        greedy: [M, G] the greedy G-token trace of each map prompt.
    """

    traces: np.ndarray
    losses: np.ndarray
    maps: np.ndarray
    greedy: np.ndarray

    @classmethod
    def of(cls, model: Model, prompts, G: int, heldout_windows, map_prompts=(),
           batch: int = 16) -> Baseline:
        """`model`'s traces, window losses, maps and map-prompt traces (the quantities `judge`
        reads from the before model)."""
        cfg, prompts, G = model.config, as_prompts(prompts), check_length(G)
        pad_prompts(cfg, prompts, G)
        map_prompts = as_prompts(map_prompts)
        V = cfg.vocab_size
        return cls(np.asarray(generate(model, prompts, G).tokens),
                   window_losses(model, heldout_windows, batch),
                   np.stack([markov_map(model, p, progress=False).next for p in map_prompts])
                   if len(map_prompts) else np.zeros((0, V), np.int64),
                   np.stack([np.asarray(generate(model, [p], G).tokens)[0] for p in map_prompts])
                   if len(map_prompts) else np.zeros((0, G), np.int64))

    def check(self, cfg: ModelConfig, prompts: int, G: int, windows: int, maps: int) -> None:
        """ValueError naming the first array whose shape does not fit these inputs."""
        expected = {"traces": (prompts, G), "losses": (windows,), "maps": (maps, cfg.vocab_size),
                    "greedy": (maps, G)}
        for name, shape in expected.items():
            got = np.shape(getattr(self, name))
            if got != shape:
                raise ValueError(f"baseline {name} has shape {got}; these inputs need {shape}")


@dataclasses.dataclass(frozen=True)
class Judgement:
    """`judge`'s result: rates (loop[, collapse]), loss, one AttractorChange per map prompt,
    and per map prompt the Surfaces of the after model's greedy trace and of any sampled
    traces, in the before model's f_P."""

    rates: tuple[RateChange, ...]
    loss: LossChange
    attractors: tuple[AttractorChange, ...]
    surfaces: tuple[tuple[Surface, ...], ...]

    def table(self) -> list[dict]:
        """One dict per quantity; every row has part, quantity, prompt (map prompt index or
        None); before/after/change where they apply."""
        rows = [{"part": "rate", "prompt": None, **r.row()} for r in self.rates]
        rows.append({"part": "loss", "prompt": None, **self.loss.row()})
        for i, (att, surfs) in enumerate(zip(self.attractors, self.surfaces)):
            rows += att.rows(i) + [s.row(i) for s in surfs]
        return rows


def judge(before: Model, after: Model, prompts, G: int, heldout_windows, map_prompts=(), *,
          baseline: Baseline | None = None, sampled: Sequence | None = None, delimiter=None,
          window: int = 8, near_steps: int = 1, method: str = "t", k: int = K) -> Judgement:
    """Judge `after` (e.g. `apply_edit(before, ...)`) against `before` three ways:

    (a) loop (and, with `delimiter`, collapse) rates of greedy G-token continuations of the
        held-out `prompts` (`rate_changes`);
    (b) held-out loss on `heldout_windows` [n, T + 1] (`loss_change`, `method`);
    (c) for each of `map_prompts`: the attractors of f_P before and after
        (`dynsys.surgery.attractors.compare_attractors`), and the Surfaces, in the before f_P
        relative to the cycle the before model's greedy G-token trace of P ends in, of the
        after model's greedy trace ("after greedy") and of `sampled[i]` ([S, G] traces from
        P, e.g. a loop-breaking sampler; "sampled").

    The before side is `baseline` where given (`Baseline.of(before, prompts, G,
    heldout_windows, map_prompts)`, checked to fit these inputs), computed here otherwise:
    judging many fixes of one model computes it once.
    """
    cfg = check_pair(before, after)
    prompts, G, map_prompts = as_prompts(prompts), check_length(G), as_prompts(map_prompts)
    if sampled is not None and len(sampled) != len(map_prompts):
        raise ValueError(f"{len(sampled)} sampled trace sets but {len(map_prompts)} map "
                         "prompts")
    pad_prompts(cfg, prompts, G)
    delimiter = _check_delimiter(delimiter, cfg.vocab_size)
    windows = _check_loss_inputs(cfg, heldout_windows, method)
    if baseline is None:
        baseline = Baseline.of(before, prompts, G, windows, map_prompts)
    baseline.check(cfg, len(prompts), G, len(windows), len(map_prompts))
    rates = _rates(baseline.traces, np.asarray(generate(after, prompts, G).tokens), delimiter,
                   window, k)
    loss = _loss(baseline.losses, window_losses(after, windows), method)
    changes, surfaces = [], []
    for i, prompt in enumerate(map_prompts):
        f, g0 = baseline.maps[i], baseline.greedy[i]
        changes.append(compare_attractors(f, markov_map(after, prompt, progress=False).next))
        g1 = np.asarray(generate(after, [prompt], G).tokens)[0]
        surfs = [surface(f, g0, g1, "after greedy", near_steps)]
        if sampled is not None:
            surfs.append(surface(f, g0, sampled[i], "sampled", near_steps))
        surfaces.append(tuple(surfs))
    return Judgement(rates, loss, tuple(changes), tuple(surfaces))
