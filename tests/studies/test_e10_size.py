"""E10's size ladder: matched checkpoints and the halving k on hand-made numbers, the size claim
on synthetic loop flags where it must hold, fail or be undecided, and a run on two reduced
ladder rungs (units, tables, findings)."""

import numpy as np
import pytest

from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE
from dynsys.studies import e10_regime, run_study
from dynsys.studies.e10_regime import size
from dynsys.testbeds import recipe
from dynsys.testbeds.registry import train_testbed

REDUCED = {"steps": 6, "seq_len": 64, "batch": 4, "warmup": 2, "heldout_windows": 4,
           "checkpoint_every": 4, "save_every": 3, "vocab": 512, "characters": 300_000}
RUNGS = ("ladder-1-small", "ladder-2-small")


def test_matched_checkpoints():
    losses = {"a": [(0, 7.0), (4, 5.0), (8, 4.5)],
              "b": [(0, 7.0), (4, 4.4), (8, 3.9)],
              "c": [(0, 7.0), (2, 4.6), (4, 4.5), (8, 3.0)]}
    target, steps = size.matched(losses)
    assert target == 4.5 and steps == {"a": 8, "b": 4, "c": 4}


@pytest.mark.parametrize("rates, before, expected", [
    ([0.5, 0.3, 0.2], 0.5, 4),  # 0.2 <= 0.25 first at k = 4
    ([0.25, 0.3, 0.2], 0.5, 1),
    ([0.5, 0.4, 0.3], 0.5, 0),  # never halved
    ([0.0, 0.0, 0.0], 0.0, 0),  # nothing loops before the edit
    ([np.nan] * 3, 0.4, 0),
])
def test_halving(rates, before, expected):
    assert size.halving(np.array([1, 2, 4]), np.array(rates), before) == expected


def _rows(small: np.ndarray, large: np.ndarray) -> list[dict]:
    return [{"model": key, "params": params, "checkpoint": "matched", "step": 8,
             "heldout_loss": 4.5, "loops": int(flags.sum()), "prompts": flags.size,
             "rate": float(flags.mean())}
            for key, params, flags in (("s", 1000, small), ("l", 9000, large))]


@pytest.mark.parametrize("small, large, expected", [
    (60, 10, HOLDS),  # of 80 prompts, the small model loops on 60, the large on 10
    (10, 60, FAILS),
    (30, 28, INCONCLUSIVE),
])
def test_size_claim(small, large, expected):
    flags = {"s": np.arange(80) < small, "l": np.arange(80) < large}
    claim, described = size.findings(_rows(flags["s"], flags["l"]), [], flags)
    assert claim.verdict == expected and claim.test.n == 80
    assert "the smallest model (s) loops more often than the largest (l)" in claim.claim
    assert described.verdict is None and "no rung loops" in described.measured


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """E10 on the smaller rung with the two reduced rungs as its ladder."""
    root = tmp_path_factory.mktemp("testbeds")
    for key in RUNGS:
        train_testbed(recipe(key.rsplit("-", 1)[0], "small", REDUCED), root / key, root,
                      progress=False)
    overrides = {"models": [f"{RUNGS[0]}@final"], "root": str(root), "lengths": [16, 32],
                 "G": 8, "horizon": 4, "prompts": 4, "kinds": ["random"],
                 "lambdas": [1.0, 0.0], "temperatures": [0.7], "top_ps": [1.0], "dry": 0.0,
                 "size": True, "ladder": list(RUNGS), "ladder_n": 32}
    return run_study("e10", tmp_path_factory.mktemp("e10") / "run", "small", overrides,
                     progress=False)


def test_size_tables_follow_the_units(study):
    rows, neurons = study.read_table("size"), study.read_table("neurons")
    assert [(r["model"], r["checkpoint"]) for r in rows] == [
        (key, which) for key in RUNGS for which in ("matched", "final")]
    target = max(r["heldout_loss"] for r in rows if r["checkpoint"] == "final")
    for r in rows:
        unit = study.load(f"size_{r['model']}")
        flags = unit[f"loops_{r['checkpoint']}"]
        assert (r["loops"], r["prompts"]) == (flags.sum(), 4)
        assert r["checkpoint"] == "final" or r["heldout_loss"] <= target
        np.testing.assert_array_equal(unit["prompts"], study.load(f"size_{RUNGS[0]}")["prompts"])
    assert {r["model"] for r in neurons} <= set(RUNGS)
    params = {r["model"]: r["params"] for r in rows}
    assert params[RUNGS[0]] < params[RUNGS[1]]
    found = [f.claim for f in e10_regime.findings(study)]
    assert sum(c.startswith("size: ") for c in found) == 2
