"""Fresh-process time of `load(preset)`, this tree against an earlier commit, in one run.

Each sample is a new Python process running `import dynsys as ds; ds.load(PRESET)` (what every
CLI call on a preset pays before its work), alternating the two sides so that a busy machine
slows both alike. The earlier side is the commit's `dynsys/` exported (git archive) into a
temporary directory and imported from there; both use this interpreter.

    .venv/bin/python experiments/bench_load.py                   # tiny, before: 06ecc48^
    .venv/bin/python experiments/bench_load.py --preset pythia-70m --repeats 5 --before HEAD~3
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMPILED_INIT = "06ecc48"  # the commit that made load's init one compiled program


def export(ref: str, directory: Path) -> None:
    """The package `dynsys/` as of `ref`, written under `directory`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "dynsys"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)


def seconds(directory: Path, preset: str) -> float:
    """Wall time of one fresh process loading `preset` with the dynsys found in `directory`."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import dynsys as ds; ds.load({preset!r})"],
                   cwd=directory, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--before", default=f"{COMPILED_INIT}^", help="git ref of the old side")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as old:
        export(args.before, Path(old))
        times: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.repeats):
            times["before"].append(seconds(Path(old), args.preset))
            times["after"].append(seconds(ROOT, args.preset))
    before, after = (statistics.median(times[side]) for side in ("before", "after"))
    for side, values in times.items():
        print(f"{side:>6}: median {statistics.median(values):6.2f} s  "
              f"({', '.join(f'{v:.2f}' for v in values)})")
    print(f"load({args.preset!r}) in a fresh process, {args.before} / this tree: "
          f"{before / after:.2f}x")


if __name__ == "__main__":
    main()
