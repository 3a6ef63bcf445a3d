"""Verdicts, intervals and paired tests against their definitions and by simulation."""

import numpy as np
import pytest
from scipy import stats

from dynsys.stats import (FAILS, HOLDS, INCONCLUSIVE, bootstrap_interval, decide,
                          difference_interval, mcnemar,
                          paired_equivalence, proportion_interval)


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


def test_equivalence_holds_fails_and_is_inconclusive():
    rng = np.random.default_rng(2)
    same = rng.random(2000) < 0.5
    assert paired_equivalence(same, same, 0.05).verdict == HOLDS
    far = np.ones(400, bool)
    assert paired_equivalence(far, ~far, 0.1).verdict == FAILS
    few = rng.random(12) < 0.5
    assert paired_equivalence(few, rng.random(12) < 0.5, 0.05).verdict == INCONCLUSIVE


def test_difference_interval_covers_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    for n1, n2, p1, p2 in ((40, 40, 0.3, 0.5), (104, 104, 0.9, 0.6), (20, 60, 0.05, 0.1)):
        draws = np.stack([rng.binomial(n1, p1, 400), rng.binomial(n2, p2, 400)], 1)
        pairs, times = np.unique(draws, axis=0, return_counts=True)
        covered = 0
        for (k1, k2), count in zip(pairs.tolist(), times):
            lo, hi = difference_interval(k1, n1, k2, n2)
            assert lo <= k1 / n1 - k2 / n2 <= hi and -1 <= lo and hi <= 1
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
