"""Random-mapping expectations against enumeration, OEIS, Monte Carlo and asymptotics."""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import exp1

import dynsys as ds
from dynsys.dynamics.nullmodel import (
    LARGEST_COMPONENT,
    LONGEST_CYCLE,
    LONGEST_TAIL,
    compare_to_null,
    indegree_orbit_null,
    indegree_shuffle,
    mapping_statistics,
    random_map_null,
    random_mapping,
    random_mapping_expectations,
)

EXACT = ["cycles", "cyclic_nodes", "terminal_nodes", "tail", "cycle_length", "rho"]


def brute_statistics(f: tuple[int, ...]) -> dict[str, float]:
    """The exact statistics of one map by walking every orbit in pure Python."""
    n = len(f)
    tails, lengths = [], []
    for x in range(n):
        seen = {}
        while x not in seen:
            seen[x] = len(seen)
            x = f[x]
        tails.append(seen[x])
        lengths.append(len(seen) - seen[x])
    cyclic = [x for x in range(n) if tails[x] == 0]
    return {
        "cycles": sum(1 / lengths[x] for x in cyclic),
        "cyclic_nodes": len(cyclic),
        "terminal_nodes": n - len(set(f)),
        "tail": np.mean(tails),
        "cycle_length": np.mean(lengths),
        "rho": np.mean(np.add(tails, lengths)),
    }


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_exact_sums_match_enumeration_of_all_maps(n):
    stats = [brute_statistics(f) for f in itertools.product(range(n), repeat=n)]
    expected = asdict(random_mapping_expectations(n))
    for name in EXACT:
        assert np.mean([s[name] for s in stats]) == pytest.approx(expected[name], rel=1e-12), name


def test_tail_against_oeis_a262973():
    """Total tail length over all maps and starts (OEIS A262973), so E[tail] = a(n) / n^(n+1)."""
    a = [0, 2, 36, 624, 11800, 248400, 5817084, 150660608]
    for n, total in enumerate(a, start=1):
        assert random_mapping_expectations(n).tail == pytest.approx(total / n ** (n + 1), abs=1e-12)


def test_monte_carlo_agrees_within_four_standard_errors():
    rng = np.random.default_rng(12345)
    n, samples = 50, 3000
    stats = [mapping_statistics(random_mapping(n, rng)) for _ in range(samples)]
    expected = asdict(random_mapping_expectations(n))
    for name in EXACT:
        values = np.array([s[name] for s in stats])
        error = values.std(ddof=1) / math.sqrt(samples)
        assert abs(values.mean() - expected[name]) < 4 * error, name


def test_asymptotics():
    n = 10**6
    e = random_mapping_expectations(n)
    # Ramanujan's Q-function: Q(n) = sqrt(pi n / 2) - 1/3 + sqrt(pi / (2 n)) / 12 + O(1/n)
    assert e.cyclic_nodes == pytest.approx(
        math.sqrt(math.pi * n / 2) - 1 / 3 + math.sqrt(math.pi / (2 * n)) / 12, abs=1e-5
    )
    assert e.cycles == pytest.approx((math.log(2 * n) + np.euler_gamma) / 2, abs=1e-3)
    assert e.terminal_nodes == pytest.approx(n / math.e, rel=1e-6)
    assert e.tail == pytest.approx(math.sqrt(math.pi * n / 8) - 2 / 3, abs=1e-4)
    assert e.cycle_length == pytest.approx(math.sqrt(math.pi * n / 8) + 1 / 3, abs=1e-4)
    assert random_mapping_expectations(10**10).cycles == pytest.approx(
        (math.log(2e10) + np.euler_gamma) / 2, abs=1e-5
    )


def test_extremal_constants():
    assert (
        pytest.approx(
            math.sqrt(math.pi / 2)
            * quad(lambda v: 1 - math.exp(-exp1(v)), 0, np.inf, limit=200)[0],
            rel=1e-9,
        )
        == LONGEST_CYCLE
    )
    assert (
        pytest.approx(
            2 * quad(lambda v: 1 - math.exp(-exp1(v) / 2), 0, np.inf, limit=200)[0], rel=1e-9
        )
        == LARGEST_COMPONENT
    )
    assert pytest.approx(math.sqrt(2 * math.pi) * math.log(2), rel=1e-12) == LONGEST_TAIL
    n = 4000  # leading terms are already close at moderate n
    rng = np.random.default_rng(7)
    stats = [mapping_statistics(random_mapping(n, rng)) for _ in range(300)]
    e = random_mapping_expectations(n)
    for name in ["largest_component", "longest_cycle", "longest_tail", "longest_rho"]:
        assert np.mean([s[name] for s in stats]) == pytest.approx(getattr(e, name), rel=0.1), name


