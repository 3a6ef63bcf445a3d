"""The attractors of a map: cycles, basins and cyclic points of a hand-made map and of random
maps against networkx, cycles compared up to rotation, and distances to a cycle against BFS."""

import math

import networkx as nx
import numpy as np
import pytest

from dynsys.surgery.attractors import attractor_distances, attractors, compare_attractors, surface

HAND = np.array([1, 2, 0, 4, 3, 5, 5, 6, 0, 8])  # 0→1→2→0, 3↔4, 5 fixed; tails 6,7 and 8,9


def test_attractors_of_a_hand_made_map():
    att = attractors(HAND)
    assert att.cycles == ((0, 1, 2), (3, 4), (5,))
    assert att.basins.tolist() == [5, 2, 3] and att.cyclic_points == 6
    assert att.largest_basin == 5 and att.n_cycles == 3
    other = HAND.copy()
    other[[0, 2, 1]] = [2, 1, 0]  # the same states cycled the other way: 0→2→1→0
    other[3] = 3                  # 3 fixed, 4 now drains into it
    change = compare_attractors(HAND, other)
    assert change.vanished == ((0, 1, 2), (3, 4))
    assert change.appeared == ((0, 2, 1), (3,))
    assert compare_attractors(HAND, HAND).vanished == ()


@pytest.mark.parametrize("seed", range(4))
def test_cycles_and_distances_against_networkx(seed):
    rng = np.random.default_rng(seed)
    f = rng.integers(0, 60, 60)
    graph = nx.DiGraph(list(enumerate(f.tolist())))
    cycles = []
    for c in nx.simple_cycles(graph):
        i = c.index(min(c))
        cycles.append(tuple(c[i:] + c[:i]))
    att = attractors(f)
    assert sorted(att.cycles) == sorted(cycles)
    basins = sorted(len(b) for b in nx.weakly_connected_components(graph))
    assert sorted(att.basins.tolist()) == basins
    trace = rng.integers(0, 60, (3, 20))
    target = int(rng.integers(60))
    d = attractor_distances(f, trace, target)
    cycle = next(set(c) for c in cycles if any(nx.has_path(graph, target, v) for v in c))
    for x, dx in zip(trace.ravel(), d.ravel()):
        lengths = nx.single_source_shortest_path_length(graph, int(x))  # BFS
        best = min((lengths[v] for v in cycle if v in lengths), default=math.inf)
        assert dx == best
    s = surface(f, np.array([target]), trace, near_steps=2)
    assert s.on == (d == 0).mean() and s.near == (d <= 2).mean()
    assert s.elsewhere == np.isinf(d).mean() and set(s.cycle) == cycle


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="target=10"):
        attractor_distances(HAND, [1, 2], 10)
    with pytest.raises(ValueError, match="10 and 9 states"):
        compare_attractors(HAND, HAND[:9] % 9)
    with pytest.raises(ValueError, match="near_steps=-1"):
        surface(HAND, [1], [1, 2], near_steps=-1)
    with pytest.raises(ValueError, match=r"f\[1\] = 10"):
        attractors([0, 10])
