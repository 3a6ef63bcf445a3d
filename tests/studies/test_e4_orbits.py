"""E4 (orbits of f_P vs the random-mapping null): tables against brute-force orbits of the
stored maps, the stored maps against f_P, the Monte Carlo tests against a recomputation, the
null draws against their laws, figures, findings (on the run, and on synthetic draws where each
claim must hold, fail, or be undecided), and resumption after a kill."""

import math

import numpy as np
import pytest
from study_helpers import assert_figures

import dynsys as ds
from dynsys.data.prompts import make_prompt
from dynsys.dynamics.nullmodel import random_mapping_expectations
from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE, proportion_interval
from dynsys.studies import e4_orbits, run_study
from dynsys.studies.e4_orbits import (
    ALPHA,
    cyclic_points,
    mc_finding,
    mc_pvalue,
    shuffle_draws,
    uniform_draws,
)

# 48 and 64 share one prefill bucket: one compile per RoPE setting
OVERRIDES = {"lengths": [48, 64], "prompts": 2, "prompt_seed": 0, "shuffles": 3,
             "null_samples": 300}
UNITS = 2 * 2 * 2 * 2  # rope × kind × n × prompt


@pytest.fixture(scope="module")
def model():
    return ds.load("tiny", seed=0)


@pytest.fixture()
def loads(model, monkeypatch):
    """The study's model loads, served from the module's model (the config names it)."""
    calls = []

    def load(name, seed):
        calls.append((name, seed))
        return model

    monkeypatch.setattr(e4_orbits, "load", load)
    return calls


@pytest.fixture(scope="module")
def done(model, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e4_orbits, "load", lambda name, seed: model)
        return run_study("e4", tmp_path_factory.mktemp("e4") / "run", "small",
                         overrides=OVERRIDES, progress=False)


def brute_force(f: np.ndarray) -> dict:
    """Orbit statistics by walking from every token until a token repeats."""
    cycles, tails, reached = set(), [], []
    for v in range(f.size):
        path, seen = [], {}
        while v not in seen:
            seen[v] = len(path)
            path.append(v)
            v = int(f[v])
        cycle = frozenset(path[seen[v]:])
        cycles.add(cycle)
        tails.append(seen[v])
        reached.append(cycle)
    lengths = [len(c) for c in cycles]
    return {"cycles": len(cycles), "cyclic_nodes": sum(lengths),
            "largest_component": max(reached.count(c) for c in cycles),
            "longest_cycle": max(lengths), "tail": np.mean(tails),
            "terminal_nodes": f.size - len(set(f.tolist()))}


def test_map_table_matches_brute_force_orbits(done):
    rows = done.read_table("maps")
    assert len(rows) == UNITS
    for row in rows:
        f = done.load(e4_orbits.unit_name(row["rope"], row["kind"], row["n"], row["seed"]))["next"]
        assert row["vocab"] == f.size == 512
        for k, value in brute_force(f).items():
            assert row[k] == pytest.approx(value), (row, k)


def test_stored_maps_are_f_P(done, model):
    for rope, kind, n, seed in [(True, "ngram", 64, 1), (False, "random", 48, 0)]:
        unit = done.load(e4_orbits.unit_name(rope, kind, n, seed))
        fmap = ds.markov_map(model.with_rope(rope), make_prompt(kind, 512, n, seed, 3),
                             progress=False)
        np.testing.assert_array_equal(unit["next"], fmap.next)
        np.testing.assert_allclose(unit["margin"], fmap.margin, atol=1e-5)
        assert (unit["margin"] >= 0).all()


def test_summary_is_the_mean_over_prompts_next_to_the_null(done):
    maps, rows = done.read_table("maps"), done.read_table("orbits")
    assert len(rows) == 2 * 2 * 2 * len(e4_orbits.STATS)
    for r in rows:
        values = [m[r["statistic"]] for m in maps
                  if (m["rope"], m["kind"], m["n"]) == (r["rope"], r["kind"], r["n"])]
        assert len(values) == 2
        assert r["mean"] == pytest.approx(np.mean(values))
        assert r["ratio"] == pytest.approx(r["mean"] / r["expected"])
    expected = {r["statistic"]: r["expected"] for r in rows}
    assert expected["cyclic_nodes"] == pytest.approx(math.sqrt(math.pi * 512 / 2), rel=0.05)
    assert expected["cycles"] == pytest.approx((math.log(2 * 512) + 0.5772) / 2, rel=0.05)
    assert expected["largest_component"] == pytest.approx(0.7578 * 512, rel=1e-3)


