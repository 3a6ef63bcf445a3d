"""E7 — loops through training: a llama-family model trained from scratch on offline text
(checkpoints at steps 0, 1, 2, 4, ..., then every K); at each checkpoint, greedy traces from
random 10-token prompts and repeated N-grams (minimal-cycle histograms at the end of the trace
and anywhere in it, loop share, mean cycle length) and the orbits of f_P against the
random-mapping null; held-out loss beside them.

    .venv/bin/python experiments/e7_training.py                 # small scale: minutes on 2 cores
    .venv/bin/python experiments/e7_training.py --scale paper   # ~13M parameters (resumable)

Writes a run directory (default runs/e7-SCALE) holding the corpus provenance, the tokenizer,
the training directory (train/, resumable) and the tables and figures. Options as for
`dynsys run e7`.
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e7", *sys.argv[1:]])
