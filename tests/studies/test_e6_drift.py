"""E6 (RoPE position drift): stored maps against direct computation, tables against the stored
units, Proposition 0 exactly, figures, findings, and resumption."""

import numpy as np
import pytest

import dynsys as ds
from dynsys.studies import config_for, e6_drift, run_study
from dynsys.data.prompts import make_prompt
from study_helpers import assert_figures, decided

# 40 and 64 share one prefill bucket: one compile per RoPE setting
OVERRIDES = {"periods": [1, 2, 3], "lengths": [40, 64], "offsets": 4, "prompts": 1}
T = 4


@pytest.fixture(scope="module")
def model():
    return e6_drift.build_model(config_for("e6", "small", OVERRIDES))


@pytest.fixture(scope="module")
def done(model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e6_drift, "build_model", lambda config: model)
        return run_study("e6", tmp_path_factory.mktemp("e6") / "run", "small",
                         overrides=OVERRIDES, progress=False)


def stored(run, rope, N, n):
    return run.load(e6_drift.unit_name(rope, N, n, 0))


def test_build_model_reinitialises_the_preset(model, monkeypatch):
    assert model.config.initializer_range == 0.1 and model.config.vocab_size == 512
    q = model.params["blocks_0"]["attn"]["q"]["kernel"]
    assert float(np.std(q)) == pytest.approx(0.1, rel=0.02)
    monkeypatch.setattr(e6_drift, "load", lambda name, seed: ("loaded", name, seed))
    assert e6_drift.build_model(e6_drift.Config(initializer_range=0.0, seed=3)) == \
        ("loaded", "tiny", 3)
    assert e6_drift.build_model(e6_drift.Config(model="ckpt/", seed=3)) == \
        ("loaded", "ckpt/", 3)  # a checkpoint's weights are used as stored


def test_stored_maps_and_logit_changes_against_direct_steps(done, model):
    n, N = 64, 3
    prompt = make_prompt("ngram", 512, n, 0, ngram=N)
    unit = stored(done, True, N, n)
    assert unit["next"].shape == unit["margin"].shape == (T + 1, 512)
    assert unit["logit_change"].shape == (T, 512)
    prefix = ds.prefill(model, prompt)
    tokens = np.arange(512)[:, None]

    def logits(tau):
        return np.asarray(ds.step(model, prefix, tokens, np.full_like(tokens, n + tau))[0][:, 0])

    base = logits(0)
    for tau in (0, 2, 4):
        fmap = ds.markov_map(model, prompt, offset=tau, progress=False)
        np.testing.assert_array_equal(unit["next"][tau], fmap.next)
        if tau:
            np.testing.assert_allclose(unit["logit_change"][tau - 1],
                                       np.abs(logits(tau) - base).max(1), atol=1e-5)


def test_without_rope_every_offset_gives_the_same_map(done):
    for N in (1, 2, 3):
        for n in (40, 64):
            unit = stored(done, False, N, n)
            assert (unit["next"] == unit["next"][0]).all()
            assert (unit["logit_change"] == 0).all()
    off = [r for r in done.read_table("period") if not r["rope"]]
    assert len(off) == 6 and all(r["identical"] and r["max_changed"] == 0 for r in off)


def test_with_rope_the_map_drifts(done):
    moved = [stored(done, True, N, n) for N in (1, 2, 3) for n in (40, 64)]
    assert any((u["next"][1:] != u["next"][0]).any() for u in moved)
    assert all((u["logit_change"] > 0).all() for u in moved)


def test_drift_table_matches_the_units(done):
    rows = done.read_table("drift")
    assert len(rows) == 2 * 3 * 2 * T
    for r in rows:
        unit = stored(done, r["rope"], r["N"], r["n"])
        f, tau = unit["next"], r["tau"]
        assert r["changed"] == pytest.approx(sum(f[tau, v] != f[0, v] for v in range(512)) / 512)
        assert r["logit_change_max"] == pytest.approx(unit["logit_change"][tau - 1].max())
        assert r["multiple"] == (tau % r["N"] == 0)


def test_period_table_matches_the_units(done):
    rows = done.read_table("period")
    assert len(rows) == 2 * 3 * 2
    for r in rows:
        unit = stored(done, r["rope"], r["N"], r["n"])
        f, change = unit["next"], unit["logit_change"].mean(1)

        def defect(s):
            pairs = [(t, v) for t in range(T + 1 - s) for v in range(512)]
            return sum(f[t + s, v] != f[t, v] for t, v in pairs) / len(pairs)

        assert r["period_defect"] == pytest.approx(defect(r["N"]))
        assert r["step_defect"] == pytest.approx(defect(1))
        assert r["identical"] == (f == f[0]).all()
        if r["rope"] and r["N"] > 1:
            assert r["ratio_at_period"] == pytest.approx(change[r["N"] - 1]
                                                         / change[:r["N"] - 1].mean())
        else:
            assert np.isnan(r["ratio_at_period"])


def test_figures_are_written(done):
    assert_figures(done, ("e6_drift", "e6_period"), min_bytes=10_000)


def test_findings_follow_the_table(done):
    found = e6_drift.findings(done)
    assert [f.experiment for f in found] == ["e6"] * 4 and all(f.measured for f in found)
    rows = {(r["rope"], r["N"], r["n"]): r for r in done.read_table("period")}
    without, drifts, shift, periodic = found
    assert without.claim.startswith("without RoPE") and without.verdict == "holds"
    assert drifts.verdict == decided(any(r["max_changed"] > 0 for k, r in rows.items() if k[0]))
    assert shift.verdict == decided(all(rows[True, N, 64]["period_defect"]
                                        < rows[True, N, 40]["period_defect"] for N in (1, 2, 3)))
    assert periodic.verdict == decided(all(rows[True, N, 64]["ratio_at_period"]
                                           < rows[True, N, 40]["ratio_at_period"]
                                           for N in (2, 3)))


def test_resume_recomputes_only_missing_units(done, model, monkeypatch):
    tables = {p.name: p.read_text() for p in (done.path / "tables").iterdir()}
    calls, original = [], e6_drift.drift_unit
    monkeypatch.setattr(e6_drift, "build_model", lambda config: pytest.fail("model loaded"))
    monkeypatch.setattr(e6_drift, "drift_unit", lambda *a: pytest.fail("recomputed"))
    run_study("e6", done.path, "small", overrides=OVERRIDES, progress=False, draw=False)
    assert {p.name: p.read_text() for p in (done.path / "tables").iterdir()} == tables

    lost = done.path / "units" / f"{e6_drift.unit_name(True, 2, 40, 0)}.npz"
    lost.unlink()  # as if killed before this unit was written

    def counted(m, prompt, offsets):
        calls.append((m.config.use_rope, len(prompt), offsets))
        return original(m, prompt, offsets)

    monkeypatch.setattr(e6_drift, "build_model", lambda config: model)
    monkeypatch.setattr(e6_drift, "drift_unit", counted)
    run_study("e6", done.path, "small", overrides=OVERRIDES, progress=False, draw=False)
    assert calls == [(True, 40, T)] and lost.exists()
    assert {p.name: p.read_text() for p in (done.path / "tables").iterdir()} == tables


def test_offsets_must_reach_the_longest_period(tmp_path):
    with pytest.raises(ValueError, match="offsets=2 must be >= 3"):
        run_study("e6", tmp_path / "r", "small", overrides={**OVERRIDES, "offsets": 2},
                  progress=False)
    assert not (tmp_path / "r").exists()
