"""Statistics for findings: intervals (intervals), paired binary outcomes (paired), the
three-valued verdict of a preregistered claim (verdict) and the correction of a family of
claims for multiplicity (multiplicity)."""

from dynsys.stats.intervals import (
    bootstrap_distribution,
    bootstrap_interval,
    difference_interval,
    jackknife_interval,
    jackknife_se,
    mean_interval,
    percentile_interval,
    proportion_interval,
)
from dynsys.stats.multiplicity import adjusted_verdict, holm
from dynsys.stats.paired import (
    equivalence_power,
    mcnemar,
    paired_difference,
    paired_equivalence,
    paired_p_value,
    paired_test,
    tango_interval,
)
from dynsys.stats.verdict import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NOT_TESTABLE,
    VERDICTS,
    Evidence,
    bootstrap_test,
    decide,
    interval_test,
    jackknife_test,
    p_value,
    proportion_test,
)

__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "NOT_TESTABLE", "VERDICTS", "Evidence",
           "adjusted_verdict", "bootstrap_distribution", "bootstrap_interval", "bootstrap_test",
           "decide", "difference_interval", "equivalence_power", "holm", "interval_test",
           "jackknife_interval", "jackknife_se", "jackknife_test", "mcnemar",
           "mean_interval", "p_value", "paired_difference", "paired_equivalence", "paired_p_value",
           "paired_test", "percentile_interval", "proportion_interval", "proportion_test",
           "tango_interval"]
