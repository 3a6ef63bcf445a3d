"""E5, trace cycles vs orbits of f_P: its tables against a brute-force recomputation from
the stored traces and maps, the stored maps and traces against full forward passes, figures,
findings (on the run, and on synthetic tables where each claim must hold, fail, or be
undecided), the sample size and the interval of a difference, and resuming."""

import itertools

import numpy as np
import pytest
from study_helpers import CFG, assert_figures, brute_periodicity, small_study

import dynsys as ds
from dynsys.data.prompts import make_prompt
from dynsys.runs import open_run
from dynsys.stats import proportion_interval
from dynsys.studies import e5_cycles, run_study
from dynsys.studies.e5_cycles import CELL, Config, unit_name

SMALLER = dict(lengths=[32, 200], G=40, prompts=2)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(run, its config, the model): the small E5 made smaller, on CFG."""
    return small_study(tmp_path_factory, "e5", 4, SMALLER)


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
    run, _, model = study
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
    """Cells of 4 traces (2 prompts of 2 kinds) decide nothing; measured names the counts."""
    run, _, _ = study
    assert_figures(run, ("e5_scatter", "e5_shares"))
    found = e5_cycles.findings(run)
    assert len(found) == 6 and all(f.experiment == "e5" for f in found)
    rows = run.read_table("cycles")
    counts = {"cycle_is_orbit": lambda r: r["cycle_is_orbit"],
              "period_is_cycle": lambda r: r["trace_period"] == r["map_cycle"],
              "onset_is_tail": lambda r: r["trace_onset"] == r["map_tail"]}
    for finding, (key, rope) in zip(found, itertools.product(counts, (True, False))):
        k = {n: sum(bool(counts[key](r)) for r in rows if r["rope"] == rope and r["n"] == n)
             for n in (32, 200)}
        assert finding.verdict == "inconclusive"
        assert finding.measured.startswith(f"n=200: {k[200]}/4 = ")
        assert f"n=32: {k[32]}/4 = " in finding.measured
        assert ("(RoPE on)" if rope else "(RoPE off)") in finding.claim


def test_cell_is_the_least_sample_for_a_half_width_of_a_tenth():
    def widest(n):
        return max(hi - lo for lo, hi in (proportion_interval(k, n) for k in range(n + 1))) / 2
    assert widest(CELL) <= 0.1 < widest(CELL - 1)


def synthetic_findings(tmp_path, cells: dict) -> list[str]:
    """The verdicts of E5's findings on a run directory whose cycles table holds, per
    (rope, n) in cells, (traces that follow f_P, traces): a trace that follows it has its
    terminal cycle on an orbit of f_P, period = cycle length and onset = tail; the others
    none of these."""
    run = open_run(tmp_path / "run", "e5", Config(lengths=(64, 1024), prompts=1))
    rows = []
    for (rope, n), (follow, traces) in cells.items():
        for seed in range(traces):
            ok = seed < follow
            rows.append({"rope": rope, "kind": "random", "n": n, "seed": seed,
                         "trace_period": 2, "trace_onset": 5, "map_tail": 5 if ok else 9,
                         "map_cycle": 2 if ok else 3, "cycle_is_orbit": ok,
                         "first_divergence": 40, "agreement": 1.0 if ok else 0.5})
    run.write_table("cycles", rows)
    run.write_table("summary", e5_cycles.summary_table(rows))
    return [f.verdict for f in e5_cycles.findings(run)]


def cells(small: tuple[int, int], large: tuple[int, int]) -> dict:
    """The same counts for RoPE on and off: small at n = 64, large at n = 1024."""
    return {(rope, n): counts for rope in (True, False)
            for n, counts in ((64, small), (1024, large))}


def test_e5_claims_hold_when_traces_follow_f_p_at_large_n_only(tmp_path):
    assert synthetic_findings(tmp_path, cells((10, CELL), (90, CELL))) == ["holds"] * 6


def test_e5_claims_fail_below_one_half_or_when_the_share_falls(tmp_path):
    assert synthetic_findings(tmp_path / "low", cells((0, CELL), (30, CELL))) == ["fails"] * 6
    assert synthetic_findings(tmp_path / "falls", cells((CELL, CELL), (70, CELL))) == \
        ["fails"] * 6


def test_e5_ties_never_hold(tmp_path):
    """Equal shares above 1/2 at both n: no growth shown (a tie at or below 1/2 fails)."""
    assert synthetic_findings(tmp_path / "high", cells((80, CELL), (80, CELL))) == \
        ["inconclusive"] * 6
    assert synthetic_findings(tmp_path / "low", cells((40, CELL), (40, CELL))) == ["fails"] * 6


def test_e5_claims_are_undecided_on_cells_under_the_planned_size(tmp_path):
    """Unanimous cells of 6 traces (the small scale's) or one short of CELL decide nothing."""
    assert synthetic_findings(tmp_path / "six", cells((0, 6), (6, 6))) == ["inconclusive"] * 6
    assert synthetic_findings(tmp_path / "short", cells((10, CELL), (90, CELL - 1))) == \
        ["inconclusive"] * 6


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
