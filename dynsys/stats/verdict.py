"""The verdict of a claim tested against a threshold fixed before the run.

A claim says that a statistic lies above (or below) a threshold. With a confidence interval
[lo, hi] of the statistic, the verdict is
    holds         the whole interval is on the claimed side of the threshold,
    fails         the whole interval is on the other side (or on the threshold),
    inconclusive  the interval spans the threshold: the sample cannot tell.
"""

from __future__ import annotations

from typing import Literal

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
Verdict = Literal["holds", "fails", "inconclusive"]


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
