"""E6 — RoPE position drift: f_{P,τ} against the offset τ for prompts of period N.

    .venv/bin/python experiments/e6_drift.py                    # small scale: minutes on 2 cores
    .venv/bin/python experiments/e6_drift.py --scale paper      # the paper's scale (resumable)

Writes a run directory (default runs/e6-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run e6` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e6", *sys.argv[1:]])
