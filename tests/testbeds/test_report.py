"""`dynsys testbeds` and testbed_report on a reduced markov1 trained in seconds: the summary is
the registry's, the attention concentration and TP_k equal transformers' on the source's own
held-out windows, a run still training is reported at its latest checkpoint, and a bad key is
one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from conftest import hf_attentions, hf_logits
from rich.console import Console
from typer.testing import CliRunner

from dynsys import cli, testbeds  # testbeds.testbed_report: pytest would collect the name
from dynsys.cli import app
from dynsys.data.prompts import random_tokens
from dynsys.testbeds import read_registry, recipe, report_rows
from dynsys.testbeds.registry import REGISTRY, train_testbed
from dynsys.testbeds.report import COPIES, PROMPTS, SPAN_LENGTH, SPANS

# markov1 cut to seconds; 128 positions hold COPIES + 1 copies of a SPAN_LENGTH-token span
REDUCED = {"steps": 12, "seq_len": 128, "hidden": 32, "ffn": 64, "batch": 4, "warmup": 2,
           "heldout_windows": 4, "checkpoint_every": 8, "save_every": 6}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(ROOT, the Recipe) of the reduced markov1 trained into ROOT/markov1-small."""
    root = tmp_path_factory.mktemp("testbeds")
    made = recipe("markov1", "small", REDUCED)
    train_testbed(made, root / "markov1-small", root, progress=False)
    return root, made


@pytest.fixture(scope="module")
def report(trained):
    return testbeds.testbed_report("markov1-small", trained[0])


def _hf(path):
    torch.set_num_threads(1)
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()


def test_summary_is_the_registered_one(trained, report):
    root, _ = trained
    assert report.finished and report.keys == 128
    assert report.summary.to_dict() == read_registry(root)["markov1-small"]["summary"]


def test_probes_equal_transformers_on_the_sources_heldout_windows(trained, report):
    root, made = trained
    hf = _hf(root / "markov1-small" / "train" / "checkpoints" / "step_0000012")
    source, n = made.source, 128
    prompts = {"heldout": source.windows("heldout", PROMPTS, n - 1, 0),
               "random": np.stack([random_tokens(8, n, seed=i) for i in range(PROMPTS)])}
    for kind, windows in prompts.items():
        for layer, a in enumerate(hf_attentions(hf, windows)):
            last = a[:, :, -1].astype(np.float64)  # [B, N, n]
            entropy = -(last * np.log(last)).sum(-1) / np.log(n)
            found = report.attention[kind][layer]
            assert found["layer"] == layer
            np.testing.assert_allclose(
                [found["excess"], found["max_excess"], found["entropy"]],
                [(n * last.max(-1)).mean(), (n * last.max(-1)).max(), entropy.mean()],
                rtol=1e-3)
    spans = {"heldout": source.windows("heldout", SPANS, SPAN_LENGTH - 1, 1),
             "random": np.stack([random_tokens(8, SPAN_LENGTH, seed=PROMPTS + i)
                                 for i in range(SPANS)])}
    for kind, span in spans.items():
        tokens = np.tile(span, (1, COPIES + 1))
        p = torch.softmax(torch.as_tensor(hf_logits(hf, tokens)), -1).numpy()
        chosen = np.take_along_axis(p[:, :-1], tokens[:, 1:, None], -1)[..., 0]
        for k in (1, COPIES):  # copy k: tokens k·m .. (k+1)·m − 1, predicted from position − 1
            tp = chosen[:, k * SPAN_LENGTH - 1:(k + 1) * SPAN_LENGTH - 1].mean()
            assert report.tp[kind][k] == pytest.approx(tp, abs=1e-5), (kind, k)


def test_a_run_still_training_is_reported_at_its_latest_checkpoint(trained, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=400))
    root, _ = trained
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    entries = read_registry(tmp_path)
    entries["markov1-small"]["summary"] = None  # as train_testbed registers a started run
    (tmp_path / REGISTRY).write_text(json.dumps(entries))
    for step in (12, 8, 4):  # the latest checkpoint, then the one before
        report = testbeds.testbed_report("markov1-small", tmp_path)
        assert report.summary.step == step and report.finished == (step == 12)
        assert report.summary.tokens == step * 4 * 128
        assert report.summary.references == read_registry(root)["markov1-small"]["summary"][
            "references"]  # recomputed from the source's held-out windows
        shutil.rmtree(tmp_path / "markov1-small" / "train" / "checkpoints" / f"step_{step:07d}")
    shutil.rmtree(tmp_path / "markov1-small" / "train" / "checkpoints")  # just registered
    result = CliRunner().invoke(app, ["testbeds", "--root", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "markov1-small: registered, no checkpoint yet",
        f"error: no test bed with a checkpoint is registered in {tmp_path / REGISTRY}"]


def test_command_lists_every_test_bed_and_refuses_an_unknown_key(trained, report, monkeypatch):
    root, _ = trained
    monkeypatch.setattr(cli, "console", Console(width=400))
    result = CliRunner().invoke(app, ["testbeds", "--root", str(root)])
    assert result.exit_code == 0, result.output
    for what, value in report_rows(report):
        assert what in result.output and value in result.output
    assert "TP_1 → TP_8" in result.output
    assert "test bed markov1-small, step 12 of 12" in result.output
    result = CliRunner().invoke(app, ["testbeds", "markov2-small", "--root", str(root)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: unknown test bed 'markov2-small' in {root} (registered: markov1-small)"]
