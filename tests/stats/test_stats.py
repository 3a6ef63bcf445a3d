"""Verdicts, intervals and paired tests against their definitions and by simulation."""

import numpy as np
import pytest
from scipy import stats

from dynsys.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    adjusted_verdict,
    bootstrap_interval,
    decide,
    difference_interval,
    holm,
    interval_test,
    mcnemar,
    p_value,
    proportion_interval,
    proportion_test,
)


def test_decide_is_three_valued():
    assert decide((0.6, 0.8), 0.5) == HOLDS
    assert decide((0.2, 0.4), 0.5) == FAILS
    assert decide((0.4, 0.6), 0.5) == INCONCLUSIVE
    assert decide((0.2, 0.4), 0.5, "below") == HOLDS
    assert decide((0.6, 0.7), 0.5, "below") == FAILS
    with pytest.raises(ValueError, match="side"):
        decide((0, 1), 0.5, "beside")


def test_exact_proportion_interval_covers_at_the_nominal_rate():
    rng = np.random.default_rng(0)
    n, p, trials = 40, 0.3, 400
    covered = 0
    for k in rng.binomial(n, p, trials):
        lo, hi = proportion_interval(int(k), n)
        covered += lo <= p <= hi
    assert covered / trials >= 0.93  # >= 0.95 in expectation, binomial noise below
    assert proportion_interval(0, 10)[0] == 0.0 and proportion_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="k=11"):
        proportion_interval(11, 10)


def test_bootstrap_interval_of_a_mean_is_close_to_the_t_interval():
    x = np.random.default_rng(1).normal(2.0, 1.0, 400)
    lo, hi = bootstrap_interval(x, np.mean)
    t_lo, t_hi = stats.t.interval(0.95, len(x) - 1, x.mean(), stats.sem(x))
    assert abs(lo - t_lo) < 0.03 and abs(hi - t_hi) < 0.03


def test_mcnemar_matches_the_binomial_on_discordant_pairs():
    x = np.array([1] * 10 + [0] * 2 + [1] * 5 + [0] * 5, bool)
    y = np.array([0] * 10 + [1] * 2 + [1] * 5 + [0] * 5, bool)
    assert mcnemar(x, y) == pytest.approx(stats.binomtest(10, 12, 0.5).pvalue)
    assert mcnemar(x, x) == 1.0


def test_difference_interval_covers_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    for n1, n2, p1, p2 in ((40, 40, 0.3, 0.5), (104, 104, 0.9, 0.6), (20, 60, 0.05, 0.1)):
        draws = np.stack([rng.binomial(n1, p1, 400), rng.binomial(n2, p2, 400)], 1)
        pairs, times = np.unique(draws, axis=0, return_counts=True)
        covered = 0
        for (k1, k2), count in zip(pairs.tolist(), times):
            lo, hi = difference_interval(k1, n1, k2, n2)
            assert lo <= k1 / n1 - k2 / n2 <= hi and lo >= -1 and hi <= 1
            covered += count * (lo <= p1 - p2 <= hi)
        assert covered / 400 >= 0.93  # >= 0.95 expected; binomial noise below


def test_mean_interval_is_scipys_one_sample_t_interval():
    from scipy import stats as scipy_stats

    from dynsys.stats import mean_interval

    x = np.random.default_rng(4).normal(0.3, 2.0, 17)
    expected = scipy_stats.ttest_1samp(x, 0.0).confidence_interval(0.9)
    np.testing.assert_allclose(mean_interval(x, 0.9), tuple(expected), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        mean_interval([1.0])


def test_p_value_of_a_proportion_is_the_doubled_smaller_binomial_tail():
    """Clopper–Pearson inverts the two one-sided binomial tests at α/2 each, so its dual
    p-value is twice the smaller tail at the threshold."""
    for k, n, threshold in ((30, 40, 0.5), (3, 40, 0.2), (12, 20, 0.6), (0, 10, 0.1)):
        tails = (stats.binom.sf(k - 1, n, threshold), stats.binom.cdf(k, n, threshold))
        expected = min(1.0, 2 * min(tails))
        assert proportion_test(k, n, threshold).p == pytest.approx(expected, rel=1e-6,
                                                                    abs=1e-9)


def test_verdict_is_decided_exactly_when_p_is_at_most_alpha():
    rng = np.random.default_rng(5)
    for _ in range(40):
        n = int(rng.integers(5, 200))
        k, threshold = int(rng.integers(0, n + 1)), float(rng.uniform(0.05, 0.95))
        test = proportion_test(k, n, threshold)
        assert (test.verdict != INCONCLUSIVE) == (test.p <= 0.05 + 1e-9)


def test_interval_test_of_a_t_interval_matches_the_t_test():
    x = np.random.default_rng(6).normal(0.4, 1.0, 30)
    from dynsys.stats import mean_interval
    test = interval_test(x.mean(), lambda level: mean_interval(x, level), x.size, 0.0, "above")
    assert test.p == pytest.approx(stats.ttest_1samp(x, 0.0).pvalue, rel=1e-6)
    assert p_value(lambda level: (0.0, 0.0), 0.0) == 1.0


def test_holm_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(7)
    for m in (1, 2, 5, 13):
        p = rng.uniform(0, 0.1, m) ** 2
        np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)
    with pytest.raises(ValueError, match="p-values"):
        holm([0.5, 1.5])


def test_holm_controls_the_family_wise_error_by_simulation():
    """Five true nulls with uniform p-values: P(any adjusted p <= 0.05) <= 0.05."""
    p = np.random.default_rng(8).uniform(size=(4000, 5))
    rejected = np.array([(holm(row) <= 0.05).any() for row in p]).mean()
    assert rejected <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / 4000)


def test_adjusted_verdict_keeps_the_direction_or_becomes_inconclusive():
    assert adjusted_verdict(HOLDS, 0.01) == HOLDS
    assert adjusted_verdict(FAILS, 0.04) == FAILS
    assert adjusted_verdict(HOLDS, 0.2) == INCONCLUSIVE
    assert adjusted_verdict(INCONCLUSIVE, 0.0) == INCONCLUSIVE
