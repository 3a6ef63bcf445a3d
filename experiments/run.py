"""One entry for the paper's experiments E1–E9 (dynsys.studies): `dynsys run` by another name.

    .venv/bin/python experiments/run.py e3                 # small scale: minutes on 2 cores
    .venv/bin/python experiments/run.py e3 --scale paper   # the paper's scale (resumable)
    .venv/bin/python experiments/run.py --help             # the experiments and options

Each writes a run directory (default runs/eN-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
E7 trains its model (checkpoints at steps 0, 1, 2, 4, ..., resumable in RUN_DIR/train); E8
and E9 work on E7's training of the same scale (../e7/train, ../e7-paper/train: run e7 first
or let them train it), `--set training=DIR` names another.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", *sys.argv[1:]])
