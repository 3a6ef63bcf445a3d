"""Findings: kinds, the family's Holm correction, the report and its schema."""

import json
from pathlib import Path

import jsonschema
import pytest

from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE, NOT_TESTABLE, Evidence, proportion_test
from dynsys.studies.finding import (
    CHECK,
    MANIPULATION,
    Finding,
    counts,
    report,
    summary,
    write_report,
)

SCHEMA = json.loads((Path(__file__).parents[2] / "docs" / "findings.schema.json").read_text())


def _tested(experiment: str, k: int, n: int = 100) -> Finding:
    test = proportion_test(k, n, 0.5)
    return Finding(experiment, f"share {k}/{n} above one half", "m", test.verdict, test=test)


def test_kinds_default_and_are_checked():
    assert Finding("e1", "c", "m", None).kind == "describe"
    assert Finding("e1", "c", "m", INCONCLUSIVE).kind == "test"
    assert Finding("e1", "c", "m", True, kind=CHECK).verdict == HOLDS
    with pytest.raises(ValueError, match="needs its Evidence"):
        Finding("e1", "c", "m", HOLDS)
    with pytest.raises(ValueError, match="kind='guess'"):
        Finding("e1", "c", "m", HOLDS, kind="guess")
    with pytest.raises(ValueError, match="must not have a verdict"):
        Finding("e1", "c", "m", HOLDS, kind="describe")
    test = proportion_test(90, 100, 0.5)
    with pytest.raises(ValueError, match="differs"):
        Finding("e1", "c", "m", FAILS, test=test)


def test_holm_is_applied_within_each_experiment_only():
    # 61/100 alone: p ≈ 0.035 holds raw; twice in one experiment (beside a third, strong
    # claim) Holm doubles it and neither survives; in another experiment it stands alone
    found = [_tested("e1", 61), _tested("e1", 61), _tested("e1", 90), _tested("e2", 61),
             Finding("e2", "premise", "m", False, kind=MANIPULATION),
             Finding("e2", "a bound", "m", True, kind=CHECK),
             Finding("e2", "under a failed premise", "m", NOT_TESTABLE),
             Finding("e2", "description", "m", None)]
    rows = report(found, {"e1": {"seed": 0}})
    assert [r["verdict"] for r in rows[:4]] == [HOLDS] * 4
    assert [r["adjusted_verdict"] for r in rows[:4]] == [INCONCLUSIVE, INCONCLUSIVE, HOLDS,
                                                         HOLDS]
    assert rows[0]["p_adjusted"] == pytest.approx(2 * rows[0]["p"])
    assert rows[3]["p_adjusted"] == pytest.approx(rows[3]["p"])
    assert all(r["p_adjusted"] is None for r in rows[4:])
    assert rows[0]["seeds"] == {"seed": 0} and rows[3]["seeds"] == {}
    assert len({r["id"] for r in rows}) == len(rows)
    assert counts(rows) == {"test": {INCONCLUSIVE: 2, HOLDS: 2, NOT_TESTABLE: 1},
                            "manipulation": {FAILS: 1}, "check": {HOLDS: 1}}
    assert summary(rows).startswith("5 tested claims: 2 holds, 0 fails, 2 inconclusive, "
                                    "1 not testable here after correction (raw: 4 holds")


def test_written_report_validates_against_the_schema(tmp_path):
    equivalence = Evidence(0.01, (-0.02, 0.04), 64, 0.1, "inside", 0.001, HOLDS, 0.9)
    rows = report([_tested("e1", 70), Finding("e1", "equivalent", "m", HOLDS,
                                              test=equivalence),
                   Finding("e3", "a bound", "m", True, kind=CHECK),
                   Finding("e3", "describe", "m", None)], {"e1": {"seed": 3}})
    json_path, csv_path = write_report(tmp_path, rows)
    data = json.loads(json_path.read_text())
    jsonschema.validate(data, SCHEMA)
    assert data["findings"][1]["side"] == "inside"
    assert csv_path.read_text().splitlines()[0].startswith("id,experiment,kind,claim")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"rule": "r", "findings": [{**rows[0], "kind": "guess"}]}, SCHEMA)
