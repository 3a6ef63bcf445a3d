"""E3 (dilution measured vs uniform attention vs bound vs n): stored units against direct
probes and certificates, bound ≥ measured, tables against the units, figures, findings (on the
run, and on synthetic tables where each claim must hold, fail, or be undecided), and
resumption."""

import shutil

import numpy as np
import pytest

import dynsys as ds
from dynsys.runs import read_run
from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE
from dynsys.studies import config_for, e3_dilution, findings, render, run_study
from dynsys.studies.e3_dilution import (
    DECAY,
    EXCESS,
    RTOL,
    bound_finding,
    horizon_finding,
    measured_findings,
    violations,
)
from dynsys.studies.sweep import MIN_PROMPTS
from dynsys.theory.margin import certify_margin

# 40 and 64 share one prefix capacity and one generation bucket: one compile per function.
# Prompt 0 of each n is bounded (certified=1 at small scale), prompt 1 only probed.
OVERRIDES = {"lengths": [40, 64], "G": 4, "prompts": 2}
UNITS = [(40, 0), (40, 1), (64, 0), (64, 1)]
BOUNDED = [(40, 0), (64, 0)]


@pytest.fixture(scope="module")
def model():
    return ds.load("tiny", seed=0)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    return run_study("e3", tmp_path_factory.mktemp("e3") / "run", "small", overrides=OVERRIDES,
                     progress=False)


