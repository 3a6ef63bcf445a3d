"""The figure style: proportions with exact intervals, plain log ticks, one colour convention."""

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from scipy import stats

from dynsys import figstyle


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact interval from its beta-quantile form (Clopper & Pearson 1934), written out
    independently of dynsys.stats."""
    alpha = 1 - level
    lo = 0.0 if k == 0 else stats.beta.ppf(alpha / 2, k, n - k + 1)
    hi = 1.0 if k == n else stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
    return lo, hi


@pytest.mark.parametrize("show_n", [True, False])
def test_proportions_draw_each_share_with_its_exact_interval_and_n(show_n):
    k, n = np.array([0, 3, 17, 32]), np.array([32, 10, 20, 32])
    with figstyle.style():
        fig, axes = figstyle.figure()
        ax = axes[0][0]
        bars = figstyle.proportions(ax, [1, 2, 3, 4], k, n, "#009E73", "x", show_n=show_n)
        points = bars.lines[0].get_ydata()
        np.testing.assert_allclose(points, k / n)
        segments = bars.lines[2][0].get_segments()
        for (kk, nn), segment in zip(zip(k, n), segments):
            np.testing.assert_allclose(sorted(segment[:, 1]), clopper_pearson(kk, nn),
                                       atol=1e-9)
        texts = [t.get_text() for t in ax.texts]
        assert texts == ([str(c) for c in n] if show_n else [])
        plt.close(fig)


def test_n_text():
    assert figstyle.n_text([32, 32]) == "n = 32"
    assert figstyle.n_text([30, 32, 31]) == "n = 30–32"


def test_plain_log_ticks_print_numbers_not_powers():
    with figstyle.style():
        fig, axes = figstyle.figure()
        ax = axes[0][0]
        ax.plot([1, 2], [0.004, 0.04])
        ax.set_yscale("log")
        figstyle.plain_log_ticks(ax.yaxis)
        fig.canvas.draw()
        labels = {t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)}
        plt.close(fig)
    assert {"0.01", "0.005", "0.02"} <= labels
    assert not any("10^" in label or "times" in label for label in labels)


def test_the_rope_pair_means_rope_only():
    """Blue and vermilion are RoPE on/off; nothing else can take them: not OTHERS, not the
    default colour cycle, and no study E1–E9 reaches into PALETTE for a series colour."""
    rope = set(figstyle.ROPE_COLOURS.values())
    assert not rope & set(figstyle.OTHERS)
    assert not rope & set(figstyle.STYLE["axes.prop_cycle"].by_key()["color"])
    studies = Path(figstyle.__file__).parent / "studies"
    sources = [*studies.glob("e[1-9]_*.py"), *studies.glob("e[1-9]_*/*.py")]
    assert len(sources) >= 9
    reaching = [p.name for p in sources if re.search(r"figstyle\.PALETTE\b", p.read_text())]
    assert not reaching, reaching