def test_null_samples_agree_with_the_random_mapping_expectations(done):
    null = {r["statistic"]: r for r in done.read_table("null")}
    assert set(null) == set(e4_orbits.STATS)
    for r in null.values():
        assert r["samples"] == 300 and r["q05"] <= r["sample_mean"] <= r["q95"]
    for k in ("cycles", "cyclic_nodes", "tail", "terminal_nodes"):  # exact expectations
        assert null[k]["sample_mean"] == pytest.approx(null[k]["expected"], rel=0.12), k


def test_figures_are_written(done):
    assert_figures(done, ["e4_orbits"], min_bytes=10_000)


def test_cyclic_points_match_the_orbits(done):
    rng = np.random.default_rng(1)
    maps = np.concatenate([rng.integers(0, 512, (20, 512)), np.tile(np.arange(512), (1, 1)),
                           np.zeros((1, 512), int)])
    stored = np.stack([done.load(e4_orbits.unit_name(True, kind, 64, s))["next"]
                       for kind in ("ngram", "random") for s in (0, 1)])
    for f in (*maps, *stored):
        assert cyclic_points(f) == brute_force(f)["cyclic_nodes"]
    np.testing.assert_array_equal(cyclic_points(maps.reshape(2, 11, 512)).ravel(),
                                  [brute_force(f)["cyclic_nodes"] for f in maps])
    assert cyclic_points(np.array([0])) == 1


def test_null_draws_follow_their_laws(done):
    """The uniform draws' mean cyclic points match the exact expectation to 4 standard errors;
    the shuffles keep every token's in-degree."""
    draws = done.load("null")["cyclic"]
    assert draws.shape == (300,)
    expected = random_mapping_expectations(512).cyclic_nodes
    assert abs(draws.mean() - expected) < 4 * draws.std(ddof=1) / math.sqrt(draws.size)
    f = done.load(e4_orbits.unit_name(True, "random", 64, 0))["next"]
    shuffled = shuffle_draws(np.stack([f, f[::-1]]), np.random.default_rng(0))(5)
    assert shuffled.shape == (5, 2, 512)
    for row in shuffled[:, 0]:
        np.testing.assert_array_equal(np.bincount(row, minlength=512),
                                      np.bincount(f, minlength=512))
    assert uniform_draws(512, 3, np.random.default_rng(0))(4).shape == (4, 3, 512)


def test_tests_table_against_a_recomputation(done):
    rows = done.read_table("tests")
    assert len(rows) == 2 * 2 * 2 * 2  # rope × kind × n × null
    cells = list(dict.fromkeys((r["rope"], r["kind"], r["n"]) for r in rows))
    uniform = done.load("null")["cyclic"]
    for r in rows:
        maps = np.stack([done.load(e4_orbits.unit_name(r["rope"], r["kind"], r["n"], s))["next"]
                         for s in (0, 1)])
        observed = np.mean([brute_force(f)["cyclic_nodes"] for f in maps])
        assert r["observed"] == pytest.approx(observed) and r["draws"] == 300
        if r["null"] == "uniform":
            draws, k = uniform, (uniform <= observed).sum()
            assert r["tail"] == "lower"
        else:
            rng = np.random.default_rng([0, 1, cells.index((r["rope"], r["kind"], r["n"]))])
            draws = np.array([np.mean([brute_force(f)["cyclic_nodes"] for f in d])
                              for d in shuffle_draws(maps, rng)(300)])
            k = min((draws <= observed).sum(), (draws >= observed).sum())
            assert r["tail"] == "two-sided"
        factor = 1 if r["null"] == "uniform" else 2
        assert r["null_mean"] == pytest.approx(draws.mean())
        assert r["p"] == pytest.approx(min(1, factor * (k + 1) / 301))
        lo, hi = proportion_interval(int(k), 300)
        assert (r["p_lo"], r["p_hi"]) == pytest.approx((min(1, factor * lo), min(1, factor * hi)))


