"""`dynsys train --testbed`: a much-reduced markov1 trained through the command line, its
registry entry, its checkpoints in transformers, a resume after SIGKILL, and refusals."""

from __future__ import annotations

import signal
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits
from rich.console import Console
from typer.testing import CliRunner

import dynsys as ds
from dynsys import cli
from dynsys.cli import app
from dynsys.testbeds import read_registry, recipe, resolve
from dynsys.testbeds.registry import train_testbed
from dynsys.train import read_log

# markov1 cut to seconds: 12 steps of 4 windows of 33 tokens, a 2-layer width-32 llama
REDUCED = {"steps": 12, "seq_len": 32, "hidden": 32, "ffn": 64, "batch": 4, "warmup": 2,
           "heldout_windows": 4, "checkpoint_every": 8, "save_every": 5}
SETS = [arg for key, value in REDUCED.items() for arg in ("--set", f"{key}={value}")]
KILL_AFTER = 7  # the killed child stops once its log holds this step (states: every 5)
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=400))


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The reduced markov1 trained into ROOT/markov1-small: (ROOT, command output)."""
    root = tmp_path_factory.mktemp("testbeds")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "console", Console(width=400))
        result = invoke("train", "--testbed", "markov1", "--out", str(root / "markov1-small"),
                        *SETS)
    assert result.exit_code == 0, result.output
    return root, result.output


def test_summary_sets_the_model_beside_the_bayes_predictor(trained):
    root, output = trained
    for text in ("parameters", "tokens seen", "1,536", "held-out loss (model)",
                 "held-out loss (Bayes-optimal predictor)", "in-context unigram",
                 "markov1-small@final"):
        assert text in output, text
    entry = read_registry(root)["markov1-small"]
    summary = entry["summary"]
    assert entry["testbed"] == "markov1" and entry["scale"] == "small" and entry["steps"] == 12
    assert summary["step"] == 12 and summary["tokens"] == 12 * 4 * 32
    assert summary["context"] == 32 and summary["params"] > 0 and summary["seconds"] > 0
    source = recipe("markov1", "small").source
    held = source.windows("heldout", 4, 32, seed=0)
    assert summary["references"] == source.references(held)
    last = read_log(root / "markov1-small" / "train" / "log.csv")[-1]
    assert summary["heldout_loss"] == last["heldout_loss"]
    assert summary["checkpoints"] == [f"step_{s:07d}" for s in (0, 1, 2, 4, 8, 12)]


def test_resolved_checkpoint_matches_transformers(trained):
    root, _ = trained
    path = resolve("markov1@final", root)
    assert path == root / "markov1-small" / "train" / "checkpoints" / "step_0000012"
    assert resolve("markov1-small@step_0000008", root).name == "step_0000008"
    model = ds.load(path)
    assert model.config == recipe("markov1", "small", REDUCED).train.model
    torch.set_num_threads(1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()
    batch = recipe("markov1", "small").source.windows("heldout", 2, 31, seed=5)
    np.testing.assert_allclose(hf_logits(hf, batch), ds.forward(model, batch), atol=1e-4, rtol=0)


def test_rerun_changes_no_checkpoint(trained):
    root, _ = trained
    train_dir = root / "markov1-small" / "train"
    before = _snapshot(train_dir)
    result = invoke("train", "--testbed", "markov1", "--out", str(root / "markov1-small"), *SETS)
    assert result.exit_code == 0, result.output
    assert _snapshot(train_dir) == before


# Runs the command in a child that SIGKILLs itself once the log shows step KILL_AFTER.
CHILD = """
import os, signal, sys, threading, time
from pathlib import Path
from typer.testing import CliRunner
from dynsys.cli import app

out, kill_after = Path(sys.argv[1]), int(sys.argv[2])

def watch():
    while True:
        log = out / "train" / "log.csv"
        if log.exists() and len(log.read_text().splitlines()) > kill_after + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)

