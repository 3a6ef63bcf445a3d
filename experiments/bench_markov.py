"""Benchmark: the full Markov map against the naive per-token forward and the matmul peak.

For each model: the map f_P over all of V after a prompt of n tokens (vocabulary tokens per
second, GFLOP/s as a fraction of the same run's jitted 2048×2048 matmul, target ≥ 50%),
and the speed-up over the naive method, one full forward of P + [v] per v (target ≥ n×),
next to the FLOP ratio of the two methods: the speed-up they would show at equal efficiency.
The naive forward costs Σ_{i≤n+1} (a token attending to i keys) and the map's row one token
attending to n+1 keys, so the FLOP ratio is below n+1 whenever attention is not negligible.
For llama-3.2-1b (V = 128,256) one chunk is timed and the whole map extrapolated
(target < 45 min).

    .venv/bin/python experiments/bench_markov.py [--cases tiny pythia-160m llama-3.2-1b]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from timing import best_time, matmul_gflops, step_flops

import dynsys as ds
from dynsys.dynamics.markov import markov_map

CASES = {  # name: (preset, prompt length n, rows timed (None: all of V), chunk)
    "tiny": ("tiny", 1000, None, 4096),
    "pythia-160m": ("pythia-160m", 1000, None, 1024),
    "llama-3.2-1b": ("llama-3.2-1b", 1000, 512, 256),
}


def naive_seconds_per_token(model: ds.Model, prompt: np.ndarray, samples: int = 3) -> float:
    """One full forward of P + [v] (no cache reuse), best of `samples`."""
    row = np.concatenate([prompt, [0]])[None]
    return best_time(lambda: ds.forward(model, row), samples)


def run_case(preset: str, n: int, rows: int | None, chunk: int, peak: float) -> None:
    model = ds.load(preset, seed=0)
    V = model.config.vocab_size
    prompt = ds.prompts.random_tokens(V, n, seed=0)
    prefix = ds.prefill(model, prompt)
    tokens = np.arange(V if rows is None else rows, dtype=np.int32)
    run = lambda rows: markov_map(model, prompt, rows, prefix=prefix,  # noqa: E731
                                  chunk=chunk, progress=False).next
    run(tokens[:chunk])  # compile (every chunk has this shape)
    start = time.perf_counter()
    run(tokens)
    seconds = time.perf_counter() - start
    per_token = seconds / tokens.size
    gflops = step_flops(model.config, tokens.size, n + 1) / seconds / 1e9
    naive = naive_seconds_per_token(model, prompt)
    flop_ratio = sum(step_flops(model.config, 1, i) for i in range(1, n + 2)) / step_flops(
        model.config, 1, n + 1)
    whole = per_token * V
    print(f"{preset:13s} n={n} V={V}: {tokens.size / seconds:9.1f} tokens/s "
          f"({'whole map' if rows is None else f'{rows} rows timed'}: "
          f"{seconds:.2f} s; whole map {whole / 60:.1f} min) | {gflops:6.1f} GFLOP/s = "
          f"{gflops / peak:.2f} of matmul peak | naive forward {naive * 1e3:.1f} ms/token -> "
          f"speed-up {naive / per_token:,.0f}x (target >= n = {n}; FLOP ratio {flop_ratio:,.0f}x)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    peak = matmul_gflops()
    print(f"device: {jax.devices()[0].device_kind}; jitted 2048x2048 matmul {peak:.1f} GFLOP/s")
    for name in args.cases:
        run_case(*CASES[name], peak)


if __name__ == "__main__":
    main()
