"""E3 — attention dilution measured against its proved bound, against prompt length n.

    .venv/bin/python experiments/e3_dilution.py                    # small scale: minutes on 2 cores
    .venv/bin/python experiments/e3_dilution.py --scale paper      # the paper's scale (resumable)

Writes a run directory (default runs/e3-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run e3` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e3", *sys.argv[1:]])
