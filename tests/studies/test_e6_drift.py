"""E6 (RoPE position drift): stored maps against direct computation, tables against the stored
units, figures, findings (on the run, and on synthetic tables where each claim must hold, fail,
or be undecided), and resumption. Proposition 0 (no drift without RoPE) is a code invariant:
tests/dynamics/test_invariants.py."""

import numpy as np
import pytest
from study_helpers import assert_figures

import dynsys as ds
from dynsys.data.prompts import make_prompt
from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE
from dynsys.studies import config_for, e6_drift, run_study
from dynsys.studies.e6_drift import PERIOD, PERIODIC, verdicts
from dynsys.studies.sweep import MIN_PROMPTS

# 40 and 64 share one prefill bucket: one compile
OVERRIDES = {"periods": [1, 2, 3], "lengths": [40, 64], "offsets": 4, "prompts": 2}
T = 4
UNITS = [(N, n, s) for N in (1, 2, 3) for n in (40, 64) for s in (0, 1)]


@pytest.fixture(scope="module")
def model():
    return e6_drift.build_model(config_for("e6", "small", OVERRIDES))


@pytest.fixture(scope="module")
def done(model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e6_drift, "build_model", lambda config: model)
        return run_study("e6", tmp_path_factory.mktemp("e6") / "run", "small",
                         overrides=OVERRIDES, progress=False)


def stored(run, N, n, seed=0):
    return run.load(e6_drift.unit_name(N, n, seed))


def test_build_model_reinitialises_the_preset(model, monkeypatch):
    assert model.config.initializer_range == 0.1 and model.config.vocab_size == 512
    assert model.config.use_rope
    q = model.params["blocks_0"]["attn"]["q"]["kernel"]
    assert float(np.std(q)) == pytest.approx(0.1, rel=0.02)

    class Loaded:
        def __init__(self, name, seed):
            self.key = ("loaded", name, seed)

        def with_rope(self, on):
            return (*self.key, on)

    monkeypatch.setattr(e6_drift, "load", Loaded)
    assert e6_drift.build_model(e6_drift.Config(initializer_range=0.0, seed=3)) == \
        ("loaded", "tiny", 3, True)
    assert e6_drift.build_model(e6_drift.Config(model="ckpt/", seed=3)) == \
        ("loaded", "ckpt/", 3, True)  # a checkpoint's weights are used as stored, RoPE on


def test_stored_maps_and_logit_changes_against_direct_steps(done, model):
    n, N = 64, 3
    prompt = make_prompt("ngram", 512, n, 0, ngram=N)
    unit = stored(done, N, n)
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


def test_with_rope_the_map_drifts(done):
    moved = [stored(done, *key) for key in UNITS]
    assert any((u["next"][1:] != u["next"][0]).any() for u in moved)
    assert all((u["logit_change"] > 0).all() for u in moved)


def test_drift_table_matches_the_units(done):
    rows = done.read_table("drift")
    assert len(rows) == len(UNITS) * T
    for r in rows:
        unit = stored(done, r["N"], r["n"], r["seed"])
        f, tau = unit["next"], r["tau"]
        assert r["changed"] == pytest.approx(sum(f[tau, v] != f[0, v] for v in range(512)) / 512)
        assert r["logit_change_max"] == pytest.approx(unit["logit_change"][tau - 1].max())
        assert r["multiple"] == (tau % r["N"] == 0)


def test_prompt_and_period_tables_match_the_units(done):
    rows = done.read_table("prompts")
    assert [(r["N"], r["n"], r["seed"]) for r in rows] == UNITS
    for r in rows:
        unit = stored(done, r["N"], r["n"], r["seed"])
        f, change = unit["next"], unit["logit_change"].mean(1)

        def defect(f, s):
            pairs = [(t, v) for t in range(T + 1 - s) for v in range(512)]
            return sum(f[t + s, v] != f[t, v] for t, v in pairs) / len(pairs)

        assert r["period_defect"] == pytest.approx(defect(f, r["N"]))
        assert r["step_defect"] == pytest.approx(defect(f, 1))
        assert r["at_period"] == pytest.approx(change[r["N"] - 1])
        if r["N"] > 1:
            assert r["ratio"] == pytest.approx(change[r["N"] - 1] / change[:r["N"] - 1].mean())
        else:
            assert np.isnan(r["before"]) and np.isnan(r["ratio"])
        changed = max((f[t] != f[0]).mean() for t in range(1, T + 1))
        assert r["max_changed"] == pytest.approx(changed)
    period = done.read_table("period")
    assert [(r["N"], r["n"], r["prompts"]) for r in period] == [
        (N, n, 2) for N in (1, 2, 3) for n in (40, 64)]
    for p in period:
        sel = [r for r in rows if (r["N"], r["n"]) == (p["N"], p["n"])]
        assert p["period_defect"] == pytest.approx(np.mean([r["period_defect"] for r in sel]))
        assert p["at_period"] == pytest.approx(np.mean([r["at_period"] for r in sel]))


