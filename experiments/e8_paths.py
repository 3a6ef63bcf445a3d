"""E8 — under-trained paths: the final checkpoint of E7's training prompted with 100-token
segments of held-out English and of Chichewa (the low-resource language of the mixture);
minimal-cycle histograms per language, their total-variation distance to every checkpoint's
histogram, and the loss per byte of each language.

    .venv/bin/python experiments/e8_paths.py                    # small scale (after e7)
    .venv/bin/python experiments/e8_paths.py --scale paper      # reuses runs/e7-paper/train

Options as for `dynsys run e8` (--set training=DIR points at another training directory).
"""

import sys

from dynsys.cli import app

if __name__ == "__main__":
    app(["run", "e8", *sys.argv[1:]])
