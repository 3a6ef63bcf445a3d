"""How tight the margin certificate is (issue 29): per block and per step, its bound over the
measured value, on a preset at random initialisation (E3's prompts and greedy traces).

Per n: the bound δ_l ≥ ‖x_l − x′_l‖ leaving block l over the measured change (the probe's),
at the last step and its median over the steps r ≥ 1; per step, the bound on |Δ(ℓ_top − ℓ_v)|
over the measured change, max over the NEAR tokens of smallest reference margin (E3's
`margin_ratio` column is their median over r ≥ 1); the certified horizon (rigorous), the
estimate's and the measured agreement, and the seconds the bound took. An earlier version of
the certificate is measured by running this script from a worktree of that commit.

    nice -n 15 .venv/bin/python experiments/certificate_ratios.py [--lengths 1024 4096] [--G 8]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from dynsys.data import prompts
from dynsys.decode import generate, prefill
from dynsys.io import load
from dynsys.nn.cache import bucket
from dynsys.theory import markov_stats, weight_constants
from dynsys.theory.dilution import probe_trace
from dynsys.theory.margin import margin_bound, margin_change


def ratios(model, weights, n: int, G: int, k: int) -> dict:
    """One prompt: the ratios above and the horizons."""
    prompt = prompts.random_tokens(model.config.vocab_size, n, seed=1000 * n + k)  # E3's
    prefix = prefill(model, prompt, bucket(n + G))
    trace = np.asarray(generate(model, prompt[None], G).tokens)[0]
    probe = probe_trace(model, prompt, trace, prefix)
    stats = markov_stats(model, prompt, trace, prefix)
    start = time.perf_counter()
    mb = margin_bound(weights, stats)
    seconds = time.perf_counter() - start
    change = margin_change(model, prompt, trace, prefix)
    rows = np.arange(G)[:, None]
    violations = int((np.abs(change - mb.centre) > mb.radius).sum())
    block = mb.residual[1:] / probe.residual[1:]  # r ≥ 1: at r = 0 both are rounding
    margin = mb.change[rows, mb.near].max(1)[1:] / np.abs(change[rows, mb.near]).max(1)[1:]
    return dict(block_last=block[-1], block_median=np.median(block, 0), margin=margin,
                horizon=mb.horizon, estimated=mb.estimated_horizon, agreement=probe.agreement,
                violations=violations, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024])
    parser.add_argument("--G", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=1)
    args = parser.parse_args()
    model = load(args.model, seed=args.seed)
    weights = weight_constants(model)

    def fmt(x) -> str:
        return " ".join(f"{v:.3g}" for v in np.asarray(x).ravel())

    for n in args.lengths:
        for k in range(args.prompts):
            r = ratios(model, weights, n, args.G, k)
            print(f"n={n} prompt {k} G={args.G}: certified {r['horizon']} / estimate "
                  f"{r['estimated']} / measured {r['agreement']}; violations {r['violations']};"
                  f" bound {r['seconds']:.1f} s")
            print(f"  block bound/measured, last step:        {fmt(r['block_last'])}")
            print(f"  block bound/measured, median r >= 1:    {fmt(r['block_median'])}")
            print(f"  margin bound/measured, steps 2..{args.G}: {fmt(r['margin'])}"
                  f"  (median {np.median(r['margin']):.3g})")


if __name__ == "__main__":
    main()