def test_figures_are_written(done):
    assert_figures(done, ("e6_drift", "e6_period"), min_bytes=10_000)


def test_findings_of_the_run(done):
    found = e6_drift.findings(done)
    assert [f.experiment for f in found] == ["e6"] * 8  # N=1: 2, N=2 and 3: 3 each
    assert [f.claim.split(" ")[0] for f in found] == ["with", "a", "with", "a", "the", "with",
                                                      "a", "the"]
    assert all(f.verdict is None for f in found if f.claim.startswith("with RoPE"))
    # 2 prompts per (N, n): no bootstrap verdict
    assert all(f.verdict == INCONCLUSIVE for f in found if f.verdict is not None)
    assert not any("without RoPE" in f.claim for f in found)  # Prop. 0 is a test, not a finding


def table(beta: float, before: float, prompts: int, N: int = 2, seed: int = 0) -> list[dict]:
    """Synthetic prompts-table rows: logit change at τ = N c_k n^−β and at τ < N c'_k n^−before,
    c, c' ~ 1 ± 30% per prompt (as the tiny model's prompts vary)."""
    rng = np.random.default_rng(seed)
    c, d = rng.uniform(0.7, 1.3, (2, prompts))
    rows = []
    for n in (256, 1024):
        for k in range(prompts):
            at, below = 0.1 * c[k] * (n / 256) ** -beta, 0.1 * d[k] * (n / 256) ** -before
            rows.append({"N": N, "n": n, "seed": k, "at_period": at, "before": below,
                         "ratio": at / below, "max_changed": 0.01})
    return rows


@pytest.mark.parametrize("beta, prompts, verdict", [
    (1.0, MIN_PROMPTS, HOLDS), (0.1, MIN_PROMPTS, FAILS), (1.0, MIN_PROMPTS - 1, INCONCLUSIVE)])
def test_period_claim(beta, prompts, verdict):
    _, period, _ = verdicts(table(beta, 0.3, prompts))
    assert f"β > {PERIOD:g}" in period.claim and period.verdict == verdict


@pytest.mark.parametrize("beta, before, prompts, verdict", [
    (1.0, 0.3, MIN_PROMPTS, HOLDS),  # τ = N diluted, τ < N barely: the ratio falls
    (0.5, 1.0, MIN_PROMPTS, FAILS),  # the ratio grows: τ < N is diluted faster
    (1.0, 0.3, MIN_PROMPTS - 1, INCONCLUSIVE)])
def test_periodic_claim(beta, before, prompts, verdict):
    _, _, periodic = verdicts(table(beta, before, prompts))
    assert f"γ > {PERIODIC:g}" in periodic.claim and periodic.verdict == verdict


def test_a_single_length_decides_nothing():
    rows = [r for r in table(1.0, 0.3, MIN_PROMPTS) if r["n"] == 1024]
    assert [f.verdict for f in verdicts(rows)] == [None]


def test_resume_recomputes_only_missing_units(done, model, monkeypatch):
    tables = {p.name: p.read_text() for p in (done.path / "tables").iterdir()}
    calls, original = [], e6_drift.drift_unit
    monkeypatch.setattr(e6_drift, "build_model", lambda config: pytest.fail("model loaded"))
    monkeypatch.setattr(e6_drift, "drift_unit", lambda *a: pytest.fail("recomputed"))
    run_study("e6", done.path, "small", overrides=OVERRIDES, progress=False, draw=False)
    assert {p.name: p.read_text() for p in (done.path / "tables").iterdir()} == tables

    lost = done.path / "units" / f"{e6_drift.unit_name(2, 40, 0)}.npz"
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
