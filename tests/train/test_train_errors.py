"""Bad input gives one clear TrainError (a ValueError) and leaves nothing written; a NaN step
stops training with the last good state on disk."""

from __future__ import annotations

import numpy as np
import pytest
from safetensors.numpy import load_file
from train_helpers import TINY, periodic_tokens, tiny_config, write_tokenizer

from dynsys.train import NonFiniteLossError, TrainConfig, TrainError, latest_state, read_log, train

TOKENS, HELDOUT = periodic_tokens(20_000), periodic_tokens(2_000)


def test_errors_are_value_errors():
    assert issubclass(NonFiniteLossError, TrainError) and issubclass(TrainError, ValueError)


@pytest.mark.parametrize("changes, message", [
    (dict(seq_len=65), r"seq_len=65 exceeds the model's max_position_embeddings=64"),
    (dict(batch=6, micro_batches=4), r"batch=6 is not divisible by micro_batches=4"),
    (dict(lr=float("nan")), r"lr=nan must be a finite number > 0"),
    (dict(betas=(0.9, 1.0)), r"betas=\(0.9, 1.0\) must be below 1"),
    (dict(steps=0), r"steps=0 must be an integer >= 1"),
    (dict(dtype="float16"), r"dtype='float16' must be one of \('float32', 'bfloat16'\)"),
    (dict(model=TINY.replace(dtype="bfloat16")), r"master weights are float32"),
])
def test_bad_config(changes, message):
    with pytest.raises(TrainError, match=message):
        tiny_config(**changes)


@pytest.mark.parametrize("train_tokens, heldout, message", [
    (np.zeros(0, np.int32), HELDOUT, r"train_tokens is empty"),
    (TOKENS, np.zeros(0, np.int32), r"heldout_tokens is empty"),
    (TOKENS[:33 * 8 - 1], HELDOUT, (r"7 window\(s\) of seq_len \+ 1 tokens, fewer than one "
                                    r"batch of 8")),
    (HELDOUT[:32], HELDOUT, r"32 tokens, fewer than one window of seq_len \+ 1 = 33"),
    (np.where(np.arange(20_000) == 5, 64, TOKENS), HELDOUT,
     r"train_tokens\[5\] = 64 is outside the vocabulary \[0, 64\) \(does the tokenizer match"),
    (TOKENS, -HELDOUT - 1, r"heldout_tokens\[0\] = -\d+ is outside the vocabulary"),
    (TOKENS.astype(np.float32), HELDOUT, r"train_tokens must hold integers"),
    (TOKENS.reshape(100, 200), HELDOUT, r"train_tokens must be 1-D"),
])
def test_bad_tokens_write_nothing(tmp_path, train_tokens, heldout, message):
    with pytest.raises(TrainError, match=message):
        train(tiny_config(), train_tokens, heldout, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_tokenizer_larger_than_the_vocabulary(tmp_path):
    tokenizer = write_tokenizer(tmp_path / "tok", 100)
    with pytest.raises(TrainError, match=r"has 100 tokens; the model's vocabulary holds 64"):
        train(tiny_config(), TOKENS, HELDOUT, tmp_path / "out", tokenizer_dir=tokenizer,
              progress=False)
    with pytest.raises(TrainError, match=r"no tokenizer.json or tokenizer_config.json"):
        train(tiny_config(), TOKENS, HELDOUT, tmp_path / "out", tokenizer_dir=tmp_path / "none",
              progress=False)
    assert not (tmp_path / "out").exists()


def test_not_a_training_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(TrainError, match=r"not an empty directory or a training directory"):
        train(tiny_config(), TOKENS, HELDOUT, tmp_path, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_config_must_be_a_train_config(tmp_path):
    with pytest.raises(TrainError, match="must be a TrainConfig"):
        train(TINY, TOKENS, HELDOUT, tmp_path / "out")
    with pytest.raises(TrainError, match="must be a dynsys ModelConfig"):
        TrainConfig(model="tiny")


def test_non_finite_step_stops_and_keeps_the_last_good_state(tmp_path):
    # A learning rate of 1e30 sends the weights to ~1e30 after one update; the next gradient
    # overflows to NaN.
    config = tiny_config(lr=1e30, warmup=0, steps=10, save_every=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss or gradient at step 2 .*"
                                                 r"the last saved state is .*step_0000001"):
        train(config, TOKENS, HELDOUT, tmp_path, progress=False)
    saved = latest_state(tmp_path / "state")
    assert saved.name == "step_0000001"
    assert all(np.isfinite(x).all() for x in load_file(saved / "state.safetensors").values())
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [0, 1]


def test_a_second_trainer_of_the_directory_is_refused_and_changes_nothing(tmp_path):
    """Two trainers on one directory both appended to its log (122 rows for 61 steps); while
    one holds OUT/train.lock another is refused naming it, and the lock dies with its holder:
    a later run (the holder killed or done) resumes."""
    import fcntl
    import os

    config = tiny_config(steps=4, save_every=2, checkpoint_every=2)
    train(config, TOKENS, HELDOUT, tmp_path, progress=False)
    log = (tmp_path / "log.csv").read_text()
    fd = os.open(tmp_path / "train.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another process training here
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"pid 4242 on elsewhere since then", 0)
    try:
        with pytest.raises(TrainError, match=r"being trained by another process \(pid 4242 on "
                                             r"elsewhere since then\); nothing was changed"):
            train(config, TOKENS, HELDOUT, tmp_path, progress=False)
        assert (tmp_path / "log.csv").read_text() == log
    finally:
        os.close(fd)  # the holder ends: its lock goes with it
    summary = train(config, TOKENS, HELDOUT, tmp_path, progress=False)
    assert summary.resumed_from == 4 and (tmp_path / "log.csv").read_text() == log


def test_training_under_several_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNSYS_NUM_PROCESSES", "2")
    monkeypatch.setenv("DYNSYS_PROCESS_ID", "1")
    with pytest.raises(TrainError, match="training runs in one process \\(this is process 1 "
                                         "of 2\\)"):
        train(tiny_config(steps=2), TOKENS, HELDOUT, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
