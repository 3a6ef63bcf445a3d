"""The argument on trained models: E2, E3 and E5 on one architecture at five test beds,
random initialisation (initializer_range 0.02 and 0.1) and the trained model of E7 (early,
middle and final checkpoints), each with its attention concentration beside the verdicts.

    .venv/bin/python experiments/testbeds.py --training runs/paper-train --out runs/testbeds

--training is a training directory of dynsys.train (E7's: `dynsys run e7 --scale paper`
trains one under its run directory). The model was trained on windows of seq_len tokens and
knows no longer positions, so the studies' prompt lengths are cut to fit in seq_len (their
`lengths` and G below): n ≫ G holds less well than at the studies' own small scale, which
uses up to 1024 tokens on a random model. Each study runs in OUT/BED/STUDY (resumable);
OUT/summary.md collects every finding per test bed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from dynsys.config import from_hf_config
from dynsys.io import load, save_hf
from dynsys.nn import Model, init_params
from dynsys.studies import findings, run_study

STUDIES = {  # settings that fit in 256 positions
    "e2": {"lengths": [48, 96, 192], "G": 16, "prompts": 24},
    "e3": {"lengths": [48, 96, 192], "G": 8, "prompts": 8, "certified": 1},
    "e5": {"lengths": [64, 160], "G": 96, "prompts": 3},
}  # E6 (position drift: full maps at every offset) takes 20 min per test bed on 2 cores:
#    run it alone with `dynsys run e6 --set model=CHECKPOINT --set 'lengths=[96, 224]' ...`
TRAINED = {"early": 64, "middle": 400}  # checkpoint steps; "final" is the last one


def test_beds(training: Path, out: Path) -> dict[str, Path]:
    """{name: checkpoint directory}: random inits of the trained architecture (0.02 is the
    trained run's own step 0) and the trained checkpoints."""
    checkpoints = sorted((training / "checkpoints").iterdir())
    final = checkpoints[-1]
    cfg = from_hf_config(json.loads((final / "config.json").read_text()))
    beds = {"init-0.02": checkpoints[0]}
    wide = out / "models" / "init-0.1"
    if not wide.exists():
        wide_cfg = dataclasses.replace(cfg, initializer_range=0.1)
        save_hf(Model(wide_cfg, init_params(wide_cfg, 0)), wide)
    beds["init-0.1"] = wide
    for name, step in TRAINED.items():
        beds[f"trained-{name}"] = training / "checkpoints" / f"step_{step:07d}"
    beds["trained-final"] = final
    return beds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/testbeds"))
    args = parser.parse_args()
    beds = test_beds(args.training, args.out)
    lines = ["# The argument on trained models", ""]
    for bed, checkpoint in beds.items():
        load(checkpoint)  # a readable checkpoint, before any study starts
        lines += [f"## {bed} ({checkpoint})", "", "| study | claim | measured | verdict |",
                  "|---|---|---|---|"]
        for name, settings in STUDIES.items():
            path = args.out / bed / name
            print(f"{bed} {name}", flush=True)
            run_study(name, path, "small", {**settings, "model": str(checkpoint)})
            lines += [f"| {f.experiment} | {f.claim} | {f.measured} | "
                      f"{f.verdict if f.verdict is not None else '-'} |" for f in findings(path)]
        lines.append("")
        (args.out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
