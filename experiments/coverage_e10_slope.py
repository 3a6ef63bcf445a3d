"""Coverage of E10's dilution interval, by simulation.

E10's dilution claim (dynsys/studies/e10_regime/verdicts.py) is decided on the slope of
log(mean over prompts of the excess e) on log n, with a 95% percentile bootstrap interval over
prompts (prompt k of every n resampled together; dynsys.stats.bootstrap_distribution: 2000
resamples, seed 0). This script draws per-prompt excess curves whose mean is exactly C·n^β,

    log e[p, n] = β log n + a_p + (b_p − β)(log n − mean log n) + ε[p, n] − v(n)/2,

a_p ~ N(0, σ_a²) and b_p ~ N(β, σ_b²) per prompt, ε ~ N(0, σ_ε²) per (prompt, n), and
v(n) = σ_a² + σ_b²(log n − mean log n)² + σ_ε² (so E e[·, n] = n^β: the slope the statistic
estimates is β), and counts how often each interval covers β:

    percentile   E10's interval (a vectorised replica, identical to dilution()'s: the same
                 resample indices, tests/studies/test_e10_coverage.py checks it)
    bca          scipy.stats.bootstrap's BCa on the same resamples (bias correction z0 and
                 the jackknife acceleration a, over prompts)
    jackknife-t  slope ± t_{P−1, 0.975} · (jackknife standard error over prompts)
    studentized  the percentile-t bootstrap: the quantiles of (slope* − slope)/se* over the
                 same resamples, se* each resample's own jackknife standard error, times se

with the shares of misses on each side: "β above hi" is the miss that makes "slope < 0.5"
hold wrongly. Usage: .venv/bin/python experiments/coverage_e10_slope.py [replicates]

With 4000 replicates (MC sd 0.003 at 0.95), coverage (misses below lo / above hi):

     P  sd_a sd_b sd_e  percentile         bca                jackknife-t        studentized
     8  0.1  0.05 0.05  .880 (.064/.057)   .880 (.063/.057)   .942 (.031/.027)   .947 (.028/.025)
     8  0.5  0.2  0.3   .869 (.069/.062)   .861 (.070/.068)   .933 (.036/.030)   .941 (.031/.028)
    16  0.1  0.05 0.05  .913 (.041/.046)   .912 (.040/.048)   .947 (.026/.028)   .948 (.023/.029)
    16  0.5  0.2  0.3   .906 (.044/.049)   .890 (.051/.059)   .940 (.029/.031)   .938 (.028/.035)
    32  0.1  0.05 0.05  .943 (.029/.028)   .942 (.028/.030)   .955 (.023/.022)   .955 (.023/.022)
    32  0.5  0.2  0.3   .933 (.035/.032)   .920 (.042/.038)   .949 (.026/.025)   .945 (.028/.027)

The percentile interval is too narrow at 8-16 prompts (both tails missed about equally, so
"slope < 0.5 holds" is wrongly decided about 6% of the time at β = 0.5, not 2.5%); BCa does not
help (it corrects bias and skew, not the (P−1)/P shrinkage of the bootstrap's spread);
jackknife-t and the studentized bootstrap reach nominal within 1-2 points.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys

import numpy as np
from scipy import stats

from dynsys.stats import bootstrap_distribution

LENGTHS = (64, 128, 256, 512)  # four of E10's prompt lengths (it runs 16, 24 or 48 prompts)
LEVEL = 0.95  # dynsys.stats.verdict.LEVEL
RESAMPLES = inspect.signature(bootstrap_distribution).parameters["resamples"].default
TIE = 1e-12  # slopes closer than this are equal (rounding of the vectorised slope)
METHODS = ("percentile", "bca", "jackknife-t", "studentized")


@dataclasses.dataclass(frozen=True)
class Setting:
    """P prompts per n; σ_a, σ_b, σ_ε of the per-prompt intercepts, slopes and noise; β."""

    prompts: int
    sd_intercept: float
    sd_slope: float
    sd_noise: float
    slope: float = 0.3


SETTINGS = tuple(Setting(p, *noise) for p in (8, 16, 32)
                 for noise in ((0.1, 0.05, 0.05), (0.5, 0.2, 0.3)))


def draw(setting: Setting, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """Excess curves e [R, P, N] (N lengths) with mean exactly n^β (module docstring)."""
    x = np.log(LENGTHS)
    xc = x - x.mean()
    R, P = replicates, setting.prompts
    a = setting.sd_intercept * rng.standard_normal((R, P, 1))
    b = setting.sd_slope * rng.standard_normal((R, P, 1))
    noise = setting.sd_noise * rng.standard_normal((R, P, len(x)))
    var = setting.sd_intercept ** 2 + (setting.sd_slope * xc) ** 2 + setting.sd_noise ** 2
    return np.exp(setting.slope * x + a + b * xc + noise - var / 2)


def slopes(means: np.ndarray) -> np.ndarray:
    """The least-squares slope of log means [..., N] on log n (verdicts.slope, vectorised)."""
    xc = np.log(LENGTHS) - np.mean(np.log(LENGTHS))
    return np.log(means) @ xc / (xc @ xc)


def resamples(P: int, seed: int = 0) -> np.ndarray:
    """The prompts [S, P] of each resample dynsys.stats.bootstrap_distribution draws (scipy's
    paired bootstrap: rng(seed).integers(0, P, (S, P)))."""
    return np.random.default_rng(seed).integers(0, P, (RESAMPLES, P))


def bootstrap_slopes(e: np.ndarray, seed: int = 0) -> np.ndarray:
    """The bootstrap distribution [R, S] of the slope of each replicate e[r] [P, N], on the
    resamples of `resamples`."""
    P = e.shape[1]
    counts = np.stack([np.bincount(row, minlength=P) for row in resamples(P, seed)]) / P
    return slopes(np.einsum("sp,rpn->rsn", counts, e))


def jackknife_se(e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(slopes [..., P] with each of the P prompts of e [..., P, N] left out in turn, their
    jackknife standard error [...])."""
    P = e.shape[-2]
    jack = slopes((e.sum(-2, keepdims=True) - e) / (P - 1))
    spread = jack - jack.mean(-1, keepdims=True)
    return jack, np.sqrt((P - 1) / P * (spread ** 2).sum(-1))


