"""Tests for paired binary outcomes (the same prompts under two conditions)."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats

from dynsys.stats.intervals import proportion_interval
from dynsys.stats.verdict import FAILS, HOLDS, INCONCLUSIVE, Verdict


def _pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"paired outcomes need two equal non-empty 1-D arrays, got shapes "
                         f"{x.shape} and {y.shape}")
    return x, y


def mcnemar(x, y) -> float:
    """Exact McNemar p-value (two-sided) of paired binary outcomes x, y: the discordant pairs
    b = #(x and not y), c = #(y and not x) are Binomial(b + c, 1/2) under no difference."""
    x, y = _pairs(x, y)
    b, c = int((x & ~y).sum()), int((~x & y).sum())
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


@dataclasses.dataclass(frozen=True)
class Equivalence:
    """Paired difference of proportions d = mean(x) − mean(y), its (1 − 2α) interval
    (the two one-sided tests at level α), the margin, and the verdict of |d| < margin."""

    difference: float
    interval: tuple[float, float]
    margin: float
    n: int
    verdict: Verdict


def paired_equivalence(x, y, margin: float, alpha: float = 0.05) -> Equivalence:
    """TOST for paired proportions: equivalent (holds) when the (1 − 2α) Wald interval of the
    paired difference lies inside (−margin, margin); different (fails) when it lies wholly
    outside; inconclusive otherwise. The interval's variance is that of the paired
    differences, (b + c)/n − d², with a continuity floor of 1/n² so that it never vanishes."""
    x, y = _pairs(x, y)
    if not 0 < margin < 1:
        raise ValueError(f"margin={margin} must lie in (0, 1)")
    n = x.size
    diff = x.astype(float) - y.astype(float)
    d = float(diff.mean())
    var = max(float(diff.var()), 1.0 / n**2) / n
    z = stats.norm.ppf(1 - alpha)
    lo, hi = d - z * np.sqrt(var), d + z * np.sqrt(var)
    if -margin < lo and hi < margin:
        verdict = HOLDS
    elif hi <= -margin or lo >= margin:
        verdict = FAILS
    else:
        verdict = INCONCLUSIVE
    return Equivalence(d, (float(lo), float(hi)), margin, n, verdict)


def paired_difference(x, y, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """d = mean(x) − mean(y) of paired binary outcomes (one prompt at two checkpoints) and an
    exact conditional interval of it: given the m discordant pairs, b = #(x and not y) is
    Binomial(m, π) and d = (2π − 1)·m/n, so the Clopper–Pearson interval of π gives one of d
    (no discordant pair: [0, 0]). Under the null of no change π = 1/2, d = 0 (exact McNemar)."""
    x, y = np.asarray(x, bool), np.asarray(y, bool)
    n, b, c = x.size, int((x & ~y).sum()), int((~x & y).sum())
    if b + c == 0:
        return 0.0, (0.0, 0.0)
    lo, hi = proportion_interval(b, b + c, level)
    return (b - c) / n, ((2 * lo - 1) * (b + c) / n, (2 * hi - 1) * (b + c) / n)