def test_samplers_are_seeded_and_valid():
    f = random_mapping(1000, seed=3)
    assert np.array_equal(f, random_mapping(1000, seed=3)) and not np.array_equal(
        f, random_mapping(1000, seed=4)
    )
    assert f.min() >= 0 and f.max() < 1000
    g = indegree_shuffle(f, seed=5)
    assert np.array_equal(np.bincount(g, minlength=1000), np.bincount(f, minlength=1000))
    assert np.array_equal(g, indegree_shuffle(f, seed=5)) and not np.array_equal(g, f)


def test_shuffling_a_permutation_gives_a_uniform_permutation():
    """id o sigma = sigma: its expected number of cycles is the harmonic number H_n."""
    n, samples = 10, 3000
    rng = np.random.default_rng(0)
    cycles = [
        mapping_statistics(indegree_shuffle(np.arange(n), rng))["cycles"] for _ in range(samples)
    ]
    harmonic = sum(1 / k for k in range(1, n + 1))
    assert abs(np.mean(cycles) - harmonic) < 4 * np.std(cycles) / math.sqrt(samples)


def test_compare_to_null():
    f = np.array([1, 2, 0, 2, 3, 5, 5, 5])
    table = compare_to_null(f, shuffles=20, seed=0)
    observed = mapping_statistics(f)
    expected = asdict(random_mapping_expectations(8))
    assert list(table) == list(observed)
    for name, row in table.items():
        assert row.observed == observed[name] and row.expected == expected[name]
        assert row.ratio == pytest.approx(observed[name] / expected[name])
        assert row.exact == (name in EXACT)
        assert np.isfinite(row.shuffled_mean) and row.shuffled_sd >= 0
    assert table["cycles"].observed == 2 and table["terminal_nodes"].observed == 3
    assert table["terminal_nodes"].shuffled_sd == 0  # in-degrees are kept
    assert math.isnan(compare_to_null(f)["rho"].shuffled_mean)


def test_bad_input():
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            random_mapping_expectations(bad)
        with pytest.raises(ValueError, match="positive integer"):
            random_mapping(bad)
    with pytest.raises(ValueError, match=r"f\[1\] = 9 is outside \[0, 3\)"):
        indegree_shuffle([0, 9, 1])
    with pytest.raises(ValueError, match=r"f\[0\] = -1"):
        compare_to_null([-1, 0])


def test_random_map_null_is_exact_on_every_map_of_a_few_tokens():
    """random_map_null against the orbits of 0 under all V^V maps on V tokens, read as
    traces by periodicity: the same law, to rounding."""
    for V, G, k in ((4, 12, 3), (5, 9, 2), (5, 20, 3)):
        cycle, rho = np.zeros(G + 1), np.zeros(G + 1)
        for f in itertools.product(range(V), repeat=V):
            trace, x = [], 0
            for _ in range(G):
                trace.append(x)
                x = f[x]
            found = ds.traces.periodicity(trace, k)
            if found.period:
                cycle[found.shortest] += V ** -V
                rho[found.onset + found.period] += V ** -V
        law = random_map_null(V, G, k)
        np.testing.assert_allclose(law["cycle"], cycle, atol=1e-12)
        np.testing.assert_allclose(law["rho"], rho, atol=1e-12)


def test_indegree_orbit_null_of_uniform_maps_is_the_uniform_law():
    """A uniform random map's in-degree shuffle is again a uniform random map: the sampled
    law of orbits read as traces agrees with random_map_null's exact one, and a map with
    one hub (every token into 0, a fixed point) loops at once."""
    V, G = 128, 96
    maps = np.random.default_rng(0).integers(0, V, (40, V))
    sampled = indegree_orbit_null(maps, G, 3, 50, seed=1)
    exact = random_map_null(V, G, 3)
    for statistic in ("cycle", "rho"):
        gap = np.abs(np.cumsum(sampled[statistic]) - np.cumsum(exact[statistic])).max()
        assert gap < 4 * np.sqrt(0.25 / 2000), (statistic, gap)
    hub = indegree_orbit_null(np.zeros((1, V), int), G, 3, 20)
    assert hub["cycle"][1] == 1.0 and hub["rho"][:3].sum() == 1.0
