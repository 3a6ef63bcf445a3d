"""E1, the untrained-model experiment: its tables against a brute-force recomputation from
the stored units, its traces against full forward passes, figures, findings, and resuming."""

from collections import Counter

import numpy as np
import pytest

import dynsys as ds
from dynsys.studies import e1_loops, run_study
from dynsys.studies.e1_loops import Config, make_prompts, unit_name
from study_helpers import assert_figures, decided, small_study

SMALLER = dict(ngrams=[1, 2], length=48, new_tokens=60, prompts=6, batch=3, top=4)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(run, its config, the model): the small E1 made smaller, on CFG."""
    return small_study(tmp_path_factory, "e1", 3, SMALLER)


def brute_min_cycle(trace, k=3) -> int:
    """Smallest p whose last k·p tokens are k copies of one p-block; 0 if none."""
    for p in range(1, len(trace) // k + 1):
        blocks = trace[len(trace) - k * p:].reshape(k, p)
        if (blocks == blocks[0]).all():
            return p
    return 0


def stored(run, config):
    """(rope, N) → (prompts, traces) concatenated over the stored batches."""
    out = {}
    for rope in (True, False):
        for N in config.ngrams:
            units = [run.load(unit_name(rope, N, b))
                     for b in range(config.prompts // config.batch)]
            out[rope, N] = tuple(np.concatenate([u[k] for u in units])
                                 for k in ("prompts", "traces"))
    return out


def test_prompts_are_repeated_ngrams_split_into_batches():
    config = Config(length=10, prompts=5, batch=2)
    batches = [make_prompts(config, 100, 3, b) for b in range(3)]
    assert [len(b) for b in batches] == [2, 2, 1]
    rows = np.concatenate(batches)
    assert (rows[:, 3:] == rows[:, :-3]).all()  # period 3 everywhere
    assert len({tuple(r[:3]) for r in rows}) == 5  # five different 3-grams
    other = make_prompts(Config(length=10, prompts=5, batch=2, seed=1), 100, 3, 0)
    assert not np.array_equal(other, batches[0])


def test_tables_match_brute_force(study):
    run, config, _ = study
    data = stored(run, config)
    loops = {(r["rope"], r["N"]): r for r in run.read_table("loops")}
    lengths = run.read_table("cycle_lengths")
    attractors = run.read_table("attractors")
    for rope in (True, False):
        members, fixed, looping = Counter(), Counter(), 0
        for N in config.ngrams:
            prompts, traces = data[rope, N]
            assert prompts.shape == (config.prompts, config.length)
            assert traces.shape == (config.prompts, config.new_tokens)
            assert (prompts[:, N:] == prompts[:, :-N]).all()
            np.testing.assert_array_equal(prompts, data[not rope, N][0])  # same prompts
            p = np.array([brute_min_cycle(t) for t in traces])
            row = loops[rope, N]
            assert (row["traces"], row["looping"]) == (len(p), (p > 0).sum())
            assert row["loop_share"] == pytest.approx((p > 0).mean())
            assert row["fixed_point_share"] == pytest.approx((p == 1).mean())
            assert {r["length"]: r["count"] for r in lengths
                    if r["rope"] == rope and r["N"] == N} == dict(Counter(p.tolist()))
            members.update(v for t, q in zip(traces, p) if q for v in set(t[-q:].tolist()))
            fixed.update(int(t[-1]) for t, q in zip(traces, p) if q == 1)
            looping += (p > 0).sum()
        table = [r for r in attractors if r["rope"] == rope]
        assert [r["rank"] for r in table] == list(range(1, len(table) + 1))
        assert [r["traces"] for r in table] == sorted(members.values(), reverse=True)[:config.top]
        for r in table:
            assert r["traces"] == members[r["token"]]
            assert r["share"] == pytest.approx(r["traces"] / looping)
            assert r["fixed_point"] == fixed[r["token"]]


def test_traces_are_greedy_continuations(study):
    """Teacher forcing: argmax of a full forward pass over prompt + trace gives the trace,
    with the RoPE setting the unit's name says; the settings differ on some trace."""
    run, config, model = study
    data = stored(run, config)
    for rope in (True, False):
        prompts, traces = data[rope, 2]
        logits = ds.forward(model.with_rope(rope), np.concatenate([prompts, traces], 1))
        greedy = np.asarray(logits).argmax(-1)[:, config.length - 1:-1]
        np.testing.assert_array_equal(greedy, traces)
    assert any(not np.array_equal(data[True, N][1], data[False, N][1]) for N in config.ngrams)


def test_figures_and_findings(study):
    run, config, _ = study
    assert_figures(run, ("e1_cycle_lengths", "e1_loop_share"))
    found = e1_loops.findings(run)
    assert len(found) == 5 and all(f.experiment == "e1" for f in found)
    for rope, finding in zip((True, False), found):
        p = np.array([brute_min_cycle(t) for N in config.ngrams
                      for t in stored(run, config)[rope, N][1]])
        assert finding.verdict == decided((p > 0).mean() > 0.5)
        assert finding.measured.startswith(f"{(p > 0).sum()}/{len(p)} traces loop")
    assert found[2].verdict in ("holds", "fails") and [f.verdict for f in found[3:]] == [None, None]


def test_resume_recomputes_nothing_and_a_lost_unit_only(study, monkeypatch):
    run, config, model = study
    overrides = {**SMALLER, "model": config.model}
    tables = {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()}
    calls = []

    def counting(model, prompts, new_tokens):
        calls.append(len(prompts))
        return ds.generate(model, prompts, new_tokens)

    monkeypatch.setattr(e1_loops, "generate", counting)
    monkeypatch.setattr(e1_loops, "load", lambda *a, **k: pytest.fail("model loaded"))
    run_study("e1", run.path, "small", overrides, progress=False)
    assert calls == []
    (run.path / "units" / f"{unit_name(False, 2, 1)}.npz").unlink()  # a run killed there
    monkeypatch.setattr(e1_loops, "load", lambda *a, **k: model)
    run_study("e1", run.path, "small", overrides, progress=False)
    assert calls == [3]
    assert {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()} == tables
