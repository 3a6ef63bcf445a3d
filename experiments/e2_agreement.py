"""E2 — agreement of real greedy generation with the Markov map f_P against prompt length n
and generation length G.

    .venv/bin/python experiments/e2_agreement.py                    # small scale: minutes on 2 cores
    .venv/bin/python experiments/e2_agreement.py --scale paper      # the paper's scale (resumable)

Writes a run directory (default runs/e2-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run e2` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e2", *sys.argv[1:]])
