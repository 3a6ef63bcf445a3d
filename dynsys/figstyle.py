"""The paper's figure style: column widths, fonts, a colour-blind-safe palette, PDF + PNG.

Every figure is drawn, inside `style()`, from a run directory's stored tables and units
(never recomputed) with `figure(...)` and written with `save(...)`, atomically, as vector PDF
and 200-dpi PNG.

One colour convention in every figure: blue and vermilion mean RoPE on and off and nothing
else (ROPE_COLOURS); every other comparison (two languages, two readings, several N, models,
operations) takes OTHERS in order, so no other pair can be read as RoPE on/off. A proportion
k/n is drawn as a point with its exact (Clopper–Pearson) 95% interval and its n
(`proportions`); a logarithmic axis is labelled in plain numbers (`plain_log_ticks`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker

from dynsys.runs import atomic_path
from dynsys.stats.intervals import proportion_interval

COLUMN = 3.4  # inches: one column of a two-column paper
FULL = 7.0  # inches: the full text width
# Okabe & Ito (2008), distinguishable under the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
           "#000000")
ROPE_COLOURS = {True: PALETTE[0], False: PALETTE[1]}  # RoPE on / off, the same in every figure
# Every line or point series that is not RoPE on/off, in this order: bluish green, reddish
# purple, orange, sky blue, black (yellow is too pale for a line on white).
OTHERS = (PALETTE[2], PALETTE[3], PALETTE[4], PALETTE[5], PALETTE[7])
FILLS = (*OTHERS, PALETTE[6])  # areas (bars, segments), where yellow reads too


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
    "axes.prop_cycle": matplotlib.cycler(color=OTHERS),
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


def proportions(ax, x, k, n, colour, label: str | None = None, marker: str = "o",
                show_n: bool = True, **style):
    """Points k/n at x with their exact (Clopper–Pearson) 95% intervals as error bars, and,
    with show_n, each point's n printed under it; k, n are counts ([P] each, n >= 1)."""
    k, n = np.asarray(k, int), np.asarray(n, int)
    share = k / n
    lo, hi = np.array([proportion_interval(a, b) for a, b in zip(k, n)]).T
    bars = ax.errorbar(x, share, [share - lo, hi - share], color=colour, marker=marker,
                       linestyle="none", capsize=1.5, elinewidth=0.8, label=label, **style)
    if show_n:
        for xi, low, count in zip(np.asarray(x, float), lo, n):
            ax.annotate(f"{count}", (xi, low), xytext=(0, -2), textcoords="offset points",
                        ha="center", va="top", fontsize=5, color=colour)
    return bars


def n_text(counts) -> str:
    """'n = 32' when every count is 32, else 'n = 30–32': the sample size of a panel's points."""
    counts = sorted({int(c) for c in counts})
    return f"n = {counts[0]}" if len(counts) == 1 else f"n = {counts[0]}–{counts[-1]}"


def plain_log_ticks(axis) -> None:
    """Label a logarithmic axis (ax.xaxis or ax.yaxis) in plain numbers, 0.004 or 20 rather
    than 4 × 10^-3, with minor ticks at 2 and 5 per decade, labelled too when the axis spans
    three decades at most."""
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_locator(ticker.LogLocator(subs=(2, 5)))
    low, high = axis.get_view_interval()
    axis.set_minor_formatter(plain if high / max(low, 1e-300) < 1000 else ticker.NullFormatter())


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
