"""E1 — the untrained-model experiment: minimal cycle lengths, share of looping traces and
attractor tokens of greedy traces from repeated-N-gram prompts, RoPE on and off.

    .venv/bin/python experiments/e1_loops.py                    # small scale: minutes on 2 cores
    .venv/bin/python experiments/e1_loops.py --scale paper      # the paper's scale (resumable)

Writes a run directory (default runs/e1-SCALE) with config, provenance, tables, arrays and
the figures; a killed run resumes. Options as for `dynsys run e1` (--out, --set key=value,
--config settings.toml); `dynsys figures RUN_DIR` redraws the figures from the stored results.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e1", *sys.argv[1:]])
