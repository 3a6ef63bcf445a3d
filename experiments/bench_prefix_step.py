"""Benchmark: the shared-prefix step (docs/concepts.md) against this machine's matmul peak.

4096 rows, each one token after a shared 1000-token prefix, on the `tiny` preset; the
achieved GFLOP/s (model FLOPs: projections, attention over the prefix, MLP, LM head) is
compared with a jitted 2048×2048 float32 matmul timed in the same run. Target: ≥ 50%.
The two are timed in alternating rounds and the median of the rounds' ratios is reported, so
that a slow spell of a shared machine hits both sides of a ratio alike. Each round also
prints the step's floor on the roofline measured in that round (timing.Roofline: max(bytes ÷
streaming bandwidth, FLOPs ÷ matmul peak); bytes = all weights + the prefix's filled KV
(read once, shared) + each row's own one key) and the fraction of it achieved.

    .venv/bin/python experiments/bench_prefix_step.py [--rows 4096] [--prefix 1000] [--rounds 5]
    .venv/bin/python experiments/bench_prefix_step.py --quick   # 1024 rows, 2 rounds
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from timing import best_time, measure_roofline, step_cost

import dynsys as ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--prefix", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1024 rows, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.rows, args.rounds = 1024, 2

    model = ds.load(args.preset)
    cfg = model.config
    prompt = ds.prompts.random_tokens(cfg.vocab_size, args.prefix, seed=0)
    prefix = ds.prefill(model, prompt)
    tokens = (np.arange(args.rows) % cfg.vocab_size)[:, None].astype(np.int32)
    positions = np.full((args.rows, 1), args.prefix, np.int32)
    nbytes, flops = step_cost(cfg, args.rows, 1, shared=args.prefix)
    print(f"device: {jax.devices()[0].device_kind}, preset {args.preset}, {args.rows} rows "
          f"after a {args.prefix}-token prefix (capacity {prefix.capacity})")
    ratios = []
    for i in range(args.rounds):
        seconds = best_time(lambda: ds.step(model, prefix, tokens, positions)[0], 2)
        roof = measure_roofline(quick=True)
        achieved, peak = flops / seconds / 1e9, roof.gflops
        ratios.append(achieved / peak)
        floor = roof.floor(nbytes, flops)
        print(f"round {i + 1}: shared-prefix step {seconds * 1e3:.1f} ms, "
              f"{args.rows / seconds:,.0f} rows/s, {achieved:.1f} GFLOP/s | jitted 2048x2048 "
              f"matmul {peak:.1f} GFLOP/s | ratio {ratios[-1]:.2f} | floor {floor * 1e3:.1f} ms "
              f"({roof.bound(nbytes, flops)}-bound: {nbytes / 1e6:.1f} MB, "
              f"{flops / 1e9:.2f} GFLOP; stream {roof.gbps:.1f} GB/s), "
              f"{floor / seconds:.2f} of floor")
    print(f"ratio: {np.median(ratios):.2f} of matmul peak (median of {args.rounds} rounds, "
          f"range {min(ratios):.2f}-{max(ratios):.2f}; target >= 0.50)")


if __name__ == "__main__":
    main()
