"""E4 — orbit structure of f_P (cycles, cyclic points, largest basin) against the
random-mapping null.

    .venv/bin/python experiments/e4_orbits.py                    # small scale: minutes on 2 cores
    .venv/bin/python experiments/e4_orbits.py --scale paper      # the paper's scale (resumable)

Writes a run directory (default runs/e4-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run e4` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e4", *sys.argv[1:]])
