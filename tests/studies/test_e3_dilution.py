"""E3 (dilution measured vs bound vs n): stored units against direct probes and certificates,
bound ≥ measured, tables against the units, figures, findings, and resumption."""

import shutil

import numpy as np
import pytest

import dynsys as ds
from dynsys.runs import read_run
from dynsys.studies import config_for, e3_dilution, findings, render, run_study

# 40 and 64 share one prefix capacity and one generation bucket: one compile per function
OVERRIDES = {"lengths": [40, 64], "G": 4, "prompts": 2}
UNITS = [(40, 0), (40, 1), (64, 0), (64, 1)]


@pytest.fixture(scope="module")
def model():
    return ds.load("tiny", seed=0)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    return run_study("e3", tmp_path_factory.mktemp("e3") / "run", "small", overrides=OVERRIDES,
                     progress=False)


def test_stored_unit_against_direct_probe_and_certificate(done, model):
    n, k = 40, 1
    unit = done.load(e3_dilution.unit_name(n, k))
    prompt = ds.prompts.random_tokens(512, n, seed=1000 * n + k)
    trace = np.asarray(ds.generate(model, prompt[None], 4))[0]
    np.testing.assert_array_equal(unit["trace"], trace)
    probe = ds.probe_trace(model, prompt, trace)
    cert = ds.certify(model, prompt, trace)
    assert unit["mass"].shape == unit["mass_bound"].shape == (4, 4, 4)  # G, L, N
    np.testing.assert_allclose(unit["mass"], probe.mass, atol=1e-6)
    np.testing.assert_allclose(unit["logit_change"], probe.logit_change, atol=1e-5)
    np.testing.assert_allclose(unit["residual"], probe.residual, atol=1e-5)
    np.testing.assert_allclose(unit["mass_bound"], cert.bound.mass, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(unit["logit_bound"], cert.bound.logits, rtol=1e-4)
    np.testing.assert_allclose(unit["margin"], cert.margin, atol=1e-5)
    assert int(unit["agreement"]) == probe.agreement
    assert int(unit["certified"]) == cert.horizon


def test_bound_above_measured_everywhere(done):
    for n, k in UNITS:
        u = done.load(e3_dilution.unit_name(n, k))
        assert (u["mass"][1:] > 0).all()  # r >= 1 generated keys get some attention
        assert (u["mass"] <= u["mass_bound"] + 1e-6).all()
        assert (u["logit_change"] <= u["logit_bound"] + 1e-5).all()
        assert (u["residual"] <= u["residual_bound"] * (1 + 1e-5) + 1e-5).all()
        assert 1 <= u["certified"] <= u["agreement"] <= 4
    assert all(r["holds"] for r in done.read_table("units"))


def test_tables_are_built_from_the_units(done, model):
    rows = {(r["n"], r["prompt"]): r for r in done.read_table("units")}
    assert sorted(rows) == UNITS
    for key, row in rows.items():
        u = done.load(e3_dilution.unit_name(*key))
        assert row["mass_last"] == pytest.approx(u["mass"][-1].max())
        assert row["mass_bound_r1"] == pytest.approx(u["mass_bound"][1].max())
        assert row["logit_bound_last"] == pytest.approx(u["logit_bound"][-1])
        assert row["logit_ratio"] == pytest.approx(
            np.median(u["logit_bound"][1:] / u["logit_change"][1:]))
        assert (row["certified"], row["agreement"]) == (u["certified"], u["agreement"])
    summary = done.read_table("summary")
    assert [r["n"] for r in summary] == [40, 64]
    for s in summary:
        for column in ("mass_last", "logit_r1", "certified", "mass_ratio"):
            assert s[column] == pytest.approx(np.mean([rows[s["n"], k][column] for k in (0, 1)]))
    layers = done.read_table("layers")
    assert [(r["n"], r["layer"]) for r in layers] == [(n, i) for n in (40, 64) for i in range(4)]
    units = [done.load(e3_dilution.unit_name(*key)) for key in UNITS]
    floor = min(float(u["floor"]) for u in units)
    margin = float(np.median(np.concatenate([u["margin"] for u in units])))
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


def test_findings(done):
    found = {f.claim: f for f in findings(done.path)}
    assert len(found) == 6 and all(f.experiment == "e3" for f in found.values())
    sound = next(f for c, f in found.items() if "never exceeds" in c)
    bound = next(f for c, f in found.items() if "is above the measured" in c)
    assert sound.verdict == "holds" and bound.verdict == "holds" and bound.measured == "4 of 4 traces"


def test_findings_report_a_violated_certificate(done, tmp_path):
    run = read_run(shutil.copytree(done.path, tmp_path / "copy"))
    rows = run.read_table("units")
    rows[0]["certified"] = rows[0]["agreement"] + 1
    run.write_table("units", rows)
    sound = next(f for f in e3_dilution.findings(run) if "never exceeds" in f.claim)
    assert sound.verdict == "fails"


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
    assert [len(a[2]) for a in calls] == [64]
    assert (copy / "tables" / "units.csv").read_text() == before


@pytest.mark.parametrize("bad, message", [
    ({"G": 1}, "G=1 must be >= 2"), ({"prompts": 0}, "prompts=0 must be >= 1"),
    ({"lengths": []}, "lengths=[] must be a non-empty list")])
def test_bad_settings_are_refused(bad, message):
    with pytest.raises(ValueError) as error:
        config_for("e3", "small", bad)
    assert f"e3: {message}" in str(error.value)
