"""E2 (agreement with the Markov maps vs n): the prompts table against the stored units, the
findings of a run, and the claims on synthetic tables where each must hold, fail, or be
undecided (too few prompts)."""

import re

import numpy as np
import pytest
from study_helpers import assert_figures, small_study

from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE
from dynsys.studies import e2_agreement, sweep
from dynsys.studies.e2_agreement import MOST, limit, scaling, verdicts

SMALLER = {"lengths": [16, 32], "G": 6, "prompts": 2, "kinds": ["random"]}
LENGTHS = (64, 256, 1024)
STEPS = 15


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(run, its config, the model): the small E2 made smaller, on CFG."""
    return small_study(tmp_path_factory, "e2", 3, SMALLER)


def test_prompts_table_counts_the_units(study):
    run, config, _ = study
    rows = run.read_table("prompts")
    assert len(rows) == 2 * 1 * 2 * 2  # rope × kind × n × prompt
    for r in rows:
        unit = run.load(sweep.unit_name(r["rope"], r["kind"], r["n"]))
        assert r["steps"] == config.G - 1 == unit["agree_markov"].shape[1]
        for ref in ("markov", "position"):
            assert r[f"disagree_{ref}"] == (~unit[f"agree_{ref}"][r["prompt"]]).sum()


def test_findings_of_the_run(study):
    run, _, _ = study
    found = e2_agreement.findings(run)
    # RoPE on: f_{P,t−1} and f_P, scaling and limit; RoPE off: f_P only (= f_{P,t−1})
    limit = "grows towards 1: at n=32 more than 0.5 of the traces follow it on all 5 steps"
    assert [f.claim.split(" (")[0] for f in found] == [
        "disagreement with f_{P,t−1} falls like n^-β, β > 0",
        f"agreement with f_{{P,t−1}} {limit}",
        "disagreement with f_P falls like n^-β, β > 0",
        f"agreement with f_P {limit}",
        "disagreement with f_P falls like n^-β, β > 0",
        f"agreement with f_P {limit}"]
    assert all(f.experiment == "e2" and f.measured for f in found)
    # 2 prompts: no bootstrap verdict, and an exact interval of k/2 always spans 1/2
    assert {f.verdict for f in found} == {INCONCLUSIVE}
    assert "RoPE off" in found[-1].claim and "without RoPE f_P = f_{P,t−1}" in found[-1].claim
    assert "not proved" in found[2].claim and "proved" in found[0].claim


def test_figures_are_written(study):
    assert_figures(study[0], ["e2_agreement"])


def table(beta: float, prompts: int, base: float = 0.4, seed: int = 0,
          follows: int | None = None) -> list[dict]:
    """Synthetic prompts-table rows, one kind, RoPE on: disagreements ~ Binomial(STEPS,
    base (n/64)^−β), for both maps; with `follows`, the first `follows` prompts at the
    largest n have none and the others all STEPS."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in LENGTHS:
        p = base * (n / LENGTHS[0]) ** -beta
        for k in range(prompts):
            d = int(rng.binomial(STEPS, p))
            if follows is not None and n == LENGTHS[-1]:
                d = 0 if k < follows else STEPS
            rows.append({"rope": True, "kind": "random", "n": n, "prompt": k, "steps": STEPS,
                         "disagree_markov": d, "disagree_position": d})
    return rows


def _beta(finding) -> tuple[float, float, float]:
    """(β, lo, hi) read from a scaling finding's measured text 'β = b [lo, hi], ...'."""
    return tuple(map(float, re.match(r"β = (\S+) \[(\S+), (\S+)\]", finding.measured).groups()))


def test_scaling_holds_when_disagreement_falls_like_1_over_n():
    found = scaling(table(1.0, 24), "position")
    b, lo, hi = _beta(found)
    assert found.verdict == HOLDS and lo > 0
    se = (hi - lo) / (2 * 1.96)
    assert abs(b - 1.0) < 3 * se  # the continuity correction pulls β to 0 by ~0.03 here


def test_scaling_fails_when_disagreement_grows_with_n():
    found = scaling(table(-0.5, 24, base=0.1), "markov")
    b, lo, hi = _beta(found)
    assert found.verdict == FAILS and hi <= 0
    assert abs(b + 0.5) < 3 * (hi - lo) / (2 * 1.96)


def test_scaling_is_undecided_on_too_few_prompts():
    found = scaling(table(1.0, sweep.MIN_PROMPTS - 1), "position")
    assert found.verdict == INCONCLUSIVE and "no interval" in found.measured
    assert scaling(table(1.0, sweep.MIN_PROMPTS), "position").verdict == HOLDS


@pytest.mark.parametrize("prompts, follows, verdict", [
    (24, 24, HOLDS),  # 24/24: [0.86, 1]
    (24, 17, INCONCLUSIVE),  # 17/24: [0.49, 0.87] spans 1/2
    (24, 5, FAILS),  # 5/24: [0.07, 0.42]
    (3, 3, INCONCLUSIVE),  # 3/3: [0.29, 1], too few prompts to tell
])
def test_limit_on_the_share_of_traces_that_follow_the_map(prompts, follows, verdict):
    found = limit(table(1.0, prompts, follows=follows), "position")
    assert found.verdict == verdict
    assert found.measured.startswith(f"{follows}/{prompts} = ")
    assert f"grows towards 1: at n=1024 more than {MOST:g} of the traces" in found.claim


def test_verdicts_cover_every_rope_kind_and_map():
    rows = table(1.0, 8)
    rows += [{**r, "rope": False} for r in rows] + [{**r, "kind": "ngram"} for r in rows]
    found = verdicts(rows)
    # RoPE on: 2 kinds × 2 maps × 2 claims; RoPE off: 1 kind × f_P × 2 claims
    assert len(found) == 8 + 2
    assert sum("RoPE off" in f.claim for f in found) == 2
    assert all("f_{P,t−1} grows" not in f.claim for f in found if "RoPE off" in f.claim)
    single = [r for r in rows if r["n"] == LENGTHS[-1]]
    assert not any(f.claim.startswith("disagreement") for f in verdicts(single))


def test_the_run_reports_its_test_bed(study):
    """The attention table is the concentration of the model on the stated random prompts,
    and the run's findings end with it (a measurement: no verdict)."""
    from dynsys.data.prompts import random_tokens
    from dynsys.studies import ATTENTION, ATTENTION_PROMPTS, findings
    from dynsys.theory.concentration import attention_concentration

    run, config, model = study
    rows = run.read_table(ATTENTION)
    n = rows[0]["keys"]
    assert n == min(config.positions(), 512)
    prompts = np.stack([random_tokens(model.config.vocab_size, n, seed=i)
                        for i in range(ATTENTION_PROMPTS)])
    found = attention_concentration(model, prompts)
    assert len(rows) == model.config.num_layers
    for layer, row in enumerate(rows):
        assert row["excess"] == pytest.approx(found.excess[:, layer].mean(), rel=1e-6)
        assert row["entropy"] == pytest.approx(found.entropy[:, layer].mean(), rel=1e-6)
    last = findings(run.path)[-1]
    assert last.verdict is None and "attention concentration" in last.claim
    assert f"{np.mean([r['excess'] for r in rows]):.2f}" in last.measured