def studentized(e: np.ndarray, chunk: int = 16) -> np.ndarray:
    """(slope* − slope)/se* [R, S] on the resamples, se* each resample's jackknife error."""
    estimate, index, out = slopes(e.mean(1)), resamples(e.shape[1]), []
    for r in range(0, len(e), chunk):
        sample = e[r:r + chunk][:, index]  # [r, S, P, N]
        _, se = jackknife_se(sample)
        out.append((slopes(sample.mean(2)) - estimate[r:r + chunk, None]) / se)
    return np.concatenate(out)


def _row_quantiles(draws: np.ndarray, q: np.ndarray) -> np.ndarray:
    """np.percentile's linear quantile of each row of draws [R, S] at its own q [R]."""
    ordered = np.sort(draws, axis=1)
    at = q * (draws.shape[1] - 1)
    lo = np.floor(at).astype(int)
    hi = np.minimum(lo + 1, draws.shape[1] - 1)
    rows = np.arange(len(draws))
    return ordered[rows, lo] + (at - lo) * (ordered[rows, hi] - ordered[rows, lo])


def intervals(e: np.ndarray, method: str, level: float = LEVEL) -> np.ndarray:
    """The `method` interval [R, 2] of the slope of each replicate e[r] [P, N]."""
    estimate = slopes(e.mean(1))
    P = e.shape[1]
    alpha = (1 - level) / 2
    if method == "percentile":
        return np.percentile(bootstrap_slopes(e), [100 * alpha, 100 * (1 - alpha)], axis=1).T
    jack, se = jackknife_se(e)
    spread = jack.mean(1, keepdims=True) - jack
    if method == "jackknife-t":
        half = stats.t.ppf(1 - alpha, P - 1) * se
        return np.stack([estimate - half, estimate + half], 1)
    if method == "studentized":
        t_lo, t_hi = np.percentile(studentized(e), [100 * alpha, 100 * (1 - alpha)], axis=1)
        return np.stack([estimate - t_hi * se, estimate - t_lo * se], 1)
    if method == "bca":
        draws = bootstrap_slopes(e)
        # scipy's share below the estimate, ties counted half; a resample that permutes the
        # prompts ties the estimate, which the vectorised slope meets only to rounding
        gap = draws - estimate[:, None]
        below = ((gap < -TIE).mean(1) + (gap <= TIE).mean(1)) / 2
        z0 = stats.norm.ppf(below)
        accel = (spread ** 3).sum(1) / (6 * ((spread ** 2).sum(1)) ** 1.5)
        ends = []
        for z in stats.norm.ppf([alpha, 1 - alpha]):
            q = stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))
            ends.append(_row_quantiles(draws, q))
        return np.stack(ends, 1)
    raise ValueError(f"method={method!r} must be one of {METHODS}")


def coverage(setting: Setting, method: str, replicates: int, seed: int = 0
             ) -> tuple[int, int, int]:
    """(covered, β below lo, β above hi) counts over `replicates` simulated data sets."""
    e = draw(setting, replicates, np.random.default_rng(seed))
    lo, hi = intervals(e, method).T
    return (int(((lo <= setting.slope) & (setting.slope <= hi)).sum()),
            int((setting.slope < lo).sum()), int((setting.slope > hi).sum()))


def main(argv: list[str]) -> None:
    replicates = int(argv[0]) if argv else 4000
    print(f"coverage of beta = {SETTINGS[0].slope} by nominal {LEVEL:.0%} intervals, "
          f"{replicates} replicates per row, lengths {LENGTHS}, {RESAMPLES} resamples; "
          "MC sd at 0.95: {:.3f}".format(np.sqrt(0.95 * 0.05 / replicates)))
    print(f"{'P':>3} {'sd_a':>5} {'sd_b':>5} {'sd_e':>5}  " + "  ".join(
        f"{m:>24}" for m in METHODS))
    print(" " * 22 + "  ".join(f"{'cover (miss lo / hi)':>24}" for _ in METHODS))
    for setting in SETTINGS:
        cells = []
        for method in METHODS:
            hit, low, high = coverage(setting, method, replicates)
            cells.append(f"{hit / replicates:.3f} ({low / replicates:.3f} / "
                         f"{high / replicates:.3f})")
        print(f"{setting.prompts:>3} {setting.sd_intercept:>5} {setting.sd_slope:>5} "
              f"{setting.sd_noise:>5}  " + "  ".join(f"{c:>24}" for c in cells))


if __name__ == "__main__":
    main(sys.argv[1:])
