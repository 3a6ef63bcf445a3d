"""Paired binary outcomes: Tango's score interval and TOST against an independent
implementation, their coverage and type I error computed exactly over the multinomial, and a
Monte Carlo check of the same."""

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import gammaln

from dynsys.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    paired_difference,
    paired_equivalence,
    paired_p_value,
    paired_test,
    tango_interval,
)
from dynsys.stats.paired import CONTINUITY, tango_z

SIZES = (32, 64, 128, 256)


def _cells(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (b, c) with b + c <= n: the discordant counts of n pairs."""
    b, c = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    keep = b + c <= n
    return b[keep], c[keep]


def _pmf(b, c, n: int, q_b: float, q_c: float) -> np.ndarray:
    """Multinomial(n; q_b, q_c, 1 − q_b − q_c) probability of each (b, c, n − b − c)."""
    d = n - b - c
    log = gammaln(n + 1) - gammaln(b + 1) - gammaln(c + 1) - gammaln(d + 1)
    for count, q in ((b, q_b), (c, q_c), (d, 1 - q_b - q_c)):
        log = log + np.where(count > 0, count * np.log(max(q, 1e-300)), 0.0)
    return np.exp(log)


def _grid():
    """(q_b, q_c) with one-directional change (q_c = 0), small and large discordance."""
    for q_c in (0.0, 0.01, 0.05, 0.2):
        for q_b in np.linspace(0.005, 0.95 - q_c, 40):
            yield float(q_b), q_c


@pytest.mark.parametrize("n", SIZES)
def test_score_interval_covers_at_least_its_level_exactly(n):
    b, c = _cells(n)
    lo, hi = tango_interval(b, c, n, 0.95)
    coverage = [_pmf(b, c, n, q_b, q_c)[(lo <= q_b - q_c) & (q_b - q_c <= hi)].sum()
                for q_b, q_c in _grid()]
    assert min(coverage) >= 0.945, min(coverage)  # 0.951 at worst over this grid
    assert np.mean(coverage) <= 0.985  # and not trivially wide


@pytest.mark.parametrize("n", SIZES)
def test_equivalence_type_one_error_at_the_margin_is_at_most_alpha(n):
    b, c = _cells(n)
    lo, hi = tango_interval(b, c, n, 0.90)
    for margin in (0.05, 0.1, 0.2):
        inside = (lo > -margin) & (hi < margin)
        worst = max(_pmf(b, c, n, q_c + margin, q_c)[inside].sum()
                    for q_c in np.linspace(0.0, (1 - margin) / 2 - 1e-9, 30))
        assert worst <= 0.055, (margin, worst)


def test_monte_carlo_coverage_at_the_reviewed_setting():
    """E7(a)'s setting, n = 64 and a one-directional change of 0.09: the old conditional
    interval covered 0.44 of the time."""
    rng = np.random.default_rng(0)
    n, q_b, draws = 64, 0.09, 4000
    counts = rng.multinomial(n, [q_b, 0.0, 1 - q_b], draws)
    lo, hi = tango_interval(counts[:, 0], counts[:, 1], n)
    covered = ((lo <= q_b) & (q_b <= hi)).mean()
    assert covered >= 0.94, covered


def _independent_z(b: int, c: int, n: int, delta: float) -> float:
    """Tango's statistic with the constrained MLE found numerically: maximise the multinomial
    likelihood b log(q_c + δ) + c log q_c + (n − b − c) log(1 − 2q_c − δ) over q_c."""
    lo_q, hi_q = max(0.0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12

    def neg_log_likelihood(q):
        out = 0.0
        for count, prob in ((b, q + delta), (c, q), (n - b - c, 1 - 2 * q - delta)):
            out -= count * np.log(prob) if count else 0.0
        return out

    q = optimize.minimize_scalar(neg_log_likelihood, bounds=(lo_q, hi_q), method="bounded",
                                 options={"xatol": 1e-13}).x
    d = b - c - n * delta
    return np.sign(d) * max(abs(d) - CONTINUITY, 0) / np.sqrt(n * (2 * q + delta * (1 - delta)))


@pytest.mark.parametrize("b,c,n", [(40, 20, 160), (6, 0, 64), (0, 0, 32), (3, 9, 50),
                                   (64, 0, 64), (10, 10, 20)])
def test_interval_inverts_an_independent_score_statistic(b, c, n):
    z = stats.norm.ppf(0.975)
    for delta in np.linspace(-0.95, 0.95, 39):
        assert tango_z(b, c, n, delta) == pytest.approx(_independent_z(b, c, n, delta),
                                                        rel=1e-5, abs=1e-6)
    lo, hi = tango_interval(b, c, n)
    assert lo <= (b - c) / n <= hi
    for end in (lo, hi):
        if -1 < end < 1:
            assert abs(_independent_z(b, c, n, end)) == pytest.approx(z, abs=1e-4)


def test_paired_difference_with_no_discordant_pair_is_an_interval_not_a_point():
    x = np.ones(64, bool)
    d, (lo, hi) = paired_difference(x, x)
    assert d == 0 and lo < 0 < hi


def test_upper_end_exceeds_the_estimate_when_change_is_one_directional():
    """The old conditional interval ended at the estimate here (+0.090 [+0.048, +0.090])."""
    before = np.zeros(64, bool)
    after = before.copy()
    after[:6] = True
    d, (lo, hi) = paired_difference(after, before)
    assert lo < d < hi


def test_p_value_is_dual_to_the_interval():
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.random(50) < 0.5, rng.random(50) < 0.4
        for delta in (-0.1, 0.0, 0.2):
            _, (lo, hi) = paired_difference(x, y)
            assert (paired_p_value(x, y, delta) < 0.05) == (not lo <= delta <= hi)


def test_paired_test_verdicts():
    before = np.zeros(100, bool)
    after = before.copy()
    after[:40] = True
    assert paired_test(after, before, 0.0, "above").verdict == HOLDS
    assert paired_test(after, before, 0.0, "below").verdict == FAILS
    assert paired_test(before, before, 0.0, "above").verdict == INCONCLUSIVE
    assert paired_test(after, before).p < 1e-6


def test_equivalence_holds_fails_and_is_inconclusive():
    rng = np.random.default_rng(2)
    same = rng.random(2000) < 0.5
    assert paired_equivalence(same, same, 0.05).verdict == HOLDS
    far = np.ones(400, bool)
    assert paired_equivalence(far, ~far, 0.1).verdict == FAILS
    few = rng.random(12) < 0.5
    assert paired_equivalence(few, rng.random(12) < 0.5, 0.05).verdict == INCONCLUSIVE
    test = paired_equivalence(same, same, 0.05).test
    assert test.side == "inside" and test.p < 0.05 and test.level == pytest.approx(0.9)


def test_bad_paired_input_is_one_line_errors():
    with pytest.raises(ValueError, match="equal non-empty"):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError, match="binary"):
        paired_difference([2, 0], [1, 0])
    with pytest.raises(ValueError, match="margin=1.5"):
        paired_equivalence([1, 0], [1, 0], 1.5)
    with pytest.raises(ValueError, match="level=1"):
        tango_interval(1, 1, 4, 1)