def test_findings_follow_the_table(done):
    found = e4_orbits.findings(done)
    tested = [r for r in done.read_table("tests") if r["n"] == 64]
    assert len(found) == len(tested) + 2 + 1  # the tests, basin per RoPE setting, on / off
    for f, r in zip(found, tested):
        assert f.experiment == "e4" and f"{r['kind']} prompts" in f.claim
        expected = HOLDS if r["p"] <= ALPHA else FAILS if r["p_other"] <= ALPHA else INCONCLUSIVE
        assert f.verdict == expected and f.test.p == min(r["p"], r["p_other"])
    assert found[0].claim.startswith("f_P has fewer cyclic points than a uniform random mapping")
    assert found[1].claim.startswith("f_P has a different number of cyclic points than its "
                                     "in-degree-preserving shuffles")
    assert all(f.verdict is None for f in found[len(tested):])


def synthetic_row(observed: float, draws: np.ndarray, null: str) -> dict:
    p, (lo, hi) = mc_pvalue(observed, draws, e4_orbits.NULLS[null][0])
    return {"rope": True, "kind": "random", "n": 1024, "null": null, "prompts": 8,
            "observed": observed, "null_mean": draws.mean(), "draws": len(draws), "p": p,
            "p_lo": lo, "p_hi": hi,
            "p_other": e4_orbits.opposite_pvalue(observed, draws, e4_orbits.NULLS[null][0])}


@pytest.mark.parametrize("null", ["uniform", "shuffle"])
def test_claims_on_synthetic_draws(null):
    """Draws ~ N(28, 5): an observation 6 sd below holds; one at the centre is absence of
    evidence (inconclusive, not fails); 6 sd above fails the one-sided "fewer" claim and
    leaves the two-sided claim inconclusive (no margin to fail against); one at the 5% point
    with 40 draws cannot be told from the level."""
    draws = 28 + 5 * np.random.default_rng(0).standard_normal(999)
    assert mc_finding(synthetic_row(-2.0, draws, null)).verdict == HOLDS
    assert mc_finding(synthetic_row(28.0, draws, null)).verdict == INCONCLUSIVE
    above = mc_finding(synthetic_row(58.0, draws, null)).verdict
    assert above == (FAILS if null == "uniform" else HOLDS)
    few = 28 + 5 * np.random.default_rng(1).standard_normal(40)
    edge = np.sort(few)[0 if null == "shuffle" else 1]  # p = 3/41 (lower), 4/41 (two-sided)
    found = mc_finding(synthetic_row(edge, few, null))
    assert found.verdict == INCONCLUSIVE and "(40 draws)" in found.measured


def test_mc_pvalue():
    draws = np.arange(1, 100.0)  # 99 draws
    assert mc_pvalue(0.5, draws, "lower") == (0.01, pytest.approx(proportion_interval(0, 99)))
    p, (lo, hi) = mc_pvalue(99.5, draws, "two-sided")  # none at or above: k = 0
    assert p == 0.02 and lo == 0 and hi == pytest.approx(2 * proportion_interval(0, 99)[1])
    assert mc_pvalue(50, draws, "two-sided")[0] == 1.0
    with pytest.raises(ValueError, match="tail='upper'"):
        mc_pvalue(1, draws, "upper")


def test_resume_recomputes_nothing(done, loads, monkeypatch):
    monkeypatch.setattr(e4_orbits, "markov_map", lambda *a, **k: pytest.fail("recomputed"))
    before = done.read_table("maps")
    again = run_study("e4", done.path, "small", overrides=OVERRIDES, progress=False,
                      draw=False)
    assert loads == [] and again.read_table("maps") == before


def test_killed_run_resumes_where_it_stopped(done, loads, tmp_path, monkeypatch):
    calls = []
    original = e4_orbits.markov_map

    def dying(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed while the sixth map runs
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(e4_orbits, "markov_map", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study("e4", tmp_path, "small", overrides=OVERRIDES, progress=False, draw=False)
    assert sorted(p.suffix for p in (tmp_path / "units").iterdir()) == [".npz"] * 5
    monkeypatch.setattr(e4_orbits, "markov_map",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = run_study("e4", tmp_path, "small", overrides=OVERRIDES, progress=False,
                        draw=False)
    assert len(calls) == UNITS and loads == [("tiny", 0)] * 2
    assert resumed.read_table("maps") == done.read_table("maps")
