"""Benchmark: the full Markov map against the naive per-token forward and the matmul peak.

For each model: the map f_P over all of V after a prompt of n tokens (vocabulary tokens per
second, GFLOP/s as a fraction of the same run's jitted 2048×2048 matmul, target ≥ 50%),
and the speed-up over the naive method, one full forward of P + [v] per v (target ≥ n×),
next to the FLOP ratio of the two methods: the speed-up they would show at equal efficiency.
The naive forward costs Σ_{i≤n+1} (a token attending to i keys) and the map's row one token
attending to n+1 keys, so the FLOP ratio is below n+1 whenever attention is not negligible.
For llama-3.2-1b (V = 128,256) one chunk is timed and the whole map extrapolated
(target < 45 min). Each case also prints its floor on the roofline measured in the same run
(timing.Roofline): every chunk is one shared-prefix step, max(bytes ÷ streaming bandwidth,
FLOPs ÷ matmul peak), bytes = all weights + the prefix's filled KV (n keys, read once per
chunk, shared) + each row's own key; and the fraction of it achieved (floor / measured).

    .venv/bin/python experiments/bench_markov.py [--cases tiny pythia-160m llama-3.2-1b]
    .venv/bin/python experiments/bench_markov.py --quick   # tiny: n = 200, all 512 rows
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from timing import Roofline, best_time, measure_roofline, step_cost, step_flops

import dynsys as ds
from dynsys.dynamics.markov import markov_map

CASES = {  # name: (preset, prompt length n, rows timed (None: all of V), chunk)
    "tiny": ("tiny", 1000, None, 4096),
    "pythia-160m": ("pythia-160m", 1000, None, 1024),
    "llama-3.2-1b": ("llama-3.2-1b", 1000, 512, 256),
}
QUICK = {"tiny": ("tiny", 200, None, 256)}  # the whole map of V = 512, 2 chunks


def naive_seconds_per_token(model: ds.Model, prompt: np.ndarray, samples: int = 3) -> float:
    """One full forward of P + [v] (no cache reuse), best of `samples`."""
    row = np.concatenate([prompt, [0]])[None]
    return best_time(lambda: ds.forward(model, row), samples)


def run_case(preset: str, n: int, rows: int | None, chunk: int, roof: Roofline) -> None:
    peak = roof.gflops
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
    chunks = [min(chunk, tokens.size - i) for i in range(0, tokens.size, chunk)]
    floor = sum(roof.floor(*step_cost(model.config, c, 1, shared=n)) for c in chunks)
    chunk_bytes, chunk_flops = step_cost(model.config, chunk, 1, shared=n)
    print(f"{preset:13s} n={n} V={V}: {tokens.size / seconds:9.1f} tokens/s "
          f"({'whole map' if rows is None else f'{rows} rows timed'}: "
          f"{seconds:.2f} s; whole map {whole / 60:.1f} min) | {gflops:6.1f} GFLOP/s = "
          f"{gflops / peak:.2f} of matmul peak | naive forward {naive * 1e3:.1f} ms/token -> "
          f"speed-up {naive / per_token:,.0f}x (target >= n = {n}; FLOP ratio {flop_ratio:,.0f}x)"
          f" | floor {floor:.2f} s ({roof.bound(chunk_bytes, chunk_flops)}-bound: "
          f"{chunk_bytes / 1e6:.1f} MB and {chunk_flops / 1e9:.2f} GFLOP per {chunk}-row chunk), "
          f"{floor / seconds:.2f} of floor")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=None, choices=list(CASES))
    ap.add_argument("--quick", action="store_true", help="tiny only, n = 200, chunks of 256")
    args = ap.parse_args()
    table = QUICK if args.quick else CASES
    print(f"device: {jax.devices()[0].device_kind}")
    for name in args.cases or list(table):
        roof = measure_roofline(args.quick)  # just before the case: the machine drifts
        print(roof)
        run_case(*table.get(name, CASES[name]), roof)


if __name__ == "__main__":
    main()
