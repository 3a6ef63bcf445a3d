"""The CSV training log: one row per step (step 0: the held-out loss at initialisation).

Columns: step, tokens (seen so far), lr (of the step's update), loss (training loss of the
step's batch, before the update), grad_norm (before clipping), heldout_loss (after the update;
empty where not evaluated), wall_time (training seconds so far, summed over sessions).
"""

from __future__ import annotations

import csv
from pathlib import Path

from dynsys.runs import atomic_path

COLUMNS = ("step", "tokens", "lr", "loss", "grad_norm", "heldout_loss", "wall_time")


def resume_log(path: str | Path, rows: int) -> None:
    """Keep the rows of steps 0..rows−1 (written before the state the run resumes from) and
    drop the rest, which the resumed run writes again; the file is replaced atomically."""
    path = Path(path)
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            for i, row in enumerate(csv.reader(f)):
                # a row of another step ends what is kept (e.g. a line cut short by a kill)
                if i > rows or (i > 0 and row[:1] != [str(i - 1)]) or len(row) != len(COLUMNS):
                    break
                kept.append(row)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(kept[1:])


def append_row(path: str | Path, row: dict) -> None:
    """Append one row (a dict over COLUMNS; None is written as an empty field)."""
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow(["" if row[c] is None else row[c] for c in COLUMNS])


def read_log(path: str | Path) -> list[dict]:
    """The rows of a training log: step and tokens as ints, the rest floats, None if empty."""
    with open(path, newline="") as f:
        return [{c: None if row[c] == "" else (int if c in ("step", "tokens") else float)(row[c])
                 for c in COLUMNS} for row in csv.DictReader(f)]
