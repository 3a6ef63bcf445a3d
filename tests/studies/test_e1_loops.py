"""E1, the untrained-model experiment: its tables against a brute-force recomputation from
the stored units, the random-map null against every map on a few tokens, its traces against
full forward passes, figures, findings (on the run, and on synthetic traces where each claim
must hold, fail, or be undecided), and resuming."""

import itertools
from collections import Counter

import numpy as np
import pytest
from study_helpers import CFG, assert_figures, brute_periodicity, small_study

import dynsys as ds
from dynsys.dynamics.nullmodel import indegree_orbit_null, random_map_null, random_mapping
from dynsys.runs import open_run
from dynsys.stats import decide, proportion_interval
from dynsys.studies import e1_loops, run_study
from dynsys.studies.e1_loops import Config, make_prompts, unit_name

SMALLER = dict(ngrams=[1, 2], length=48, new_tokens=60, prompts=6, batch=3, top=4, maps=2,
               shuffles=20)


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
    traces_table = {(r["rope"], r["N"], r["prompt"]): r for r in run.read_table("traces")}
    segments = run.read_table("segments")
    for (rope, N), (_, traces) in data.items():
        for j, t in enumerate(traces):
            row = traces_table[rope, N, j]
            loops = ds.traces.loop_segments(t, config.repeats)
            period, onset = brute_periodicity(t)
            assert (row["shortest"], row["period"], row["onset"]) == (
                brute_min_cycle(t), period, onset)
            assert (row["loops"], row["first_period"], row["last_period"]) == (
                len(loops), loops[0].period if loops else 0, loops[-1].period if loops else 0)
            assert [(r["start"], r["end"], r["period"], r["repeats"]) for r in segments
                    if (r["rope"], r["N"], r["prompt"]) == (rope, N, j)] == loops
    assert len(traces_table) == 2 * len(config.ngrams) * config.prompts
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


def test_random_map_null_medians_at_the_small_scale():
    """V = 512, G = 256, k = 3: medians 12 (cycle) and 26 (tail + cycle); and the orbits of
    4000 sampled random maps agree with the law."""
    null = {r["statistic"]: r for r in e1_loops.null_table(random_map_null(512, 256, 3), 256,
                                                           {})}
    assert (null["cycle"]["median"], null["rho"]["median"]) == (12, 26)
    assert null["cycle"]["share"] == pytest.approx(0.5307, abs=1e-4)
    law = random_map_null(512, 256, 3)
    rng = np.random.default_rng(0)
    maps = np.stack([random_mapping(512, rng) for _ in range(4000)])
    orbits = np.zeros((4000, 256), int)  # orbits of token 0
    for t in range(1, 256):
        orbits[:, t] = maps[np.arange(4000), orbits[:, t - 1]]
    short = ds.traces.periodicity_batch(orbits, 3).shortest
    sample = np.mean((short > 0) & (short <= 12))
    assert abs(sample - law["cycle"][1:13].sum()) < 3 * np.sqrt(0.25 / 4000)


def test_figures_and_findings(study):
    run, config, _ = study
    assert_figures(run, ("e1_cycle_lengths", "e1_loop_share", "e1_timeline"))
    found = e1_loops.findings(run)
    assert len(found) == 16 and all(f.experiment == "e1" for f in found)
    null = {r["statistic"]: r for r in e1_loops.null_table(
        random_map_null(CFG.vocab_size, config.new_tokens, 3), config.new_tokens, {})}
    data = stored(run, config)
    for rope, finding in zip((True, False), found[:2]):
        p = np.array([brute_min_cycle(t) for N in config.ngrams for t in data[rope, N][1]])
        hits = int(((p > 0) & (p <= null["cycle"]["median"])).sum())
        assert finding.verdict == decide(proportion_interval(hits, len(p)),
                                         null["cycle"]["share"])
        assert finding.measured.startswith(f"{hits}/{len(p)} = ")
    for rope_claim in found[4:6]:
        assert rope_claim.verdict in ("holds", "fails", "inconclusive")
        assert f"n = {len(config.ngrams) * config.prompts} pairs" in rope_claim.measured
        assert "power at no difference" in rope_claim.measured
    assert "fixed point" in found[5].claim
    # claims 1 and 2 against the in-degree-matched null: f_P∘σ of the stored maps
    for rope, finding in zip((True, False), found[10:14:2]):
        maps = np.stack([run.load(e1_loops.map_name(rope, N, j))["next"]
                         for N in config.ngrams for j in range(config.maps)])
        matched = {r["statistic"]: r for r in e1_loops.null_table(
            indegree_orbit_null(maps, config.new_tokens, 3, config.shuffles, config.seed),
            config.new_tokens, {})}
        p = np.array([brute_min_cycle(t) for N in config.ngrams for t in data[rope, N][1]])
        hits = int(((p > 0) & (p <= matched["cycle"]["median"])).sum())
        assert finding.verdict == decide(proportion_interval(hits, len(p)),
                                         matched["cycle"]["share"])
        assert "in-degrees" in finding.claim
    assert [f.verdict for f in found[14:]] == [None, None]


