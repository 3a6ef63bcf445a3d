"""E5 — terminal cycles of real traces against the periodic orbits of f_P (onset vs tail,
period vs cycle length).

    .venv/bin/python experiments/e5_cycles.py                    # small scale: minutes on 2 cores
    .venv/bin/python experiments/e5_cycles.py --scale paper      # the paper's scale (resumable)

Writes a run directory (default runs/e5-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run e5` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e5", *sys.argv[1:]])
