"""The verdict of a claim tested against a threshold fixed before the run.

A claim says that a statistic lies above (or below) a threshold. With a confidence interval
[lo, hi] of the statistic at level 1 − α, the verdict is
    holds         the whole interval is on the claimed side of the threshold,
    fails         the whole interval is on the other side (or on the threshold),
    inconclusive  the interval spans the threshold: the sample cannot tell.
An equivalence claim (side "inside": |statistic| < margin) holds when its two one-sided tests
reject and fails when its interval lies wholly outside (dynsys.stats.paired_equivalence).

Each test also carries the p-value dual to its interval: the smallest α at which the
(1 − α) interval excludes the threshold, so p ≤ α exactly when the verdict is decided (holds
or fails). That p-value is what a multiplicity correction adjusts
(dynsys.stats.multiplicity). A claim whose premise failed is "not testable here".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Literal

import numpy as np

from dynsys.stats.intervals import (
    jackknife_interval,
    jackknife_se,
    percentile_interval,
    proportion_interval,
)

HOLDS, FAILS, INCONCLUSIVE, NOT_TESTABLE = "holds", "fails", "inconclusive", "not testable here"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_TESTABLE)
Verdict = Literal["holds", "fails", "inconclusive", "not testable here"]
Side = Literal["above", "below", "inside"]
LEVEL = 0.95  # the level of every claim's interval unless its study says otherwise


def decide(interval: tuple[float, float], threshold: float,
           side: Literal["above", "below"] = "above") -> Verdict:
    """The verdict of "the statistic is `side` `threshold`" given its interval (lo, hi)."""
    lo, hi = interval
    if not lo <= hi:
        raise ValueError(f"interval ({lo}, {hi}) must have lo <= hi")
    if side == "above":
        return HOLDS if lo > threshold else FAILS if hi <= threshold else INCONCLUSIVE
    if side == "below":
        return HOLDS if hi < threshold else FAILS if lo >= threshold else INCONCLUSIVE
    raise ValueError(f"side={side!r} must be 'above' or 'below'")


def p_value(interval_at: Callable[[float], tuple[float, float]], threshold: float,
            steps: int = 40) -> float:
    """The smallest α for which interval_at(1 − α) excludes `threshold` (bisection over α;
    the intervals must be nested in the level, as every interval here is): the two-sided
    p-value of "statistic = threshold" of the test the interval inverts."""
    def excludes(alpha: float) -> bool:
        lo, hi = interval_at(1 - alpha)
        return not lo <= threshold <= hi
    lo, hi = 0.0, 1.0
    if not excludes(1 - 1e-9):
        return 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if excludes(mid) else (mid, hi)
    return hi


@dataclasses.dataclass(frozen=True)
class Evidence:
    """A claim tested on data: the statistic's estimate, its interval at `level`, the sample
    size n, the threshold and the claimed side, the p-value of the decision (see the module
    docstring) and the raw verdict."""

    estimate: float
    interval: tuple[float, float]
    n: int
    threshold: float
    side: Side
    p: float
    verdict: Verdict
    level: float = LEVEL


def interval_test(estimate: float, interval_at: Callable[[float], tuple[float, float]], n: int,
                  threshold: float, side: Literal["above", "below"],
                  level: float = LEVEL) -> Evidence:
    """The Evidence of "the statistic is `side` `threshold`" from a family of intervals
    interval_at(level) (nested in the level): its verdict at `level` and its dual p-value."""
    interval = tuple(float(v) for v in interval_at(level))
    return Evidence(float(estimate), interval, int(n), float(threshold), side,
                p_value(interval_at, threshold), decide(interval, threshold, side), level)


def proportion_test(k: int, n: int, threshold: float, side: Literal["above", "below"] = "above",
                    level: float = LEVEL) -> Evidence:
    """The Evidence of "the proportion k/n is `side` `threshold`" on its exact (Clopper–Pearson)
    interval; its p-value is the doubled smaller binomial tail at the threshold."""
    return interval_test(k / n, lambda lv: proportion_interval(k, n, lv), n, threshold, side,
                         level)


def jackknife_test(samples, statistic: Callable[..., float], threshold: float,
                   side: Literal["above", "below"] = "above", level: float = LEVEL) -> Evidence:
    """The Evidence of "statistic(*samples) is `side` `threshold`" on its jackknife-t intervals
    (dynsys.stats.intervals.jackknife_interval), the samples left out one at a time."""
    data = samples if isinstance(samples, tuple) else (np.asarray(samples),)
    estimate, se, P = float(statistic(*data)), jackknife_se(data, statistic), len(data[0])
    return interval_test(estimate, lambda lv: jackknife_interval(estimate, se, P, lv), P,
                         threshold, side, level)


def bootstrap_test(estimate: float, draws, n: int, threshold: float,
                   side: Literal["above", "below"] = "above", level: float = LEVEL) -> Evidence:
    """The Evidence of "the statistic is `side` `threshold`" on the percentile intervals of
    its bootstrap `draws` (dynsys.stats.bootstrap_distribution), n samples resampled."""
    return interval_test(estimate, lambda lv: percentile_interval(draws, lv), n, threshold,
                         side, level)
