"""Statistics for findings: intervals (intervals), tests (tests) and the three-valued verdict
of a preregistered claim (verdict)."""

from dynsys.stats.intervals import (bootstrap_interval, difference_interval, mean_interval,
                                    proportion_interval)
from dynsys.stats.tests import mcnemar, paired_difference, paired_equivalence
from dynsys.stats.verdict import FAILS, HOLDS, INCONCLUSIVE, VERDICTS, decide

__all__ = ["FAILS", "HOLDS", "INCONCLUSIVE", "VERDICTS", "bootstrap_interval", "decide",
           "difference_interval", "mcnemar", "mean_interval", "paired_difference",
           "paired_equivalence", "proportion_interval"]
