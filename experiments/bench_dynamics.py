"""Benchmark: the model-free dynamics analysis (traces, orbits, kernels, null model).

Targets: batched periodicity of 10,000 traces x 1,000 tokens < 2 s; orbits of a
map on V = 262,144 tokens < 1 s; kernel analysis at V = 131,072 with 8 entries
a row in seconds; random-mapping expectations at n = 10^6 well under 1 s.

    .venv/bin/python experiments/bench_dynamics.py
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from dynsys.dynamics.kernels import (
    absorption_probabilities,
    absorption_times,
    kernel_classes,
    stationary_distributions,
)
from dynsys.dynamics.nullmodel import random_mapping, random_mapping_expectations
from dynsys.dynamics.orbits import orbits
from dynsys.dynamics.traces import periodicity_batch


def best_time(fn, repeats: int = 3) -> float:
    """Minimum wall time of fn() over `repeats` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name: str, seconds: float, target: float | None = None) -> None:
    verdict = (
        ""
        if target is None
        else f"  (target < {target:g} s: {'ok' if seconds < target else 'MISSED'})"
    )
    print(f"{name:<62s} {seconds:8.4f} s{verdict}")


def looping_traces(b: int, n: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """Half random, half a random prefix falling into a loop of period 1..64 at a random onset."""
    x = rng.integers(0, vocab, (b, n))
    for i in range(0, b, 2):
        period = int(rng.integers(1, 65))
        onset = int(rng.integers(0, n - 3 * period))
        x[i, onset:] = np.resize(rng.integers(0, vocab, period), n - onset)
    return x


def random_kernel(v: int, k: int, rng: np.random.Generator) -> sp.csr_array:
    """k random successors a row with random weights (an expander: one big closed class)."""
    w = rng.random((v, k))
    w /= w.sum(axis=1, keepdims=True)
    cols = rng.integers(0, v, (v, k))
    return sp.csr_array((w.ravel(), cols.ravel(), np.arange(0, v * k + 1, k)), shape=(v, v))


def near_greedy_kernel(v: int, rng: np.random.Generator) -> sp.csr_array:
    """A top-p-like kernel: a random map plus, on a third of the rows, a second token (p = 0.1)."""
    f, g = random_mapping(v, rng), random_mapping(v, rng)
    second = rng.random(v) < 1 / 3
    rows = np.r_[np.arange(v), np.flatnonzero(second)]
    cols = np.r_[f, g[second]]
    vals = np.r_[np.where(second, 0.9, 1.0), np.full(second.sum(), 0.1)]
    return sp.csr_array((vals, (rows, cols)), shape=(v, v))


def bench_kernel(label: str, P: sp.csr_array) -> None:
    start = time.perf_counter()
    cls = kernel_classes(P)
    t_classes = time.perf_counter() - start
    pi = stationary_distributions(P, cls)
    t_pi = time.perf_counter() - start - t_classes
    times = absorption_times(P, cls)
    t_times = time.perf_counter() - start - t_classes - t_pi
    probs = absorption_probabilities(P, cls)
    total = time.perf_counter() - start
    residual = np.abs(P.T @ pi - pi).sum()
    print(
        f"  {label}: {cls.n_classes} classes, {cls.closed.sum()} closed "
        f"(periods {sorted(set(cls.period[cls.closed].tolist()))[:5]}), "
        f"{(~cls.recurrent).sum()} transient states, max absorption time {times.max():.3g}, "
        f"|pi P - pi|_1 = {residual:.1e}, absorption probabilities {probs.shape}"
    )
    report("    classes + periods", t_classes)
    report("    stationary distributions", t_pi)
    report("    absorption times", t_times)
    report(f"    kernel analysis, total ({label})", total, 60.0)


def main() -> None:
    rng = np.random.default_rng(0)

    traces = looping_traces(10_000, 1_000, 50_000, rng)
    seconds = best_time(lambda: periodicity_batch(traces))
    report("periodicity_batch 10,000 x 1,000 (half looping)", seconds, 2.0)
    small_alphabet = rng.integers(0, 2, (10_000, 1_000))
    report(
        "periodicity_batch 10,000 x 1,000 (binary alphabet)",
        best_time(lambda: periodicity_batch(small_alphabet)),
        2.0,
    )
    constant = np.zeros((10_000, 1_000), np.int64)
    report(
        "periodicity_batch 10,000 x 1,000 (constant traces)",
        best_time(lambda: periodicity_batch(constant)),
        2.0,
    )

    v = 262_144
    for name, f in (
        ("random map", random_mapping(v, rng)),
        ("random permutation", rng.permutation(v)),
    ):
        report(f"orbits V = 262,144 ({name})", best_time(lambda f=f: orbits(f)), 1.0)

    v = 131_072
    print(f"kernels at V = {v:,}:")
    bench_kernel("8 entries a row", random_kernel(v, 8, rng))
    bench_kernel("near-greedy, 1-2 entries a row", near_greedy_kernel(v, rng))

    report(
        "random_mapping_expectations n = 10^6",
        best_time(lambda: random_mapping_expectations(10**6)),
        1.0,
    )


if __name__ == "__main__":
    main()