threading.Thread(target=watch, daemon=True).start()
CliRunner().invoke(app, ["train", "--testbed", "markov1", "--out", str(out), *sys.argv[3:]])
"""


def test_sigkill_then_rerun_is_bit_identical(trained, tmp_path):
    root, _ = trained
    killed = tmp_path / "markov1-small"
    child = subprocess.run([sys.executable, "-c", CHILD, str(killed), str(KILL_AFTER), *SETS],
                           capture_output=True, timeout=300, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert read_log(killed / "train" / "log.csv")[-1]["step"] < REDUCED["steps"]
    assert read_registry(tmp_path)["markov1-small"]["summary"] is None  # not finished
    result = invoke("train", "--testbed", "markov1", "--out", str(killed), *SETS)
    assert result.exit_code == 0, result.output
    whole = root / "markov1-small" / "train"
    for name in ("state/step_0000012/state.safetensors",
                 *(f"checkpoints/{p.name}/model.safetensors"
                   for p in sorted((whole / "checkpoints").iterdir()))):
        assert (killed / "train" / name).read_bytes() == (whole / name).read_bytes(), name
    assert read_registry(tmp_path)["markov1-small"]["summary"]["step"] == 12


@pytest.mark.parametrize("args, named", [
    (("--testbed", "markov7"), ["unknown test bed 'markov7'", "markov1, markov2"]),
    (("--testbed", "markov1", "--scale", "tiny"), ["'tiny' is not one of 'small', 'paper'"]),
    (("--testbed", "markov1", "--set", "alpha=0"), ["alpha=0", "Dirichlet concentration"]),
    (("--testbed", "markov1", "--set", "alpha=-1"), ["alpha=-1"]),
    (("--testbed", "markov1", "--set", "vocab=1"), ["vocab=1", "at least 2 symbols"]),
    (("--testbed", "markov2", "--set", "seq_len=600", "--set", "positions=512"),
     ["seq_len=600", "max_position_embeddings=512"]),
    (("--testbed", "markov1", "--set", "colour=1"), ["unknown setting(s) colour"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, named):
    out = tmp_path / "runs" / "bed"
    result = invoke("train", *args, "--out", str(out))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in named:
        assert text in lines[0], (text, lines[0])
    assert not (tmp_path / "runs").exists()


def test_without_testbed_the_corpus_training_is_unchanged():
    result = invoke("train", "--scale", "huge")
    assert result.exit_code == 2 and "'huge' is not one of 'small', 'paper'" in result.output


def _snapshot(directory) -> dict:
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_warm_start_begins_at_the_named_checkpoint(tmp_path):
    """init=KEY@final: step 0 of the new run holds the named checkpoint's parameters, on
    longer windows (RoPE has no learned positions); a NoPE recipe cannot start from it, nor
    a model of other shapes (one line, nothing trained)."""
    short = recipe("markov1", "small", {**REDUCED, "steps": 4, "checkpoint_every": 4})
    train_testbed(short, tmp_path / "markov1-small", tmp_path, progress=False)
    longer = recipe("markov1", "paper", {**REDUCED, "seq_len": 64, "steps": 2,
                                         "init": "markov1-small@final"})
    train_testbed(longer, tmp_path / "markov1-paper", tmp_path, progress=False)
    start = ds.load(resolve("markov1-small@final", tmp_path))
    step0 = ds.load(resolve("markov1-paper@0", tmp_path))
    assert step0.config.max_position_embeddings == 64
    for a, b in zip(jax.tree_util.tree_leaves(start.params),
                    jax.tree_util.tree_leaves(step0.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    nope = recipe("markov1", "paper", {**REDUCED, "rope": False, "init": "markov1-small@final"})
    with pytest.raises(ValueError, match="init='markov1-small@final' is a RoPE model and "
                                         "'markov1' is NoPE"):
        train_testbed(nope, tmp_path / "nope", tmp_path, progress=False)
    wider = recipe("markov1", "paper", {**REDUCED, "hidden": 64, "init": "markov1-small@final"})
    with pytest.raises(ValueError, match=r"start: parameter \['blocks_0'\].* has shape "
                                         r"\(2, 16, 32\), the model \(2, 32, 64\)"):
        train_testbed(wider, tmp_path / "wider", tmp_path, progress=False)
    assert not (tmp_path / "wider" / "train" / "log.csv").exists()
