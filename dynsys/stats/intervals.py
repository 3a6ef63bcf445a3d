"""Confidence intervals: exact for proportions, bootstrap for other statistics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats


def proportion_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact binomial) interval of a proportion k/n: coverage >= level for
    every true proportion."""
    if not 0 <= k <= n or n < 1:
        raise ValueError(f"k={k}, n={n} must satisfy 0 <= k <= n and n >= 1")
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def bootstrap_interval(samples, statistic: Callable[..., float], level: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(samples) (samples resampled with
    replacement along axis 0; a tuple of arrays is resampled together, as pairs)."""
    data = samples if isinstance(samples, tuple) else (np.asarray(samples),)
    if len(data[0]) < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {len(data[0])}")
    res = stats.bootstrap(data, statistic, paired=len(data) > 1, vectorized=False,
                          confidence_level=level, n_resamples=resamples, method="percentile",
                          random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
