"""E9 (loop surgery), on the training of E7's tests, reused as `dynsys verify` reuses it
("../e7/train"): the prompts, the tables against a recomputation from the stored units and the
final checkpoint, resuming, figures, and each finding on synthetic data."""

import itertools

import numpy as np
import pytest
from study_helpers import assert_figures, counting
from test_e7_training import STEPS, TRAINING, shared_e7

import dynsys as ds
from dynsys.data import EOT, encode, english, load_tokenizer, split
from dynsys.decode.sampling import Sampler
from dynsys.dynamics.traces import repetition_stop
from dynsys.studies import e9_surgery, render_run, run_study, training
from dynsys.studies.e9_surgery import (
    BREAKERS,
    KINDS,
    Config,
    breaker_unit,
    fix_unit,
    loss_finding,
    map_choice,
    rate_finding,
    stay_finding,
)
from dynsys.surgery import NeuronEdit, apply_edit
from dynsys.surgery.loops import looping

E9 = {**TRAINING, "prompts": 8, "length": 12, "list_length": 12, "random_length": 10, "G": 30,
      "ks": [1, 4], "maps": 2, "windows": 4, "collapse_window": 2, "resamples": 50}
CONFIG = Config(**{**E9, "ks": (1, 4)}, training="../e7/train")
HALF = CONFIG.prompts // 2


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(E9's run, E7's run, E7's training log before E9 ran)."""
    e7 = shared_e7(tmp_path_factory)
    log = (e7.path / "train" / "log.csv").read_bytes()
    run = run_study("e9", e7.path.parent / "e9", "small", E9, progress=False, draw=False)
    return run, e7, log


def final_model(e7):
    return ds.load(e7.path / "train" / "checkpoints" / f"step_{STEPS[-1]:07d}")


def test_settings_are_checked():
    with pytest.raises(ValueError, match="ks=\\[1, 100\\]: the model has only"):
        Config(**{**E9, "ks": (1, 100)})
    with pytest.raises(ValueError, match="maps=13 exceeds the 12 test prompts"):
        Config(**{**E9, "ks": (1,), "maps": 13})
    with pytest.raises(ValueError, match="method='x' must be in"):
        Config(**{**E9, "ks": (1,), "method": "x"})
    with pytest.raises(ValueError, match="seq_len=48 must be >= 50"):
        Config(**{**E9, "ks": (1,), "G": 37})
    assert e9_surgery.SCALES["small"].training == "../e7/train"
    assert e9_surgery.SCALES["paper"].training == "../e7-paper/train"
    dry = CONFIG.sampler("dry")
    assert (dry.dry_multiplier, dry.dry_base, dry.dry_allowed_length) == (0.8, 1.75, 2)
    assert CONFIG.sampler("penalty").repetition_penalty == 1.3
    assert CONFIG.sampler("ngram").no_repeat_ngram_size == 3


def test_map_choice_takes_looping_prompts_in_turn_from_each_kind():
    kinds = ["text"] * 3 + ["list"] * 3 + ["random"] * 3
    loops = np.array([0, 1, 1, 0, 0, 0, 1, 0, 0], bool)
    assert map_choice(loops, kinds, 4).tolist() == [1, 6, 2, 0]


def test_it_reuses_e7s_training(study):
    run, e7, log = study
    assert run.config["training"] == "../e7/train" and not (run.path / "train").exists()
    assert (e7.path / "train" / "log.csv").read_bytes() == log  # nothing trained again
    assert run.read_table("training") == e7.read_table("training")


def test_prompts_are_held_out_and_split(study):
    run, _, _ = study
    unit = run.load("prompts")
    tokenizer = load_tokenizer(run.path / "tokenizer")
    held = split((english(),), CONFIG.held_out, CONFIG.seed)[1].documents
    ids = encode(tokenizer, held)
    size = CONFIG.windows * (CONFIG.seq_len + 1)
    np.testing.assert_array_equal(unit["windows"].ravel(), ids[:size])
    segments = ids[size:size + (len(ids) - size) // CONFIG.length * CONFIG.length]
    segments = segments.reshape(-1, CONFIG.length)
    assert unit["text"].shape == (CONFIG.prompts, CONFIG.length)
    assert all((segments == p).all(1).any() for p in unit["text"])
    eot = tokenizer.token_to_id(EOT)
    train_side = set(split(training.corpus(CONFIG), CONFIG.held_out,
                           CONFIG.seed)[0].documents)
    assert unit["list"].shape == (CONFIG.prompts, CONFIG.list_length + 1)
    documents = e9_surgery.list_documents(CONFIG, 4 * CONFIG.prompts)[0]
    assert not set(documents) & train_side  # held-out or fresh: never trained on
    for row in unit["list"]:
        assert row[0] == eot and eot not in row[1:]
        text = tokenizer.decode(row[1:].tolist(), skip_special_tokens=False)
        assert any(d.startswith(text) and d != text for d in documents)
    np.testing.assert_array_equal(unit["random"], training.make_prompts(
        "random", CONFIG.vocab, CONFIG.random_length, CONFIG.prompts, CONFIG.seed))
    loc, test, kinds = e9_surgery.halves(CONFIG, unit)
    assert len(loc) == len(test) == 3 * HALF and kinds == [k for k in KINDS for _ in range(HALF)]
    pieces = [tokenizer.decode([int(i)], skip_special_tokens=False) for i in unit["delimiter"]]
    assert pieces and all("\n" in p or "," in p for p in pieces)


def test_tables_follow_the_units_and_the_model(study):
    run, e7, _ = study
    model = final_model(e7)
    unit, base = run.load("prompts"), run.load("base")
    rows = {r["kind"]: r for r in run.read_table("prompts")}
    for kind in KINDS:  # greedy traces: teacher forcing reproduces them
        prompts, traces = unit[kind], base[kind]
        logits = np.asarray(ds.forward(model, np.concatenate([prompts, traces], 1)))
        np.testing.assert_array_equal(logits.argmax(-1)[:, prompts.shape[1] - 1:-1], traces)
        loops = looping(traces, CONFIG.repeats)
        assert rows[kind]["loop_rate"] == pytest.approx(loops.mean())
        stop = repetition_stop(traces, 1, CONFIG.G // 3, 3)
        assert rows[kind]["stop_rate"] == pytest.approx((stop < CONFIG.G).mean())
    sweep = run.read_table("ablation")
    assert [(r["layer"], r["component"]) for r in sweep] == [(0, "attn_out"), (0, "mlp_out")]
    found = run.load("attribution")
    ranking = e9_surgery.ranked(found, CONFIG.method)
    neurons = run.read_table("neurons")
    assert [(r["layer"], r["neuron"]) for r in neurons] == ranking[:4]
    assert all(a["grad_x_act"] >= b["grad_x_act"] for a, b in itertools.pairwise(neurons))
    _, test, _ = e9_surgery.halves(CONFIG, unit)
    fix = run.load(fix_unit("zero", 4))  # the edit recomputed from its neurons
    assert [tuple(p) for p in fix["neurons"]] == ranking[:4]
    after = apply_edit(model, NeuronEdit(tuple(ranking[:4]), "zero"))
    np.testing.assert_array_equal(fix["loop_after"], looping(
        np.asarray(ds.generate(after, test, CONFIG.G).tokens), CONFIG.repeats))
    np.testing.assert_array_equal(fix["loop_before"], looping(
        np.concatenate([base[k][HALF:] for k in KINDS]), CONFIG.repeats))
    baseline = run.load("baseline")  # the unedited side, computed once for every fix
    np.testing.assert_array_equal(baseline["traces"], np.asarray(ds.generate(model, test,
                                                                             CONFIG.G).tokens))
    np.testing.assert_array_equal(fix["loss_before"], baseline["losses"])
    table = {(r["fix"], r["k"], r["quantity"], r["kind"]): r for r in run.read_table("fixes")}
    row = table["zero", 4, "loop", "all"]
    assert (row["before"], row["after"]) == pytest.approx((fix["loop_before"].mean(),
                                                           fix["loop_after"].mean()))
    assert row["loss_change"] == pytest.approx((fix["loss_after"] - fix["loss_before"]).mean())
    dry = run.load(breaker_unit("dry"))
    sampler = Sampler(dry_multiplier=0.8, dry_base=1.75, dry_allowed_length=2,
                      dry_sequence_breakers=tuple(int(b) for b in unit["dry_breakers"]))
    np.testing.assert_array_equal(dry["traces"], np.asarray(ds.generate(model, test, CONFIG.G,
                                                                        sampler=sampler).tokens))
    assert table["dry", 0, "loop", "all"]["after"] == pytest.approx(
        looping(dry["traces"], CONFIG.repeats).mean())
    maps = run.load("maps")
    for i, j in enumerate(maps["chosen"]):
        np.testing.assert_array_equal(maps["next"][i], ds.markov_map(model, test[j]).next)


def test_figures_and_findings(study):
    run, _, _ = study
    render_run(run)
    assert_figures(run, ("e9_localise", "e9_fixes", "e9_attractors"))
    found = e9_surgery.findings(run)
    assert all(f.experiment == "e9" for f in found)
    assert [f.verdict for f in found[:3]] == [None, None, None]
    assert len(found) == 3 + 3 + 2 * len(BREAKERS) - 1  # no stay claim for no-repeat-ngram
    assert all(f.verdict in ("holds", "fails", "inconclusive") for f in found[3:])
    fix = run.load(fix_unit("zero", 4))
    assert found[3].measured.startswith(f"loop rate {fix['loop_before'].mean():.2f} -> "
                                        f"{fix['loop_after'].mean():.2f}")


def test_resume_recomputes_nothing_and_a_lost_unit_only(study, monkeypatch):
    run, _, _ = study
    tables = {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()}
    calls = []
    for name in ("generate", "judge", "ablation_sweep", "neuron_attribution", "markov_map"):
        monkeypatch.setattr(e9_surgery.study, name,
                            counting(calls, name, getattr(e9_surgery.study, name)))
    monkeypatch.setattr(training, "train_tokenizer", lambda *a: pytest.fail("corpus rebuilt"))
    run_study("e9", run.path, "small", E9, progress=False, draw=False)
    assert calls == []
    for unit in (fix_unit("flip", 1), breaker_unit("ngram")):  # a run killed there
        (run.path / "units" / f"{unit}.npz").unlink()
    run_study("e9", run.path, "small", E9, progress=False, draw=False)
    assert sorted(calls) == ["generate", "judge"]
    assert {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()} == tables


# --- the findings on synthetic data -------------------------------------------------------

def flags(*pairs) -> tuple[np.ndarray, np.ndarray]:
    """(before, after) flags from (before, after, count) groups of prompts."""
    before = np.concatenate([np.full(n, b, bool) for b, _, n in pairs])
    after = np.concatenate([np.full(n, a, bool) for _, a, n in pairs])
    return before, after


def test_rate_finding():
    assert rate_finding("c", *flags((1, 0, 30), (1, 1, 20), (0, 0, 50))).verdict == "holds"
    assert rate_finding("c", *flags((0, 1, 30), (1, 1, 20), (0, 0, 50))).verdict == "fails"
    # no change on any prompt: Tango's interval is about ±0.02, it spans 0
    assert rate_finding("c", *flags((1, 1, 40), (0, 0, 60))).verdict == "inconclusive"
    assert rate_finding("c", *flags((1, 0, 2), (1, 1, 3))).verdict == "inconclusive"
    found = rate_finding("c", *flags((1, 0, 30), (1, 1, 20), (0, 0, 50)))
    assert "loop rate 0.50 -> 0.20; paired difference -0.300" in found.measured


def test_loss_finding():
    rng = np.random.default_rng(0)
    small = 0.01 + 0.005 * rng.standard_normal(40)
    assert loss_finding("c", small, 0.05).verdict == "holds"
    assert loss_finding("c", small + 0.2, 0.05).verdict == "fails"
    assert loss_finding("c", np.array([0.0, 0.1, -0.05]), 0.05).verdict == "inconclusive"
    assert loss_finding("c", np.zeros(5), 0.05).verdict == "holds"  # an unchanged model


def test_stay_finding():
    assert stay_finding("c", np.full(8, 0.9) + np.linspace(0, 0.05, 8), 0.5, 1, 200,
                        0).verdict == "holds"
    assert stay_finding("c", np.linspace(0, 0.2, 8), 0.5, 1, 200, 0).verdict == "fails"
    assert stay_finding("c", np.array([0.0, 1.0, 0.1, 0.9]), 0.5, 1, 200,
                        0).verdict == "inconclusive"
    assert stay_finding("c", np.ones(3), 0.5, 1, 200, 0).verdict == "holds"
