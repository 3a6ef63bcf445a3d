"""The paper's figure style: column widths, fonts, a colour-blind-safe palette, PDF + PNG.

Every figure is drawn, inside `style()`, from a run directory's stored tables and units
(never recomputed) with `figure(...)` and written with `save(...)`, atomically, as vector PDF
and 200-dpi PNG.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from dynsys.runs import atomic_path

COLUMN = 3.4  # inches: one column of a two-column paper
FULL = 7.0  # inches: the full text width
# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000")
ROPE_COLOURS = {True: PALETTE[0], False: PALETTE[1]}  # RoPE on / off, the same in every figure


def rope_label(rope: bool) -> str:
    return f"RoPE {'on' if rope else 'off'}"

STYLE = {
    "font.family": "serif",
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


def style():
    """A context in which matplotlib uses the paper style."""
    return plt.rc_context(STYLE)


def figure(ncols: int = 1, nrows: int = 1, width: float = COLUMN, aspect: float = 0.75,
           **subplots):
    """A styled figure of `width` inches; each panel is aspect × as tall as it is wide."""
    panel = width / ncols
    return plt.subplots(nrows, ncols, figsize=(width, panel * aspect * nrows), squeeze=False,
                        layout="constrained", **subplots)


def save(fig, directory: Path, name: str) -> list[Path]:
    """Write `name`.pdf and `name`.png into `directory`, each atomically (a temporary file
    renamed; removed if writing fails), and close the figure, also when writing fails."""
    directory = Path(directory)
    paths = [directory / f"{name}.pdf", directory / f"{name}.png"]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for path, dpi in zip(paths, (None, 200)):  # None: savefig.dpi, as by default
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return paths
