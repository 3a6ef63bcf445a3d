"""Table: agreement of real greedy generation with the Markov map, against n and G.

Units (RoPE on/off × repeated-3-gram/random prompts × n) are stored in --out as they finish;
a rerun resumes. The argument predicts agreement → 1 as n → ∞ at fixed G.

    .venv/bin/python experiments/table_agreement.py --small      # n ≤ 1024, minutes
    .venv/bin/python experiments/table_agreement.py              # n = 64 … 16,384
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from rich.console import Console
from rich.table import Table

import dynsys as ds
from dynsys.sweep import agreement_sweep, agreement_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--small", action="store_true")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/table_agreement"))
    args = ap.parse_args()
    lengths = (64, 256, 1024) if args.small else (64, 256, 1024, 4096, 16384)
    seeds = args.seeds or (4 if args.small else 16)
    G = 32 if args.small else 64
    results = agreement_sweep(ds.load(args.model), lengths=lengths, G=G, seeds=seeds,
                              out_dir=args.out / "units")
    rows = agreement_table(results, horizons=tuple(h for h in (8, 16, 32, 64) if h <= G))
    with open(args.out / "agreement.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = Table(title=f"agreement with f_P ({args.model}, {seeds} prompts per cell)")
    for col in ("rope", "prompt", "n", "G", "agreement ± se", "position-exact"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row("on" if r["rope"] else "off", r["kind"], str(r["n"]), str(r["G"]),
                      f"{r['agreement']:.3f} ± {r['stderr']:.3f}",
                      f"{r['agreement_position']:.3f}")
    Console().print(table)
    print(f"wrote {args.out / 'agreement.csv'}")


if __name__ == "__main__":
    main()
