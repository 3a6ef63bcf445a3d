"""Null models for greedy maps: uniform random mappings and in-degree-preserving shuffles.

Exact expectations for a uniform random mapping of ``n`` points (each of the
``n^n`` maps equally likely) follow from the birthday sequence
``q_k = n^(k falling) / n^k = prod_{j<k} (1 - j/n)``, the probability that
``x, f(x), ..., f^(k-1)(x)`` are distinct. Source: P. Flajolet and
A. M. Odlyzko, "Random mapping statistics", EUROCRYPT '89, LNCS 434 (1990)
329-354 (also INRIA RR-1114), sections on additive parameters, parameters
of a random point and extremal parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .orbits import check_map, orbits
from .traces import periodicity_batch

__all__ = [
    "LARGEST_COMPONENT",
    "LONGEST_CYCLE",
    "LONGEST_RHO",
    "LONGEST_TAIL",
    "NullRow",
    "RandomMappingStats",
    "compare_to_null",
    "indegree_shuffle",
    "mapping_statistics",
    "random_mapping",
    "random_mapping_expectations",
]

#: E[largest component] ~ LARGEST_COMPONENT * n; ``2 * int_0^inf (1 - exp(-E1(x)/2)) dx``.
LARGEST_COMPONENT = 0.7578230112689224
#: E[longest cycle] ~ LONGEST_CYCLE * sqrt(n); ``sqrt(pi/2) * int_0^inf (1 - exp(-E1(v))) dv``.
LONGEST_CYCLE = 0.7824816009916302
#: E[longest tail] ~ LONGEST_TAIL * sqrt(n); ``sqrt(2 pi) * ln 2``.
LONGEST_TAIL = 1.7374623212723181
#: E[longest rho path] ~ LONGEST_RHO * sqrt(n) (numerical constant of Flajolet & Odlyzko).
LONGEST_RHO = 2.4149

_EXACT = ("cycles", "cyclic_nodes", "terminal_nodes", "tail", "cycle_length", "rho")


@dataclass(frozen=True)
class RandomMappingStats:
    """Expected statistics of a uniform random mapping on ``n`` points, ``Q(n) = sum_k q_k``.

    Exact: ``cycles`` (= connected components) ``= sum_k q_k / k ~ (ln 2n + gamma) / 2``;
    ``cyclic_nodes = Q(n) ~ sqrt(pi n / 2)``; ``terminal_nodes`` (no preimage)
    ``= n (1 - 1/n)^n ~ n / e``; from a uniform start, ``rho = Q(n)`` (distinct
    points visited: ``P(rho >= k) = q_k``), and since given ``rho`` the cycle
    length is uniform on ``1..rho``, ``cycle_length = (Q(n) + 1) / 2`` and
    ``tail = (Q(n) - 1) / 2``, both ``~ sqrt(pi n / 8)``.

    Asymptotic (leading term only): ``largest_component``, ``longest_cycle``,
    ``longest_tail``, ``longest_rho`` from the module constants.
    """

    n: int
    cycles: float
    cyclic_nodes: float
    terminal_nodes: float
    tail: float
    cycle_length: float
    rho: float
    largest_component: float
    longest_cycle: float
    longest_tail: float
    longest_rho: float


@dataclass(frozen=True)
class NullRow:
    """One statistic of a map next to its null values.

    ``expected`` is the uniform random mapping's (``exact`` says whether it is
    the exact expectation or the leading asymptotic term); ``ratio`` is
    ``observed / expected``; ``shuffled_mean`` / ``shuffled_sd`` summarise the
    in-degree-preserving shuffles (NaN without shuffles).
    """

    observed: float
    expected: float
    ratio: float
    exact: bool
    shuffled_mean: float
    shuffled_sd: float


def random_mapping_expectations(n: int) -> RandomMappingStats:
    """Expectations for a uniform random mapping on ``n`` points (:class:`RandomMappingStats`).

    ``log q_k`` is a cumulative sum of ``log1p(-j/n)``, truncated where
    ``q_k < e^-72`` (``k > 12 sqrt(n)``): ``O(sqrt n)`` time.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    n = int(n)
    terms = min(n, 12 * math.isqrt(n) + 40)
    k = np.arange(1, terms + 1)
    q = np.exp(np.concatenate(([0.0], np.cumsum(np.log1p(-k[:-1] / n)))))
    big_q = float(q.sum())
    root = math.sqrt(n)
    return RandomMappingStats(
        n=n,
        cycles=float((q / k).sum()),
        cyclic_nodes=big_q,
        terminal_nodes=n * math.exp(n * math.log1p(-1.0 / n)) if n > 1 else 0.0,
        tail=(big_q - 1) / 2,
        cycle_length=(big_q + 1) / 2,
        rho=big_q,
        largest_component=LARGEST_COMPONENT * n,
        longest_cycle=LONGEST_CYCLE * root,
        longest_tail=LONGEST_TAIL * root,
        longest_rho=LONGEST_RHO * root,
    )