def test_stored_units_against_direct_probe_and_certificate(done, model):
    for n, k in UNITS:
        unit = done.load(e3_dilution.unit_name(n, k))
        prompt = ds.prompts.random_tokens(512, n, seed=1000 * n + k)
        trace = np.asarray(ds.generate(model, prompt[None], 4).tokens)[0]
        np.testing.assert_array_equal(unit["trace"], trace)
        probe = ds.probe_trace(model, prompt, trace)
        assert unit["mass"].shape == (4, 4, 4)  # G, L, N
        np.testing.assert_allclose(unit["mass"], probe.mass, atol=1e-6)
        np.testing.assert_allclose(unit["logit_change"], probe.logit_change, atol=1e-5)
        np.testing.assert_allclose(unit["residual"], probe.residual, atol=1e-5)
        assert int(unit["agreement"]) == probe.agreement
        assert ("mass_bound" in unit) == ((n, k) in BOUNDED)
    n, k = BOUNDED[0]
    unit = done.load(e3_dilution.unit_name(n, k))
    prompt = ds.prompts.random_tokens(512, n, seed=1000 * n + k)
    cert = ds.certify(model, prompt, unit["trace"])
    assert unit["mass_bound"].shape == (4, 4, 4)
    np.testing.assert_allclose(unit["mass_bound"], cert.bound.mass, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(unit["logit_bound"], cert.bound.logits, rtol=1e-4)
    np.testing.assert_allclose(unit["margin"], cert.margin, atol=1e-5)
    assert int(unit["certified"]) == cert.horizon
    margins = certify_margin(model, prompt, unit["trace"])
    rows = np.arange(4)[:, None]
    assert int(unit["margin_certified"]) == margins.horizon
    assert int(unit["margin_estimated"]) == margins.estimated_horizon
    np.testing.assert_allclose(unit["margin_bound"], margins.change[rows, margins.near].max(1),
                               rtol=1e-4)


def test_bound_above_measured_everywhere(done):
    for n, k in BOUNDED:
        u = done.load(e3_dilution.unit_name(n, k))
        assert (u["mass"][1:] > 0).all()  # r >= 1 generated keys get some attention
        assert (u["mass"] <= u["mass_bound"] * (1 + RTOL)).all()
        assert (u["logit_change"][0] < 1e-5) and (u["residual"][0] < 1e-5).all()  # r = 0
        assert (u["logit_change"][1:] <= u["logit_bound"][1:]).all()
        assert (u["residual"][1:] <= u["residual_bound"][1:]).all()
        assert 1 <= u["certified"] <= u["agreement"] <= 4
        assert 1 <= u["margin_certified"] <= u["agreement"] and u["margin_violations"] == 0
        assert 0 <= u["history_certified"] <= u["agreement"]
        assert (u["margin_bound"][1:] >= u["margin_change"][1:]).all()
    assert all(r["violations"] == 0 for r in done.read_table("bounds"))


def test_violations_are_relative_to_the_bound():
    """A 7e-5 bound exceeded by 14% is a violation (an absolute slack of 1e-5 hid it); float32
    rounding, far below RTOL of the bound, is not."""
    bound = np.array([0.0, 7e-5, 7e-5, 7e-5])
    assert violations(bound, np.array([0.0, 7e-5, 7e-5 * (1 + RTOL / 10), 8e-5])) == 1
    assert violations(bound, bound * (1 + 2 * RTOL)) == 3
    logits = np.array([0.0, 1e-3, 1e-3])
    assert violations(logits, np.array([3e-7, 1e-3 + 2e-7, 1e-3]), rounding=3e-7) == 0
    assert violations(logits, np.array([3e-7, 1e-3 + 5e-7, 1e-3]), rounding=3e-7) == 1


def test_tables_are_built_from_the_units(done, model):
    rows = {(r["n"], r["prompt"]): r for r in done.read_table("units")}
    bounds = {(r["n"], r["prompt"]): r for r in done.read_table("bounds")}
    assert sorted(rows) == UNITS and sorted(bounds) == BOUNDED
    for key, row in rows.items():
        u = done.load(e3_dilution.unit_name(*key))
        uniform = np.arange(1, 4) / (key[0] + np.arange(1, 4) + 1)
        assert row["mass_last"] == pytest.approx(u["mass"][-1].max())
        assert row["mass_mean_last"] == pytest.approx(u["mass"][-1].mean())
        assert row["uniform_last"] == pytest.approx(3 / (key[0] + 4))
        assert row["excess"] == pytest.approx((u["mass"][1:] / uniform[:, None, None]).mean())
        assert row["agreement"] == u["agreement"]
    for key, row in bounds.items():
        u = done.load(e3_dilution.unit_name(*key))
        assert row["mass_bound_r1"] == pytest.approx(u["mass_bound"][1].max())
        assert row["logit_bound_last"] == pytest.approx(u["logit_bound"][-1])
        assert row["logit_ratio"] == pytest.approx(
            np.median(u["logit_bound"][1:] / u["logit_change"][1:]))
        assert row["compared"] == 3 * 16 + 3 + 3 * 4  # steps r >= 1 × (heads·layers, 1, layers)
        assert row["rounding"] == pytest.approx(u["logit_change"][0])
        assert row["certified"] == u["certified"]
        assert row["margin_certified"] == u["margin_certified"]
        assert row["margin_ratio"] == pytest.approx(
            np.median(u["margin_bound"][1:] / u["margin_change"][1:]))
    history = {(r["n"], r["prompt"]): r for r in done.read_table("history")}
    assert sorted(history) == BOUNDED
    for key, row in history.items():
        u = done.load(e3_dilution.unit_name(*key))
        assert row["history_certified"] == u["history_certified"] <= row["agreement"]
        assert row["start"] == u["trace"][0] and row["certified"] == u["certified"]
    summary = done.read_table("summary")
    assert [(s["n"], s["prompts"], s["bounded"]) for s in summary] == [(40, 2, 1), (64, 2, 1)]
    for s in summary:
        for column in ("mass_last", "logit_r1", "excess", "agreement"):
            assert s[column] == pytest.approx(np.mean([rows[s["n"], k][column] for k in (0, 1)]))
        assert s["mass_ratio"] == pytest.approx(bounds[s["n"], 0]["mass_ratio"])
    layers = done.read_table("layers")
    assert [(r["n"], r["layer"]) for r in layers] == [(n, i) for n in (40, 64) for i in range(4)]
    bounded = [done.load(e3_dilution.unit_name(*key)) for key in BOUNDED]
    floor = min(float(u["floor"]) for u in bounded)
    margin = float(np.min(np.concatenate(
        [done.load(e3_dilution.unit_name(*key))["margin"] for key in UNITS])))
    expected = ds.uniform_bound(ds.weight_constants(model), rms_floor=floor).n0(4, margin)
    theorem = done.read_table("theorem")
    assert [r["rms_floor"] for r in theorem] == [0.0, pytest.approx(floor)]
    assert theorem[1]["n0"] == pytest.approx(expected)


def test_figures_are_drawn_from_stored_results_only(done, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("figures must not compute")

    monkeypatch.setattr(e3_dilution, "load", refuse)
    monkeypatch.setattr(e3_dilution, "measure", refuse)
    for path in done.figures.glob("e3_dilution.*"):
        path.unlink()
    paths = render(done.path)
    assert sorted(p.name for p in paths) == ["e3_dilution.pdf", "e3_dilution.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_findings_of_the_run(done):
    found = findings(done.path)
    assert [f.experiment for f in found] == ["e3"] * 9
    decay, uniform, bound, _, _, horizon, _, prompt_n0, test_bed = found
    assert prompt_n0.verdict is None and "prompt-dependent n0" in prompt_n0.claim
    assert test_bed.verdict is None and "attention concentration" in test_bed.claim
    assert "falls like n^-β" in decay.claim and "uniform attention" in uniform.claim
    # 2 prompts per n: no bootstrap verdict
    assert decay.verdict == uniform.verdict == INCONCLUSIVE
    assert bound.verdict == "holds" and bound.measured.startswith("0 of 126 comparisons")
    assert horizon.verdict == "holds" and horizon.measured.startswith("0 of 2 traces")


def test_findings_report_a_violated_certificate_and_bound(done, tmp_path):
    run = read_run(shutil.copytree(done.path, tmp_path / "copy"))
    rows = run.read_table("bounds")
    rows[0]["certified"] = rows[0]["agreement"] + 1
    rows[1]["violations"] = 1
    run.write_table("bounds", rows)
    found = {f.claim.split(" (")[0]: f for f in e3_dilution.findings(run)}
    assert found["the certified horizon never exceeds the measured agreement horizon"].verdict \
        == FAILS
    assert found["the multi-layer bound is above the measured a(R), ||x_l - x'_l|| and logit "
                 "change on every step with r >= 1, layer and head"].verdict == FAILS


def test_universal_claims_on_no_bounded_trace_decide_nothing():
    assert bound_finding([]).verdict == horizon_finding([], 8).verdict == INCONCLUSIVE


@pytest.mark.parametrize("change, verdict", [
    ({}, HOLDS), ({"margin_certified": 5}, FAILS), ({"margin_violations": 1}, FAILS),
    ({"certified": 5}, FAILS), ({"history_certified": 5}, FAILS)])
def test_horizon_claim_covers_every_certificate(change, verdict):
    """The horizon claim fails when any certificate (old, margin, history-uniform) exceeds the
    measured horizon or the margin enclosure is violated; its line gives old / margin /
    estimate vs measured per n, then the history-uniform horizon."""
    row = dict(n=64, certified=1, margin_certified=2, margin_estimated=4, agreement=4,
               margin_ratio=3.0, margin_violations=0)
    history = dict(n=64, history_certified=2, agreement=4)
    history.update({k: v for k, v in change.items() if k.startswith("history")})
    found = horizon_finding([dict(row, **{k: v for k, v in change.items()
                                          if not k.startswith("history")})], 4, [history])
    assert found.verdict == verdict
    assert "n=64:" in found.measured and "estimate, not proved" in found.measured
    assert "history-uniform certified vs measured by n: n=64: " in found.measured


def units_table(beta: float, excess: float, prompts: int, spread: float = 0.01,
                seed: int = 0) -> list[dict]:
    """Synthetic units-table rows: a(R) = 7 c_k n^−β at the last step, c_k ~ 1 ± 20%, and an
    excess concentration excess ± spread per prompt."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(0.8, 1.2, prompts)
    return [{"n": n, "prompt": k, "mass_mean_last": 7 * c[k] * n ** -beta,
             "excess": excess + spread * rng.standard_normal()}
            for n in (64, 256, 1024) for k in range(prompts)]


@pytest.mark.parametrize("beta, prompts, verdict", [
    (1.0, MIN_PROMPTS, HOLDS), (0.2, MIN_PROMPTS, FAILS), (1.0, MIN_PROMPTS - 1, INCONCLUSIVE)])
def test_decay_claim(beta, prompts, verdict):
    decay = measured_findings(units_table(beta, 1.0, prompts), 8)[0]
    assert f"β > {DECAY:g}" in decay.claim and decay.verdict == verdict


@pytest.mark.parametrize("excess, spread, prompts, verdict", [
    (1.0, 0.01, MIN_PROMPTS, HOLDS),
    (1.5, 0.01, MIN_PROMPTS, FAILS),  # the generated keys get 1.5x their uniform share
    (EXCESS, 0.05, MIN_PROMPTS, INCONCLUSIVE),  # on the threshold: the interval spans it
    (1.0, 0.01, MIN_PROMPTS - 1, INCONCLUSIVE)])
def test_uniform_claim(excess, spread, prompts, verdict):
    uniform = measured_findings(units_table(1.0, excess, prompts, spread), 8)[1]
    assert f"less than {EXCESS:g}x" in uniform.claim and uniform.verdict == verdict
    assert uniform.measured.startswith("a(R) / uniform = ")


def test_resume_recomputes_nothing(done, tmp_path, monkeypatch):
    copy = shutil.copytree(done.path, tmp_path / "copy")
    before = (copy / "tables" / "units.csv").read_text()
    calls = []
    measure = e3_dilution.measure
    monkeypatch.setattr(e3_dilution, "measure", lambda *a: calls.append(a) or measure(*a))
    run_study("e3", copy, "small", overrides=OVERRIDES, progress=False, draw=False)
    assert calls == []
    assert (copy / "tables" / "units.csv").read_text() == before
    (copy / "units" / f"{e3_dilution.unit_name(64, 1)}.npz").unlink()  # as if killed there
    run_study("e3", copy, "small", overrides=OVERRIDES, progress=False, draw=False)
    assert [(len(a[2]), a[5]) for a in calls] == [(64, False)]  # probed, not bounded
    assert (copy / "tables" / "units.csv").read_text() == before


@pytest.mark.parametrize("bad, message", [
    ({"G": 1}, "G=1 must be >= 2"), ({"prompts": 0}, "prompts=0 must be >= 1"),
    ({"certified": 3, "prompts": 2}, "prompts=2 must be >= 3"),
    ({"lengths": []}, "lengths=[] must be a non-empty list")])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError) as error:
        config_for("e3", "small", bad)
    assert f"e3: {message}" in str(error.value)
