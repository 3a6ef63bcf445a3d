"""One tiny training run, read back: it learns, logs, checkpoints on Pythia's schedule, and its
checkpoints load in dynsys and in transformers with the same logits."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits
from train_helpers import periodic_tokens, tiny_config, write_tokenizer

import dynsys as ds
from dynsys.train import TrainError, checkpoint_steps, latest_state, load_state, read_log, train

CONFIG = tiny_config()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """100 steps on a period-7 sequence, with a tokenizer: (summary, out_dir, tokens)."""
    root = tmp_path_factory.mktemp("run")
    tokens = periodic_tokens(20_000)
    tokenizer = write_tokenizer(root / "tokenizer", CONFIG.model.vocab_size)
    summary = train(CONFIG, tokens, periodic_tokens(2_000), root / "out", tokenizer_dir=tokenizer,
                    progress=False)
    return summary, root / "out", tokens


def test_learns_a_periodic_sequence(trained):
    summary, out, _ = trained
    rows = read_log(out / "log.csv")
    assert rows[1]["loss"] > 3.5  # about log 64 at the start
    assert summary.loss < 0.05 and summary.heldout_loss < 0.05
    assert summary.step == 100 and summary.tokens == 100 * 8 * 32
    assert summary.resumed_from is None and summary.tokens_per_second > 0


def test_log_has_one_row_per_step(trained):
    _, out, _ = trained
    rows = read_log(out / "log.csv")
    assert [r["step"] for r in rows] == list(range(101))
    assert [r["tokens"] for r in rows] == [256 * s for s in range(101)]
    evaluated = set(checkpoint_steps(100, 40)) | set(range(0, 101, 20))
    assert {r["step"] for r in rows if r["heldout_loss"] is not None} == evaluated
    assert rows[0]["loss"] is None and all(r["loss"] is not None for r in rows[1:])
    assert rows[1]["lr"] == pytest.approx(3e-4) and rows[10]["lr"] == pytest.approx(3e-3)
    assert all(r["grad_norm"] > 0 for r in rows[1:])
    walls = [r["wall_time"] for r in rows]
    assert walls == sorted(walls)


def test_checkpoints_on_pythia_schedule_with_tokenizer(trained):
    summary, _, _ = trained
    steps = checkpoint_steps(100, 40)
    assert steps == (0, 1, 2, 4, 8, 16, 32, 40, 64, 80, 100)
    assert [p.name for p in summary.checkpoints] == [f"step_{s:07d}" for s in steps]
    for path in summary.checkpoints:
        assert sorted(p.name for p in path.iterdir()) == [
            "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]


def test_checkpoint_matches_state_and_transformers(trained):
    summary, out, tokens = trained
    model = ds.load(summary.checkpoints[-1])
    assert model.config == CONFIG.model
    state, _ = load_state(latest_state(out / "state"), CONFIG)
    for a, b in zip(_leaves(model.params), _leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    torch.set_num_threads(1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        summary.checkpoints[-1], dtype=torch.float32, attn_implementation="eager").eval()
    batch = tokens[:64].reshape(2, 32)
    np.testing.assert_allclose(hf_logits(hf, batch), ds.forward(model, batch), atol=1e-4,
                               rtol=0)


def test_rerun_of_a_finished_run_changes_nothing(trained):
    _, out, tokens = trained
    before = _snapshot(out)
    again = train(CONFIG, tokens, periodic_tokens(2_000), out, progress=False)
    assert again.resumed_from == 100 and again.step == 100 and again.loss is None
    assert _snapshot(out) == before


def test_resume_refuses_another_config_or_other_tokens(trained):
    _, out, tokens = trained
    before = _snapshot(out)
    with pytest.raises(TrainError, match=r"another config \(lr: 0.003 there, 0.001 now\)"):
        train(tiny_config(lr=1e-3), tokens, periodic_tokens(2_000), out, progress=False)
    with pytest.raises(TrainError, match=r"other tokens \(differing: \['train_tokens'\]\)"):
        train(CONFIG, periodic_tokens(20_000, seed=1), periodic_tokens(2_000), out,
              progress=False)
    assert _snapshot(out) == before


def _leaves(params) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]


def _snapshot(directory) -> dict:
    """Every file under `directory`: its bytes."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}
