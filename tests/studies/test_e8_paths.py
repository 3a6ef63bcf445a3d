"""E8 (under-trained paths), on the training of E7's tests, reused as `dynsys verify` reuses
it ("../e7/train"): the texts, the tables against a brute-force recomputation from the stored
units, the losses against a forward pass, resuming, figures, and each finding on synthetic
data."""

import dataclasses

import numpy as np
import pytest
from scipy.special import log_softmax
from study_helpers import assert_figures, counting
from test_e7_training import STEPS, TRAINING, brute_anywhere, brute_end, shared_e7

import dynsys as ds
from dynsys.data import load_tokenizer, split
from dynsys.studies import e8_paths, render_run, run_study, training
from dynsys.studies.e8_paths import LANGUAGES, Config, loss_finding, nearest_finding, step_unit

E8 = {**TRAINING, "prompts": 6, "length": 16, "reference_length": 10, "G": 30, "windows": 4,
      "resamples": 50}
CONFIG = Config(**E8, training="../e7/train")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(E8's run, E7's run, E7's training log before E8 ran)."""
    e7 = shared_e7(tmp_path_factory)
    log = (e7.path / "train" / "log.csv").read_bytes()
    run = run_study("e8", e7.path.parent / "e8", "small", E8, progress=False, draw=False)
    return run, e7, log


def test_it_reuses_e7s_training(study):
    run, e7, log = study
    assert run.config["training"] == "../e7/train" and not (run.path / "train").exists()
    assert (e7.path / "train" / "log.csv").read_bytes() == log  # nothing trained again
    assert run.read_table("training") == e7.read_table("training")
    for name in ("tokens", "corpus"):
        assert run.read_table(name) == e7.read_table(name)


def test_texts_are_unseen_and_cut_into_segments(study):
    run, _, _ = study
    tokenizer = load_tokenizer(run.path / "tokenizer")
    trained = {d for part in training.corpus(CONFIG) for d in part.documents}
    train_side = set(split(training.corpus(CONFIG), CONFIG.held_out, CONFIG.seed)[0].documents)
    texts = {r["language"]: r for r in run.read_table("texts")}
    for language in LANGUAGES:
        unit = run.load(f"text_{language}")
        source, ids = e8_paths.text(CONFIG, tokenizer, language)
        assert not set(source.documents) & (train_side if language == "english" else trained)
        again = e8_paths.text_unit(CONFIG, tokenizer, language)
        for key in ("prompts", "windows", "tokens", "bytes"):
            np.testing.assert_array_equal(unit[key], again[key])
        assert unit["prompts"].shape == (CONFIG.prompts, CONFIG.length)
        segments = ids[:len(ids) // CONFIG.length * CONFIG.length].reshape(-1, CONFIG.length)
        assert all((segments == p).all(1).any() for p in unit["prompts"])
        np.testing.assert_array_equal(unit["windows"].ravel(), ids[:unit["windows"].size])
        assert texts[language]["bytes"] == sum(len(d.encode()) for d in source.documents)
    assert "training corpus dropped" in texts["chichewa"]["origin"]


def lengths(traces) -> dict:
    return {"end": np.array([brute_end(t) for t in traces]),
            "anywhere": np.array([brute_anywhere(t) for t in traces])}


def test_tables_match_brute_force(study):
    run, _, _ = study
    edges = training.bins(CONFIG.G, CONFIG.repeats)
    final = STEPS[-1]
    found = {("random", s): lengths(run.load(step_unit(s))["traces"]) for s in STEPS}
    found.update({(language, final): lengths(run.load(f"final_{language}")["traces"])
                  for language in LANGUAGES})
    rows = run.read_table("traces")
    assert len(rows) == (len(STEPS) + 2) * CONFIG.prompts
    for (source, step), p in found.items():
        sel = sorted((r for r in rows if (r["source"], r["step"]) == (source, step)),
                     key=lambda r: r["prompt"])
        for reading in ("end", "anywhere"):
            assert [r[reading] for r in sel] == p[reading].tolist()
        share = {r["bin"]: r["share"] for r in run.read_table("histograms")
                 if (r["source"], r["step"]) == (source, step)}
        brute = [np.mean([lo <= q <= hi for q in p["end"]]) for lo, hi in edges]
        assert list(share.values()) == pytest.approx(brute)
    for language in LANGUAGES:
        mine = np.array([np.mean([lo <= q <= hi for q in found[language, final]["end"]])
                         for lo, hi in edges])
        tv = [0.5 * np.abs(mine - [np.mean([lo <= q <= hi for q in found["random", s]["end"]])
                                   for lo, hi in edges]).sum() for s in STEPS]
        sel = [r for r in run.read_table("distances") if r["language"] == language]
        assert [r["step"] for r in sel] == list(STEPS)
        assert [r["tv"] for r in sel] == pytest.approx(tv)
        assert [r["nearest"] for r in sel] == [i == np.argmin(tv) for i in range(len(STEPS))]
    texts = {r["language"]: r for r in run.read_table("texts")}
    for row in run.read_table("losses"):
        per_window = run.load(step_unit(row["step"]))[f"loss_{row['language']}"]
        assert row["loss"] == pytest.approx(per_window.mean())
        text = texts[row["language"]]
        assert row["loss_per_byte"] == pytest.approx(per_window.mean() * text["tokens"]
                                                     / text["bytes"])
    windows = run.read_table("window_losses")
    for language in LANGUAGES:
        assert [r["loss"] for r in windows if r["language"] == language] == pytest.approx(
            run.load(step_unit(final))[f"loss_{language}"].tolist())


def test_losses_and_traces_follow_the_final_checkpoint(study):
    run, e7, _ = study
    model = ds.load(e7.path / "train" / "checkpoints" / f"step_{STEPS[-1]:07d}")
    for language in LANGUAGES:
        windows = run.load(f"text_{language}")["windows"]
        logp = log_softmax(np.asarray(ds.forward(model, windows[:, :-1]), np.float64), -1)
        nll = -np.take_along_axis(logp, windows[:, 1:, None], -1)[..., 0].mean(1)
        np.testing.assert_allclose(run.load(step_unit(STEPS[-1]))[f"loss_{language}"], nll,
                                   rtol=1e-4)
        prompts = run.load(f"text_{language}")["prompts"]
        traces = run.load(f"final_{language}")["traces"]
        greedy = np.asarray(ds.forward(model, np.concatenate([prompts, traces], 1))).argmax(-1)
        np.testing.assert_array_equal(greedy[:, CONFIG.length - 1:-1], traces)


def test_figures_and_findings(study):
    run, _, _ = study
    render_run(run)
    assert_figures(run, ("e8_paths",))
    found = e8_paths.findings(run)
    assert [f.experiment for f in found] == ["e8"] * 3
    assert [f.verdict in ("holds", "fails", "inconclusive") for f in found] == [True, True,
                                                                                False]
    nearest = [r for r in run.read_table("distances") if r["nearest"]]
    for r in nearest:
        assert f"{r['language']} {r['step']} ({r['tv']:.2f})" in found[0].measured


def test_resume_recomputes_nothing_and_a_lost_unit_only(study, monkeypatch):
    run, _, _ = study
    tables = {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()}
    calls = []

    monkeypatch.setattr(e8_paths, "generate", counting(calls, "generate", e8_paths.generate))
    monkeypatch.setattr(e8_paths, "heldout_loss", counting(calls, "loss", e8_paths.heldout_loss))
    monkeypatch.setattr(e8_paths, "chichewa", lambda *a: pytest.fail("text rebuilt"))
    monkeypatch.setattr(training, "train_tokenizer", lambda *a: pytest.fail("corpus rebuilt"))
    run_study("e8", run.path, "small", E8, progress=False, draw=False)
    assert calls == []
    for unit in (step_unit(STEPS[2]), "final_chichewa"):  # a run killed there
        (run.path / "units" / f"{unit}.npz").unlink()
    run_study("e8", run.path, "small", E8, progress=False, draw=False)
    assert sorted(calls) == ["generate"] * 2 + ["loss"] * 2 * CONFIG.windows
    assert {p.name: p.read_bytes() for p in (run.path / "tables").iterdir()} == tables


# --- the findings on synthetic traces and losses --------------------------------------------

EDGES = training.bins(30, 3)
# Random prompts at step 0 do not loop, at step 10 they end in fixed points, at step 100 in
# 9-cycles.
REFERENCE = {0: np.zeros(20, int), 10: np.ones(20, int), 100: np.full(20, 9)}


def nearest_verdict(english, chichewa) -> str:
    return nearest_finding({"english": np.array(english), "chichewa": np.array(chichewa)},
                           REFERENCE, EDGES, 200, 0).verdict


def test_nearest_finding():
    assert nearest_verdict([9] * 50, [0] * 50) == "holds"  # Chichewa looks untrained
    assert nearest_verdict([0] * 50, [9] * 50) == "fails"  # English does
    assert nearest_verdict([9] * 50, [9] * 50) == "fails"  # both look trained: D = 0
    assert nearest_verdict([9, 1], [0, 1]) == "inconclusive"  # two prompts each
    found = nearest_finding({"english": np.full(5, 9), "chichewa": np.zeros(5, int)},
                            REFERENCE, EDGES, 50, 0)
    assert found.measured.startswith("nearest step (TV): english 100 (0.00), chichewa 0 (0.00);"
                                     " difference of checkpoint indices +2 [+2, +2]")


def test_loss_finding():
    rng = np.random.default_rng(0)
    low, high = 1 + 0.1 * rng.standard_normal(40), 2 + 0.1 * rng.standard_normal(40)
    assert loss_finding({"english": low, "chichewa": high}, 500, 0).verdict == "holds"
    assert loss_finding({"english": high, "chichewa": low}, 500, 0).verdict == "fails"
    few = {"english": np.array([1.0, 2.0, 3.0]), "chichewa": np.array([1.5, 2.5, 3.5])}
    assert loss_finding(few, 500, 0).verdict == "inconclusive"


class TableRun:
    """What `findings` reads of a run: its settings (the Config's defaults but for `config`)
    and tables, here synthetic."""

    def __init__(self, config: dict, tables: dict[str, list[dict]]):
        self.config, self.tables = config, tables

    def settings(self, cls):
        return dataclasses.replace(cls(), **self.config)

    def read_table(self, name: str) -> list[dict]:
        return self.tables[name]


@pytest.mark.parametrize("chichewa_loss, verdicts", [
    (2.0, ["holds", "holds"]),  # the premise holds: the claim is tested
    (0.5, ["not testable here", "fails"]),  # the model knows the language better than English
])
def test_a_failed_premise_makes_the_claim_not_testable(chichewa_loss, verdicts):
    """The same traces (Chichewa nearest step 0, English nearest the last step: the claim
    holds on them) under a premise that holds and one that fails."""
    rng = np.random.default_rng(1)
    lengths = {**{("random", step): found for step, found in REFERENCE.items()},
               ("english", 100): np.full(30, 9), ("chichewa", 100): np.zeros(30, int)}
    windows = {"english": 1 + 0.05 * rng.standard_normal(20),
               "chichewa": chichewa_loss + 0.05 * rng.standard_normal(20)}
    run = TableRun(
        {"resamples": 200, "seed": 0, "G": 30, "repeats": 3},
        {"traces": training.trace_table({key: {"end": p, "anywhere": p}
                                         for key, p in lengths.items()}, ("source", "step")),
         "texts": [{"language": language, "tokens": 100, "bytes": 100, "bytes_per_token": 1.0}
                   for language in LANGUAGES],
         "window_losses": [{"language": language, "window": i, "loss": float(loss)}
                           for language in LANGUAGES for i, loss in enumerate(windows[language])],
         "losses": [{"step": 100, "language": language, "loss": float(windows[language].mean())}
                    for language in LANGUAGES]})
    found = e8_paths.findings(run)
    assert [f.verdict for f in found[:2]] == verdicts
    assert found[1].kind == "manipulation" and found[0].test.verdict == "holds"
