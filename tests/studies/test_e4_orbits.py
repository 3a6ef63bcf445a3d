"""E4 (orbits of f_P vs the random-mapping null): tables against brute-force orbits of the
stored maps, the stored maps against f_P, figures, findings, and resumption after a kill."""

import math

import numpy as np
import pytest

import dynsys as ds
from dynsys.studies import e4_orbits, run_study
from dynsys.data.prompts import make_prompt
from study_helpers import assert_figures, decided

# 48 and 64 share one prefill bucket: one compile per RoPE setting
OVERRIDES = {"lengths": [48, 64], "prompts": 2, "shuffles": 3, "null_samples": 300}
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


def test_findings_follow_the_table(done):
    found = e4_orbits.findings(done)
    assert found and all(f.experiment == "e4" and f.measured for f in found)
    rows = done.read_table("orbits")
    for rope in (True, False):
        ratios = [r["ratio"] for r in rows if r["rope"] == rope and r["n"] == 64
                  and r["statistic"] in ("cycles", "cyclic_nodes")]
        tested = [f for f in found if "fewer cycles" in f.claim
                  and f"RoPE {'on' if rope else 'off'}" in f.claim]
        assert len(tested) == 1 and tested[0].verdict == decided(all(x < 1 for x in ratios))


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
