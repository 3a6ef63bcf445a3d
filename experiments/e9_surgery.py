"""E9 — loop surgery: on the final checkpoint of the model E7 trains, greedy traces of held-out
text, list (enumeration) and random prompts; an ablation sweep and a neuron attribution on a
localisation half; weight edits of the top-k neurons and the loop breakers DRY, repetition
penalty and no-repeat-n-gram, each judged on the test half (loop and collapse rates, held-out
loss, the attractors of f_P).

    .venv/bin/python experiments/e9_surgery.py                 # small scale: minutes on 2 cores
    .venv/bin/python experiments/e9_surgery.py --scale paper   # on ../e7-paper/train (resumable)

Writes a run directory (default runs/e9-SCALE) holding the tables and figures. Options as for
`dynsys run e9`.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e9", *sys.argv[1:]])
