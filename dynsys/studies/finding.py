"""One line of an experiment's verdict, and the report of a list of them.

A finding is one of four kinds:

    test          a claim that could come out either way on real data: a statistic, its
                  interval, a threshold fixed in the code and a verdict (dynsys.stats.Evidence)
    check         holds unless the code is wrong (a bound above the measurements, a
                  property by construction): reported apart, never counted as evidence
    manipulation  a premise of other claims (the model is trained, the language is
                  under-trained); when it fails, the claims resting on it are "not testable
                  here"
    describe      a measurement with no verdict

The tested claims of one experiment form a family, corrected for multiplicity by Holm's
procedure at level dynsys.stats.multiplicity.ALPHA: each row carries its raw verdict and the
adjusted one (`report`). `write_report` writes the rows as findings.json (schema:
docs/findings.schema.json) and findings.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

from dynsys.runs import atomic_path
from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE, VERDICTS
from dynsys.stats.multiplicity import ALPHA, adjusted_verdict, holm
from dynsys.stats.verdict import NOT_TESTABLE, Evidence, Verdict

TEST, CHECK, MANIPULATION, DESCRIBE = "test", "check", "manipulation", "describe"
KINDS = (TEST, CHECK, MANIPULATION, DESCRIBE)
RULE = (f"Holm's step-down correction at family-wise level {ALPHA:g} over each experiment's "
        "tested claims; a raw verdict that does not survive it is inconclusive once adjusted; "
        "checks and manipulation checks are not in any family")


@dataclasses.dataclass(frozen=True)
class Finding:
    """A claim of the argument, what was measured (estimate, interval, sample size as text),
    its verdict ("holds", "fails", "inconclusive", "not testable here" or None for a
    description; a bool is a decided check, True holds), its kind (module docstring; default
    "test" with a verdict, "describe" without) and, for a decided test, the Evidence behind the
    verdict (its p-value enters the family's correction)."""

    experiment: str
    claim: str
    measured: str
    verdict: Verdict | bool | None
    kind: str | None = None
    test: Evidence | None = None

    def __post_init__(self):
        if isinstance(self.verdict, bool):
            object.__setattr__(self, "verdict", HOLDS if self.verdict else FAILS)
        if self.verdict is not None and self.verdict not in VERDICTS:
            raise ValueError(f"verdict={self.verdict!r} must be one of {VERDICTS} or None")
        if self.kind is None:
            object.__setattr__(self, "kind", DESCRIBE if self.verdict is None else TEST)
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} must be one of {KINDS}")
        if (self.kind == DESCRIBE) != (self.verdict is None):
            raise ValueError(f"a {self.kind} finding must {'not ' * (self.kind == DESCRIBE)}"
                             f"have a verdict: {self.claim!r}")
        if self.kind == TEST and self.verdict in (HOLDS, FAILS) and self.test is None:
            raise ValueError(f"a decided test needs its Evidence (p-value): {self.claim!r}")
        if self.test is not None and self.test.verdict != self.verdict \
                and self.verdict != NOT_TESTABLE:
            raise ValueError(f"verdict {self.verdict!r} differs from its test's "
                             f"{self.test.verdict!r}: {self.claim!r}")

    @property
    def p(self) -> float:
        """The p-value of the decision (1 without an Evidence: an undecided or untestable claim)."""
        return self.test.p if self.test is not None and self.verdict != NOT_TESTABLE else 1.0


def claim_id(experiment: str, claim: str, taken: set[str]) -> str:
    """A readable id of a claim: the experiment and the claim's first words, made unique."""
    words = re.findall(r"[a-z0-9]+", claim.lower())[:8]
    base = f"{experiment}.{'-'.join(words)}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def report(found: list[Finding], seeds: dict[str, dict] | None = None) -> list[dict]:
    """One row per finding: id, experiment, kind, claim, measured, estimate, interval, level,
    n, threshold, side, p, Holm-adjusted p within the experiment's tested claims, raw and
    adjusted verdicts, and the experiment's seeds (`seeds[experiment]`)."""
    adjusted: dict[int, float] = {}
    for experiment in dict.fromkeys(f.experiment for f in found):
        family = [i for i, f in enumerate(found) if f.experiment == experiment
                  and f.kind == TEST and f.verdict != NOT_TESTABLE]
        adjusted.update(zip(family, holm([found[i].p for i in family]) if family else []))
    taken: set[str] = set()
    rows = []
    for i, f in enumerate(found):
        t = f.test
        rows.append({
            "id": claim_id(f.experiment, f.claim, taken), "experiment": f.experiment,
            "kind": f.kind, "claim": f.claim, "measured": f.measured,
            "estimate": t.estimate if t else None,
            "interval": list(t.interval) if t else None, "level": t.level if t else None,
            "n": t.n if t else None, "threshold": t.threshold if t else None,
            "side": t.side if t else None, "p": f.p if f.kind == TEST else None,
            "p_adjusted": adjusted.get(i),
            "verdict": f.verdict,
            "adjusted_verdict": (adjusted_verdict(f.verdict, adjusted[i]) if i in adjusted
                                 else f.verdict),
            "seeds": (seeds or {}).get(f.experiment, {})})
    return rows


def counts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """{kind: {verdict: count}} of report rows (adjusted verdicts for tests)."""
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["kind"] != DESCRIBE:
            bucket = out.setdefault(r["kind"], {})
            bucket[r["adjusted_verdict"]] = bucket.get(r["adjusted_verdict"], 0) + 1
    return out


def summary(rows: list[dict]) -> str:
    """The counts as one sentence per kind."""
    c = counts(rows)
    tests = c.get(TEST, {})
    raw = {v: sum(r["verdict"] == v for r in rows if r["kind"] == TEST) for v in VERDICTS}
    parts = [f"{sum(tests.values())} tested claims: "
             + ", ".join(f"{tests.get(v, 0)} {v}" for v in (HOLDS, FAILS, INCONCLUSIVE,
                                                            NOT_TESTABLE))
             + " after correction (raw: "
             + ", ".join(f"{raw[v]} {v}" for v in (HOLDS, FAILS, INCONCLUSIVE)) + ")"]
    for kind, name in ((CHECK, "checks"), (MANIPULATION, "manipulation checks")):
        got = c.get(kind, {})
        parts.append(f"{sum(got.values())} {name}: "
                     + ", ".join(f"{n} {v}" for v, n in sorted(got.items())))
    return "; ".join(parts) + "."


def write_report(directory, rows: list[dict]) -> tuple[Path, Path]:
    """rows as DIRECTORY/findings.json ({"rule": RULE, "findings": rows}) and findings.csv,
    each written atomically."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "findings.json", directory / "findings.csv"
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps({"rule": RULE, "findings": rows}, indent=1) + "\n")
    with atomic_path(paths[1]) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows([{k: json.dumps(v) if isinstance(v, (list, dict)) else v
                           for k, v in r.items()} for r in rows])
    return paths