def trace_of(*pieces: list[int], G: int = 256) -> list[int]:
    """The pieces one after another, the last one repeated up to G tokens."""
    head = [t for piece in pieces[:-1] for t in piece]
    return (head + pieces[-1] * G)[:G]


def synthetic_findings(tmp_path, traces: dict, prompts: int, ngrams=(1, 2), maps=None
                       ) -> list[str]:
    """The verdicts of E1's tested claims (1, 2 on/off; 3 on loops and on fixed points; 4, 5
    on/off) on a run directory
    holding traces[rope](N, j) for each N and prompt j, V = 512 and G = 256 as at the small
    scale. With `maps` (a map of the 512 tokens), that map stands for f_P of the first two
    prompts of each N and RoPE setting and the verdicts of claims 1 and 2 against the
    in-degree-matched null follow."""
    config = Config(model="synthetic", ngrams=ngrams, length=8, new_tokens=256, prompts=prompts,
                    batch=prompts, maps=0 if maps is None else 2, shuffles=20)
    run = open_run(tmp_path / "run", "e1", config)
    for rope, N in itertools.product((True, False), ngrams):
        rows = np.array([traces[rope](N, j) for j in range(prompts)])
        run.save(unit_name(rope, N, 0), prompts=np.zeros((prompts, 8), int), traces=rows)
        for j in range(config.maps):
            run.save(e1_loops.map_name(rope, N, j), next=maps)
    e1_loops.write_tables(run, config, 512)
    return [f.verdict for f in e1_loops.findings(run) if f.verdict is not None]


def settles(N, j):
    """Five copies of one token, then a 3-gram loop to the end: a short cycle entered early
    (onset + period = 8 <= 26), first a uni-gram loop, then a longer one."""
    a = 10 * (4 * N + j)
    return trace_of([a] * 5, [a + 1, a + 2, a + 3])


def test_e1_claims_hold_on_traces_that_settle_into_short_loops(tmp_path):
    """64 prompts per RoPE setting, the same trace with RoPE on and off (with 32 pairs and no
    discordant one the score TOST cannot yet exclude a difference of 0.1)."""
    assert synthetic_findings(tmp_path, {True: settles, False: settles}, 32) == ["holds"] * 10


def test_e1_claims_fail_on_long_or_missing_loops(tmp_path):
    """RoPE on: 100 distinct tokens, then a 20-cycle (longer than the null's median, entered
    late, its first and only loop); RoPE off: 256 distinct tokens, no loop."""
    def late(N, j):
        return trace_of(list(range(100)), list(range(100, 120)))

    def never(N, j):
        return list(range(256))

    # neither setting ends in a fixed point: that share is the same with RoPE on and off
    found = synthetic_findings(tmp_path, {True: late, False: never}, 32)
    assert found == ["fails"] * 5 + ["holds"] + ["fails"] * 4


def test_rope_claim_fails_when_only_one_setting_ends_in_fixed_points(tmp_path):
    """RoPE on: a fixed point after two tokens; off: the 3-gram loop. Both loop (the loop
    shares agree), but the fixed-point shares differ by 1."""
    def fixed(N, j):
        a = 10 * (4 * N + j)
        return trace_of([a + 1, a + 2], [a])

    found = synthetic_findings(tmp_path, {True: fixed, False: settles}, 32)
    assert found[4:6] == ["holds", "fails"]


def test_claims_fail_against_an_in_degree_null_of_hub_maps(tmp_path):
    """Every token maps to token 0, a fixed point: f_P∘σ's orbits all end in it at once, so
    traces that settle into 3-cycles are not shorter than that null (claims 1 and 2 fail
    there) though they are shorter than a uniform random map's."""
    found = synthetic_findings(tmp_path, {True: settles, False: settles}, 32,
                               maps=np.zeros(512, int))
    assert found[:2] == ["holds", "holds"] and found[10:14] == ["fails"] * 4


def test_e1_claims_are_undecided_on_two_prompts(tmp_path):
    """The traces of the holding case, but 2 prompts per RoPE setting: every interval spans
    its threshold."""
    found = synthetic_findings(tmp_path, {True: settles, False: settles}, 2, ngrams=(1,))
    assert found == ["inconclusive"] * 10


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
