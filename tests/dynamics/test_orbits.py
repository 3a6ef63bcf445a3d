"""Functional-graph decomposition against step-by-step iteration and networkx."""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynsys.dynamics.orbits import check_map, orbit_graph, orbit_of, orbits

FAST = settings(max_examples=150, deadline=None)


@st.composite
def maps(draw) -> list[int]:
    v = draw(st.integers(1, 40))
    return draw(st.lists(st.integers(0, v - 1), min_size=v, max_size=v))


def iterate(f: list[int], x: int) -> tuple[int, int, list[int]]:
    """(tail, entry, cycle from its smallest member) by stepping until a repeat."""
    path = [x]
    while f[path[-1]] not in path:
        path.append(f[path[-1]])
    first = path.index(f[path[-1]])
    cycle = path[first:]
    i = cycle.index(min(cycle))
    return first, path[first], cycle[i:] + cycle[:i]


@FAST
@given(maps())
def test_orbits_match_iteration(f):
    orb = orbits(f)
    steps = [iterate(f, x) for x in range(len(f))]
    cycles = sorted({tuple(c) for _, _, c in steps})  # ordered by smallest member
    assert orb.n_cycles == len(cycles)
    assert [tuple(orb.cycle(c)) for c in range(orb.n_cycles)] == cycles
    for x, (tail, entry, cycle) in enumerate(steps):
        assert orb.tail[x] == tail
        assert orb.entry[x] == entry
        assert orb.cycle_id[x] == cycles.index(tuple(cycle))
        assert orb.cycle_length[x] == len(cycle)
    assert orb.basin_size.tolist() == np.bincount(orb.cycle_id).tolist()
    assert orb.basin_size.sum() == len(f)
    assert orb.cycle_lengths.tolist() == [len(c) for c in cycles]


@FAST
@given(maps(), st.data())
def test_orbit_of(f, data):
    x0 = data.draw(st.integers(0, len(f) - 1))
    tail, cycle = orbit_of(f, x0)
    orb = orbits(f)
    assert len(tail) == orb.tail[x0] and len(cycle) == orb.cycle_length[x0]
    assert cycle[0] == orb.entry[x0]
    assert sorted(cycle) == sorted(orb.cycle(orb.cycle_id[x0]).tolist())
    path = tail + cycle
    assert all(f[a] == b for a, b in itertools.pairwise(path)) and f[cycle[-1]] == cycle[0]
    assert len(set(path)) == len(path) and (not tail or tail[0] == x0)


@settings(max_examples=60, deadline=None)
@given(maps())
def test_networkx_view_agrees(f):
    graph = orbit_graph(f)
    orb = orbits(f)
    attracting = sorted(sorted(c) for c in nx.attracting_components(graph))
    assert attracting == sorted(sorted(orb.cycle(c).tolist()) for c in range(orb.n_cycles))
    basins = sorted(len(c) for c in nx.weakly_connected_components(graph))
    assert basins == sorted(orb.basin_size.tolist())
    assert [graph.nodes[x]["tail"] for x in range(len(f))] == orb.tail.tolist()
    assert [graph.nodes[x]["cycle"] for x in range(len(f))] == orb.cycle_id.tolist()
    assert sorted(graph.edges) == sorted(enumerate(f))


def test_planted_cycles_and_trees():
    # cycles (7 3 5) and (2), a fixed point 9; a long tail 0 -> 1 -> 4 -> 6 -> 8 -> 7
    f = np.array([1, 4, 2, 5, 6, 7, 8, 3, 7, 9])
    orb = orbits(f)
    assert [orb.cycle(c).tolist() for c in range(orb.n_cycles)] == [[2], [3, 5, 7], [9]]
    assert orb.tail.tolist() == [5, 4, 0, 0, 3, 0, 2, 0, 1, 0]
    assert orb.entry[0] == 7 and orb.basin_size.tolist() == [1, 8, 1]


def test_large_maps_are_consistent():
    rng = np.random.default_rng(0)
    v = 1 << 16
    for f in (rng.integers(0, v, v), rng.permutation(v), np.maximum(np.arange(v) - 1, 0)):
        orb = orbits(f)
        off = orb.tail > 0
        assert np.all(orb.tail[f[off]] == orb.tail[off] - 1)
        assert np.all(orb.cycle_id[f] == orb.cycle_id) and np.all(
            orb.entry[f[off]] == orb.entry[off]
        )
        for c in range(orb.n_cycles):
            cyc = orb.cycle(c)
            assert cyc[0] == cyc.min() and np.all(f[cyc] == np.roll(cyc, -1))
    assert orbits(np.maximum(np.arange(v) - 1, 0)).tail.max() == v - 1


def test_bad_maps():
    with pytest.raises(ValueError, match=r"f\[2\] = 7 is outside \[0, 3\)"):
        orbits([0, 1, 7])
    with pytest.raises(ValueError, match=r"f\[0\] = -1 is outside"):
        check_map([-1, 0])
    with pytest.raises(ValueError, match="1-D"):
        orbits([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="empty"):
        orbit_graph([])
    with pytest.raises(ValueError, match="integer"):
        orbits([0.0, 1.0])
    with pytest.raises(ValueError, match="start token 5 is outside"):
        orbit_of([0, 1], 5)
