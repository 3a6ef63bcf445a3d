"""E5, trace cycles vs orbits of f_P: its tables against a brute-force recomputation from
the stored traces and maps, the stored maps and traces against full forward passes, figures,
findings, and resuming."""

import numpy as np
import pytest

import dynsys as ds
from dynsys.studies import e5_cycles, run_study
from dynsys.studies.e5_cycles import unit_name
from dynsys.data.prompts import make_prompt
from study_helpers import CFG, assert_figures, decided, small_study

SMALLER = dict(lengths=[32, 200], G=40, prompts=2)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(run, its config, the model): the small E5 made smaller, on CFG."""
    return small_study(tmp_path_factory, "e5", 4, SMALLER)


def brute_periodicity(trace, k=3) -> tuple[int, int]:
    """(period, onset): among p whose periodic suffix holds >= k copies, the longest suffix,
    ties to the smallest p; (0, len) if none."""
    G, best, onset = len(trace), 0, len(trace)
    for p in range(1, G // k + 1):
        start = G - p
        while start > 0 and trace[start - 1] == trace[start - 1 + p]:
            start -= 1
        if G - start >= k * p and start < onset:
            best, onset = p, start
    return best, onset


def brute_orbit(f, x) -> tuple[int, int]:
    """(tail, cycle length) of x under the map f, by walking it."""
    seen = {}
    while x not in seen:
        seen[x] = len(seen)
        x = int(f[x])
    return seen[x], len(seen) - seen[x]


def recompute(unit) -> dict:
    """The cycles-table numbers of one stored unit, from its trace and map alone."""
    trace, f = unit["trace"], unit["map_next"]
    period, onset = brute_periodicity(trace)
    tail, cycle = brute_orbit(f, int(trace[0]))
    ring = trace[onset:onset + period]
    follows = f[trace[:-1]] == trace[1:]
    return {"trace_period": period, "trace_onset": onset, "map_tail": tail, "map_cycle": cycle,
            "cycle_is_orbit": bool(period) and bool((f[ring] == np.roll(ring, -1)).all()),
            "first_divergence": int(np.argmin(follows)) + 1 if not follows.all() else len(trace),
            "agreement": pytest.approx(follows.mean())}


def test_tables_match_brute_force(study):
    run, config, _ = study
    rows = run.read_table("cycles")
    assert len(rows) == 2 * len(config.kinds) * len(config.lengths) * config.prompts
    for row in rows:
        unit = run.load(unit_name(row["rope"], row["kind"], row["n"], row["seed"]))
        np.testing.assert_array_equal(unit["prompt"], make_prompt(
            row["kind"], CFG.vocab_size, row["n"], row["seed"], config.ngram))
        assert unit["trace"].shape == (config.G,) and unit["map_next"].shape == (CFG.vocab_size,)
        assert {k: row[k] for k in recompute(unit)} == recompute(unit)
    summary = run.read_table("summary")
    assert [(r["rope"], r["n"]) for r in summary] == [(True, 32), (True, 200), (False, 32),
                                                       (False, 200)]
    for s in summary:
        sel = [r for r in rows if r["rope"] == s["rope"] and r["n"] == s["n"]]
        assert s["prompts"] == len(sel)
        assert s["looping"] == pytest.approx(np.mean([r["trace_period"] > 0 for r in sel]))
        assert s["cycle_is_orbit"] == pytest.approx(np.mean([r["cycle_is_orbit"] for r in sel]))
        assert s["period_is_cycle"] == pytest.approx(
            np.mean([r["trace_period"] == r["map_cycle"] for r in sel]))
        assert s["onset_is_tail"] == pytest.approx(
            np.mean([r["trace_onset"] == r["map_tail"] for r in sel]))


def test_stored_map_and_trace_against_forward(study):
    """Row v: P + [v] + x_2..x_G, whose logits at position n give f_P(v); the last row:
    P + trace, whose argmax from position n−1 on is the trace (teacher forcing)."""
    run, config, model = study
    for rope in (True, False):
        unit = run.load(unit_name(rope, "random", 200, 1))
        P, trace = unit["prompt"], unit["trace"]
        rows = np.concatenate([np.arange(CFG.vocab_size)[:, None], trace[None, :]
                               .repeat(CFG.vocab_size, 0)[:, 1:]], 1)
        rows = np.concatenate([rows, trace[None]])
        tokens = np.concatenate([np.broadcast_to(P, (len(rows), len(P))), rows], 1)
        greedy = np.asarray(ds.forward(model.with_rope(rope), tokens)).argmax(-1)
        np.testing.assert_array_equal(greedy[:-1, len(P)], unit["map_next"])
        np.testing.assert_array_equal(greedy[-1, len(P) - 1:-1], trace)


def test_figures_and_findings(study):
    run, config, _ = study
    assert_figures(run, ("e5_scatter", "e5_shares"))
    found = e5_cycles.findings(run)
    assert len(found) == 6 and all(f.experiment == "e5" for f in found)
    summary = run.read_table("summary")
    for finding, (key, rope) in zip(found, [(k, r) for k in e5_cycles.SHARES
                                            for r in (True, False)]):
        lo, hi = (next(s[key] for s in summary if s["rope"] == rope and s["n"] == n)
                  for n in (32, 200))
        assert finding.verdict == decided(hi >= 0.5 and hi >= lo)
        assert finding.measured == f"{lo:.2f} at n=32 -> {hi:.2f} at n=200"


def test_resume_recomputes_nothing_and_a_lost_unit_only(study, monkeypatch):
    run, config, model = study
    overrides = {**SMALLER, "model": config.model}
    tables = {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()}
    calls = []

    def counting(model, prompts, new_tokens):
        calls.append(np.asarray(prompts).shape)
        return ds.generate(model, prompts, new_tokens)

    monkeypatch.setattr(e5_cycles, "generate", counting)
    for name in ("load", "markov_map", "compare"):
        monkeypatch.setattr(e5_cycles, name, lambda *a, **k: pytest.fail("recomputed"))
    run_study("e5", run.path, "small", overrides, progress=False)
    assert calls == []
    (run.path / "units" / f"{unit_name(False, 'ngram', 200, 1)}.npz").unlink()  # killed there
    monkeypatch.undo()
    monkeypatch.setattr(e5_cycles, "generate", counting)
    monkeypatch.setattr(e5_cycles, "load", lambda *a, **k: model)
    run_study("e5", run.path, "small", overrides, progress=False)
    assert calls == [(1, 200)]
    assert {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()} == tables
