"""The attractors of the Markov map before and after a fix, and whether a trace leaves an
attractor or only changes its surface.

The **Markov map** f_P(v) = argmax logits(P + [v]) (`markov_map`) is a map of the vocabulary
into itself, so a functional graph (`dynsys.dynamics.orbits`):

- its structure (`attractors`): the cycles C_1..C_c, the number of cyclic points Σ|C_j| and the
  largest basin max_j |{v : f^t(v) ∈ C_j for some t}|. A cycle is kept in orbit order rotated
  to start at its smallest member, so two cycles are equal exactly when they are the same
  cyclic sequence of states (equal up to rotation); `compare_attractors` lists which cycles of
  f_before vanish from f_after and which appear;
- **surface or attractor** (`attractor_distances`, `surface`): for a trace x_0..x_{G−1} from P
  (sampled with a loop breaker, or decoded greedily by the edited model) and the cycle C* of
  f_P that the greedy trace of P ends in (the cycle the greedy trace's last token drains into),
  the distance of each visited state is d(x_t) = min{s ≥ 0 : f_P^s(x_t) ∈ C*}: 0 on C*, the
  tail length when x_t drains into C*, ∞ when x_t lies in another basin. A trace with d = 0 at
  most steps only changed the surface of the attractor (it still walks C*); a trace at ∞
  left it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dynsys.checks import check_int, check_tokens
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.orbits import check_map, orbits
from dynsys.nn import Model
from dynsys.surgery.loops import check_pair

__all__ = ["AttractorChange", "Attractors", "Surface", "attractor_change",
           "attractor_distances", "attractors", "compare_attractors", "surface"]


@dataclasses.dataclass(frozen=True)
class Attractors:
    """The attractor structure of a map f: V → V.

    Attributes:
        cycles: every cycle in orbit order from its smallest member (the rotation-canonical
            form), ordered by that member.
        basins: [C] states draining into each cycle (cyclic ones included).
        cyclic_points: Σ_j |C_j|.
        largest_basin: max_j basins[j].
    """

    cycles: tuple[tuple[int, ...], ...]
    basins: np.ndarray
    cyclic_points: int
    largest_basin: int

    @property
    def n_cycles(self) -> int:
        return len(self.cycles)


def attractors(f) -> Attractors:
    """The cycles, cyclic points and basins of f ([V] ints in [0, V); `dynsys.dynamics.orbits`)."""
    orb = orbits(f)
    cycles = tuple(tuple(int(v) for v in orb.cycle(c)) for c in range(orb.n_cycles))
    return Attractors(cycles, orb.basin_size.copy(), int(orb.cycle_nodes.size),
                      int(orb.basin_size.max()))


@dataclasses.dataclass(frozen=True)
class AttractorChange:
    """f_P's attractors before and after, and the cycles that vanish (in before only) and
    appear (in after only), compared in rotation-canonical form."""

    before: Attractors
    after: Attractors
    vanished: tuple[tuple[int, ...], ...]
    appeared: tuple[tuple[int, ...], ...]

    def rows(self, prompt: int | None = None) -> list[dict]:
        out = []
        for name in ("n_cycles", "cyclic_points", "largest_basin"):
            b, a = getattr(self.before, name), getattr(self.after, name)
            out.append({"part": "attractor", "quantity": name, "prompt": prompt, "before": b,
                        "after": a, "change": a - b})
        for name in ("vanished", "appeared"):
            cycles = getattr(self, name)
            out.append({"part": "attractor", "quantity": f"cycles_{name}", "prompt": prompt,
                        "count": len(cycles), "cycles": [list(c) for c in cycles]})
        return out


def compare_attractors(f_before, f_after) -> AttractorChange:
    """`attractors` of two maps on the same V, and the cycles that vanish and appear."""
    f_before, f_after = check_map(f_before), check_map(f_after)
    if f_before.size != f_after.size:
        raise ValueError(f"the maps have {f_before.size} and {f_after.size} states; they must "
                         "act on the same set")
    b, a = attractors(f_before), attractors(f_after)
    kept_b, kept_a = set(b.cycles), set(a.cycles)
    return AttractorChange(b, a, tuple(c for c in b.cycles if c not in kept_a),
                           tuple(c for c in a.cycles if c not in kept_b))


def attractor_distances(f, traces, target: int) -> np.ndarray:
    """[B, G] (or [G] for one trace) float: d(x_t) = min{s ≥ 0 : f^s(x_t) on the cycle that
    state `target` drains into}, ∞ when x_t drains into another cycle (module docstring)."""
    f = check_map(f)
    target = check_int("target", target, 0, f.size - 1)
    traces = np.asarray(traces)
    if traces.ndim not in (1, 2) or traces.shape[-1] < 1:
        raise ValueError(f"traces must be [G] or [B, G], got shape {traces.shape}")
    traces = check_tokens(traces, f.size, "traces", ndim=traces.ndim)
    orb = orbits(f)
    home = orb.cycle_id == orb.cycle_id[target]
    return np.where(home[traces], orb.tail[traces], np.inf)


@dataclasses.dataclass(frozen=True)
class Surface:
    """Where traces from P walk relative to the cycle C* of f_P its greedy trace ends in.

    Attributes:
        label: what the traces are (e.g. "after greedy", "sampled").
        cycle: C* (rotation-canonical).
        distances: [B, G] d(x_t) per trace and step (`attractor_distances`).
        on: share of steps with d = 0 (on C*); near: share with d ≤ `near_steps`; elsewhere:
            share with d = ∞ (in another basin).
    """

    label: str
    cycle: tuple[int, ...]
    distances: np.ndarray
    near_steps: int
    on: float
    near: float
    elsewhere: float

    def row(self, prompt: int | None = None) -> dict:
        return {"part": "surface", "quantity": self.label, "prompt": prompt,
                "n": int(self.distances.shape[0]), "cycle": list(self.cycle), "on": self.on,
                "near": self.near, "near_steps": self.near_steps, "elsewhere": self.elsewhere}


def surface(f, greedy, traces, label: str = "traces", near_steps: int = 1) -> Surface:
    """Distances of `traces` [B, G] (or [G]) to the cycle of f that the `greedy` trace's last
    token drains into, and the shares of steps on it, within `near_steps` of it, and in
    another basin."""
    near_steps = check_int("near_steps", near_steps, minimum=0)
    greedy = np.asarray(greedy)
    if greedy.ndim != 1 or not greedy.size:
        raise ValueError(f"greedy must be one non-empty trace [G], got shape {greedy.shape}")
    f = check_map(f)
    greedy = check_tokens(greedy, f.size, "greedy", ndim=1)
    d = np.atleast_2d(attractor_distances(f, traces, int(greedy[-1])))
    orb = orbits(f)
    cycle = tuple(int(v) for v in orb.cycle(int(orb.cycle_id[greedy[-1]])))
    return Surface(label, cycle, d, int(near_steps), float((d == 0).mean()),
                   float((d <= near_steps).mean()), float(np.isinf(d).mean()))


def attractor_change(before: Model, after: Model, prompt) -> AttractorChange:
    """`compare_attractors` of the Markov maps f_P of both models for one prompt P."""
    check_pair(before, after)
    return compare_attractors(markov_map(before, prompt).next, markov_map(after, prompt).next)
