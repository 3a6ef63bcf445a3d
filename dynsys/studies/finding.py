"""One line of an experiment's verdict."""

from __future__ import annotations

import dataclasses

from dynsys.stats.verdict import FAILS, HOLDS, VERDICTS, Verdict


@dataclasses.dataclass(frozen=True)
class Finding:
    """A claim of the argument, what was measured (estimate, interval, sample size as text),
    and its verdict: "holds", "fails" or "inconclusive" (dynsys.stats.decide), or None where
    the experiment describes rather than tests. A bool is a decided test (True holds, False
    fails)."""

    experiment: str
    claim: str
    measured: str
    verdict: Verdict | bool | None

    def __post_init__(self):
        if isinstance(self.verdict, bool):
            object.__setattr__(self, "verdict", HOLDS if self.verdict else FAILS)
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r} must be one of {VERDICTS} or None")