def random_mapping(n: int, seed: int | np.random.Generator | None = None) -> np.ndarray:
    """A uniform random map on ``n`` points: ``f[x]`` i.i.d. uniform on ``0..n-1``."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    return np.random.default_rng(seed).integers(0, int(n), size=int(n), dtype=np.int64)


def indegree_shuffle(
    f: Sequence[int] | np.ndarray, seed: int | np.random.Generator | None = None
) -> np.ndarray:
    """``f o sigma`` for a uniform random permutation ``sigma``.

    Every token keeps its in-degree (``|{x : f(sigma(x)) = y}| = |f^-1(y)|``)
    while the wiring of which token points where is randomised.
    """
    f = check_map(f)
    return f[np.random.default_rng(seed).permutation(f.size)]


def indegree_orbit_null(maps: np.ndarray, G: int, repeats: int, shuffles: int,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """The law of a trace's loop statistics when it is the orbit x, g(x), .. (G tokens) of
    g = f∘σ, σ a uniform permutation (`indegree_shuffle`: g has f's in-degrees, so the hub
    tokens stay hubs) and x uniform, estimated from `shuffles` draws per map f of `maps`
    [M, V]: {"cycle": P(minimal cycle length = c), "rho": P(onset + period = r)}, indexed
    0..G (0 unused), the orbits read as traces exactly as real ones (periodicity_batch with
    `repeats`); the missing mass is orbits not seen to loop — as `random_map_null`."""
    maps = np.atleast_2d(np.asarray(maps))
    rng = np.random.default_rng(seed)
    orbits_ = []
    for f in maps:
        f = check_map(f)
        for _ in range(shuffles):
            g = f[rng.permutation(f.size)]
            x = np.empty(G, np.int64)
            x[0] = rng.integers(f.size)
            for t in range(1, G):
                x[t] = g[x[t - 1]]
            orbits_.append(x)
    found = periodicity_batch(np.stack(orbits_), repeats)
    seen = found.shortest > 0
    n = len(orbits_)
    return {"cycle": np.bincount(found.shortest[seen], minlength=G + 1)[:G + 1] / n,
            "rho": np.bincount((found.onset + found.period)[seen], minlength=G + 1)[:G + 1] / n}


def mapping_statistics(f: Sequence[int] | np.ndarray) -> dict[str, float]:
    """The statistics of :class:`RandomMappingStats` measured on one map (means: uniform start)."""
    f = check_map(f)
    orb = orbits(f)
    terminal = float(f.size - np.unique(f).size)
    rho = orb.tail + orb.cycle_length
    return {
        "cycles": float(orb.n_cycles),
        "cyclic_nodes": float(orb.cycle_nodes.size),
        "terminal_nodes": terminal,
        "tail": float(orb.tail.mean()),
        "cycle_length": float(orb.cycle_length.mean()),
        "rho": float(rho.mean()),
        "largest_component": float(orb.basin_size.max()),
        "longest_cycle": float(orb.cycle_lengths.max()),
        "longest_tail": float(orb.tail.max()),
        "longest_rho": float(rho.max()),
    }


def compare_to_null(
    f: Sequence[int] | np.ndarray,
    shuffles: int = 0,
    seed: int | np.random.Generator | None = None,
) -> dict[str, NullRow]:
    """A map's statistics next to the random-mapping expectations and, optionally, shuffles.

    ``shuffles`` in-degree-preserving shuffles (:func:`indegree_shuffle`) give
    the null that keeps the map's in-degree sequence, e.g. its hub tokens.
    """
    f = check_map(f)
    if isinstance(shuffles, bool) or not isinstance(shuffles, int | np.integer) or shuffles < 0:
        raise ValueError(f"shuffles={shuffles!r} must be a non-negative integer")
    observed = mapping_statistics(f)
    expected = asdict(random_mapping_expectations(f.size))
    rng = np.random.default_rng(seed)
    samples = [mapping_statistics(indegree_shuffle(f, rng)) for _ in range(shuffles)]
    table = {}
    for name, obs in observed.items():
        values = np.array([s[name] for s in samples])
        table[name] = NullRow(
            observed=obs,
            expected=expected[name],
            ratio=obs / expected[name] if expected[name] else math.nan,
            exact=name in _EXACT,
            shuffled_mean=float(values.mean()) if shuffles else math.nan,
            shuffled_sd=float(values.std(ddof=1)) if shuffles > 1 else math.nan,
        )
    return table


def random_map_null(vocab_size: int, G: int, repeats: int) -> dict[str, np.ndarray]:
    """The exact law of a trace's loop statistics when it is the orbit x, f(x), .. (G tokens)
    of a uniform random map f on `vocab_size` tokens, from any fixed start x:
    {"cycle": P(minimal cycle length = c), "rho": P(onset + period = r)}, indexed 0..G (0
    unused); the missing mass is orbits not seen to loop (tail + repeats·cycle > G).

    Until the first repeat the orbit's tokens are i.i.d. uniform, so ρ (distinct tokens
    visited) has P(ρ >= r) = q_r = prod_{j<r} (1 − j/V), and given ρ = r the cycle length is
    uniform on 1..r: P(tail = t, cycle = c) = P(ρ = t + c)/(t + c). The tail's tokens are
    distinct and off the cycle, so the orbit, read as a trace, has minimal cycle length and
    period c and onset t, and loops (c repeated `repeats` times) iff t + repeats·c <= G."""
    r = np.arange(1, vocab_size + 1)
    q = np.concatenate([np.cumprod(1 - (r - 1) / vocab_size), [0.0]])  # q_1 .. q_{V+1}
    rho_law = (q[:-1] - q[1:]) / r  # P(ρ = r)/r = P(tail = r − c, cycle = c) for each c
    t, c = np.meshgrid(np.arange(G + 1), np.arange(G + 1), indexing="ij")
    rho = t + c
    seen = (c >= 1) & (t + repeats * c <= G) & (rho <= vocab_size)
    joint = np.where(seen, rho_law[np.minimum(rho, vocab_size) - 1], 0.0)
    return {"cycle": joint.sum(0), "rho": np.bincount(rho[seen], joint[seen], G + 1)}
