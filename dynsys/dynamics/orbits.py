"""Functional-graph decomposition of a greedy map ``f: V -> V``.

A map of a finite set into itself is a functional graph (out-degree 1): every
orbit ``x, f(x), f(f(x)), ...`` runs down a *tail* of ``tail[x]`` distinct
non-cyclic tokens into a cycle, entering it at ``entry[x] = f^tail[x](x)``.
The *basin* of a cycle is the set of tokens, cyclic ones included, that drain
into it; basins are the weakly connected components of the graph. Everything
here is vectorised by pointer doubling: ``O(V log V)`` work in ``O(log V)``
numpy passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx
import numpy as np

__all__ = ["Orbits", "check_map", "orbit_graph", "orbit_of", "orbits"]


@dataclass(frozen=True)
class Orbits:
    """Orbit structure of a map on ``V`` tokens with ``C`` cycles.

    Cycles are numbered ``0..C-1`` in increasing order of their smallest member.

    Attributes:
        tail: ``(V,)`` steps from each token to its first cyclic node (0 on cycles).
        entry: ``(V,)`` the first cyclic node of each token's orbit.
        cycle_id: ``(V,)`` the cycle each token drains into.
        cycle_length: ``(V,)`` the length of that cycle.
        cycle_nodes: ``(number of cyclic tokens,)`` the cycles one after the
            other, each in orbit order starting from its smallest member.
        cycle_ptr: ``(C+1,)`` cycle ``c`` is ``cycle_nodes[cycle_ptr[c]:cycle_ptr[c+1]]``.
        basin_size: ``(C,)`` tokens (cyclic included) that drain into each cycle.
    """

    tail: np.ndarray
    entry: np.ndarray
    cycle_id: np.ndarray
    cycle_length: np.ndarray
    cycle_nodes: np.ndarray
    cycle_ptr: np.ndarray
    basin_size: np.ndarray

    @property
    def n_cycles(self) -> int:
        return self.basin_size.size

    @property
    def cycle_lengths(self) -> np.ndarray:
        """``(C,)`` length of each cycle."""
        return np.diff(self.cycle_ptr)

    def cycle(self, c: int) -> np.ndarray:
        """Members of cycle ``c`` in orbit order, starting from the smallest."""
        return self.cycle_nodes[self.cycle_ptr[c] : self.cycle_ptr[c + 1]]


def check_map(f: Sequence[int] | np.ndarray) -> np.ndarray:
    """Validate a map ``f: {0..V-1} -> {0..V-1}`` given as an int array; return it as int64."""
    a = np.asarray(f)
    if a.ndim != 1:
        raise ValueError(f"a map must be a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise ValueError("empty map (V = 0)")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"a map must hold integer token ids, got dtype {a.dtype}")
    bad = (a < 0) | (a >= a.size)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"map value f[{i}] = {a[i]} is outside [0, {a.size})")
    return a.astype(np.int64, copy=False)


def _rank_to_root(nxt: np.ndarray, root: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointer jumping on a forest: steps from each node to its root, and that root.

    ``nxt[x]`` is the parent of ``x``; nodes with ``root[x]`` True are roots.
    """
    h = np.where(root, np.arange(nxt.size), nxt)
    d = (~root).astype(np.int64)
    while True:
        hh = h[h]
        if np.array_equal(hh, h):
            return d, h
        d = d + d[h]
        h = hh


def orbits(f: Sequence[int] | np.ndarray) -> Orbits:
    """Decompose a map into tails, cycles and basins (see :class:`Orbits`).

    The cyclic tokens are the image of ``f^(2^m)`` with ``2^m >= V``; cycle
    minima come from ``min`` pointer doubling on the cyclic subgraph, orbit
    positions and tails from pointer jumping (list ranking).
    """
    f = check_map(f)
    v = f.size
    g, steps = f, 1
    while steps < v:
        g, steps = g[g], 2 * steps
    cyclic = np.zeros(v, bool)
    cyclic[g] = True

    nodes = np.flatnonzero(cyclic)
    local = np.full(v, -1, np.int64)
    local[nodes] = np.arange(nodes.size)
    succ = local[f[nodes]]  # a permutation of the cyclic nodes
    smallest, h, span = nodes.copy(), succ, 1
    while span < nodes.size:
        smallest, h, span = np.minimum(smallest, smallest[h]), h[h], 2 * span
    roots, cid = np.unique(smallest, return_inverse=True)
    lengths = np.bincount(cid, minlength=roots.size)
    to_root, _ = _rank_to_root(succ, nodes == smallest)
    position = (lengths[cid] - to_root) % lengths[cid]
    cycle_nodes = nodes[np.lexsort((position, cid))]

    tail, entry = _rank_to_root(f, cyclic)
    cycle_id = cid[local[entry]]
    return Orbits(
        tail=tail,
        entry=entry,
        cycle_id=cycle_id,
        cycle_length=lengths[cycle_id],
        cycle_nodes=cycle_nodes,
        cycle_ptr=np.concatenate(([0], np.cumsum(lengths))),
        basin_size=np.bincount(cycle_id, minlength=roots.size),
    )


def orbit_graph(f: Sequence[int] | np.ndarray) -> nx.DiGraph:
    """The functional graph ``x -> f(x)`` as a networkx DiGraph.

    Nodes carry ``tail`` and ``cycle`` (the cycle id of :func:`orbits`); the
    attracting components of the graph are the cycles and its weakly connected
    components are the basins.
    """
    f = check_map(f)
    orb = orbits(f)
    graph = nx.DiGraph()
    graph.add_nodes_from(
        (x, {"tail": t, "cycle": c})
        for x, (t, c) in enumerate(zip(orb.tail.tolist(), orb.cycle_id.tolist(), strict=True))
    )
    graph.add_edges_from(enumerate(f.tolist()))
    return graph


def orbit_of(f: Sequence[int] | np.ndarray, x0: int) -> tuple[list[int], list[int]]:
    """The orbit of ``x0``: (tail, cycle), the cycle listed from its entry point in orbit order."""
    f = check_map(f)
    if not 0 <= x0 < f.size:
        raise ValueError(f"start token {x0} is outside [0, {f.size})")
    seen: dict[int, int] = {}
    path: list[int] = []
    x = int(x0)
    while x not in seen:
        seen[x] = len(path)
        path.append(x)
        x = int(f[x])
    return path[: seen[x]], path[seen[x] :]
