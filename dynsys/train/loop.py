"""`train`: create or resume a training directory and run the steps.

    out_dir/train.json                  the config and digests of the tokens (written first)
    out_dir/train.lock                  locked while a process trains here (one at a time)
    out_dir/state/step_XXXXXXX/         the latest training state (dynsys.train.state)
    out_dir/log.csv                     one row per step (dynsys.train.log)
    out_dir/checkpoints/step_XXXXXXX/   Hugging Face checkpoints (config.json,
                                        model.safetensors, tokenizer files if given)

Each step s is finished in this order: its checkpoint (if s is in `checkpoint_steps`), its
held-out loss (if due), its log row, then the state (if due). So everything belonging to
steps up to a saved state is on disk before it, a killed run resumes from its latest state,
and redoes (bit for bit the same) whatever came after it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from tokenizers import Tokenizer

from dynsys.distributed import process
from dynsys.io import save_hf
from dynsys.nn import Model, init_params
from dynsys.runs import atomic_path
from dynsys.train.config import NonFiniteLossError, TrainConfig, TrainError
from dynsys.train.data import batch_at, batches_per_epoch, digest, windows
from dynsys.train.log import append_row, resume_log
from dynsys.train.schedule import checkpoint_steps
from dynsys.train.state import (
    TrainState,
    check_same_config,
    init_state,
    latest_state,
    load_state,
    save_state,
)
from dynsys.train.step import heldout_loss, train_step

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
LOCK = "train.lock"  # held by the process that trains the directory (trainer_lock)


@dataclasses.dataclass(frozen=True)
class TrainSummary:
    """What a call of `train` did: the step and tokens reached, the last training loss and
    held-out loss of this session (None if it ran no step / no evaluation), the checkpoints
    on disk, the step it resumed from (None for a new run), and this session's training
    tokens/s after its first step (which includes compilation; None if fewer than 2 steps)."""

    out_dir: Path
    step: int
    tokens: int
    loss: float | None
    heldout_loss: float | None
    checkpoints: tuple[Path, ...]
    resumed_from: int | None
    tokens_per_second: float | None


def train(config: TrainConfig, train_tokens, heldout_tokens, out_dir: str | Path,
          tokenizer_dir: str | Path | None = None, progress: bool = True,
          start: dict | None = None) -> TrainSummary:
    """Train config.model from scratch (or from the parameters `start`, a warm start, of
    config.model's shapes) on train_tokens for config.steps steps, in `out_dir` (created, or
    resumed where a killed or finished run left it; see the module).

    train_tokens, heldout_tokens: 1-D integer arrays of token ids (documents joined by an
    end-of-text separator). tokenizer_dir: a directory holding tokenizer.json and/or
    tokenizer_config.json (or the path of a file in it), copied into every checkpoint. Everything is
    checked before anything is written; a bad input, a directory of another config or other
    tokens, and a non-finite loss raise TrainError (NonFiniteLossError names the step).
    """
    if not isinstance(config, TrainConfig):
        raise TrainError(f"config must be a TrainConfig, got {type(config).__name__}")
    cfg = config.model
    data = windows(train_tokens, config.seq_len, cfg.vocab_size, "train_tokens")
    per_epoch = batches_per_epoch(len(data), config.batch)
    held = windows(heldout_tokens, config.seq_len, cfg.vocab_size,
                   "heldout_tokens")[:config.eval_windows]
    tokenizer_files = _tokenizer_files(tokenizer_dir, cfg.vocab_size)
    out_dir = Path(out_dir)
    index, count = process()
    if count > 1:
        raise TrainError(f"training runs in one process (this is process {index} of {count}): "
                         "several processes would each train and write the same log; train "
                         "first in one process, then run the rest with several")
    inputs = {"train_tokens": digest(data), "heldout_tokens": digest(held)}
    if start is not None:
        inputs["start"] = params_digest(config, start)
    resumed = _open(out_dir, config, inputs)
    with trainer_lock(out_dir):
        return _run(config, data, per_epoch, held, tokenizer_files, out_dir,
                    resumed or (init_state(config, start), {"wall_time": 0.0}), bool(resumed),
                    progress)


def params_digest(config: TrainConfig, params: dict) -> str:
    """SHA-256 of a parameter tree of config.model's shapes (float32, in the tree's order);
    TrainError naming the first parameter whose shape differs."""
    expected = jax.eval_shape(lambda: init_params(config.model, 0))
    have = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    found = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = jax.tree_util.keystr(path)
        if path not in have or np.shape(have[path]) != leaf.shape:
            raise TrainError(f"start: parameter {name} has shape "
                             f"{np.shape(have[path]) if path in have else 'none'}, the model "
                             f"{leaf.shape}")
        found.update(np.ascontiguousarray(have[path], np.float32).tobytes())
    if len(have) != len(jax.tree_util.tree_leaves(expected)):
        raise TrainError(f"start holds {len(have)} parameters, the model "
                         f"{len(jax.tree_util.tree_leaves(expected))}")
    return found.hexdigest()


@contextlib.contextmanager
def trainer_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on OUT/train.lock while training (flock: the kernel drops it
    when the process ends, however it ends, so a killed run resumes). Another trainer of the
    same directory gets TrainError naming the holder (pid, host, start), nothing changed."""
    fd = os.open(out_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            raise TrainError(f"{out_dir} is being trained by another process ({holder}); "
                             "nothing was changed") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # released: an empty lock file names no holder
    finally:
        os.close(fd)


def _run(config: TrainConfig, data, per_epoch: int, held, tokenizer_files: tuple[Path, ...],
         out_dir: Path, begin: tuple[TrainState, dict], resumed: bool,
         progress: bool) -> TrainSummary:
    """The steps of `train` (under its lock), from the state and meta `begin` (a saved state
    when `resumed`, else step 0)."""
    cfg = config.model
    state, meta = begin
    start = int(state.step)
    resume_log(out_dir / "log.csv", start + 1 if resumed else 0)
    schedule = set(checkpoint_steps(config.steps, config.checkpoint_every))
    held = jnp.asarray(held)
    clock = time.perf_counter()
    wall = meta["wall_time"]
    losses: list[float] = []  # training loss of each step of this session
    heldouts: list[float] = []  # each held-out loss evaluated in this session
    ends: list[float] = []  # when each step of this session ended

    def finish(state: TrainState, metrics: dict | None) -> None:
        """Checkpoint, evaluate, log and save step s = state.step, in that order."""
        s = int(state.step)
        if s in schedule:
            _write_checkpoint(out_dir / "checkpoints" / f"step_{s:07d}", cfg, state.params,
                              tokenizer_files)
        heldout = None
        if s in schedule or s % config.eval_every == 0 or s == config.steps:
            heldout = jax.device_get(heldout_loss(config, state.params, held))
            heldouts.append(float(heldout))
        seconds = wall + time.perf_counter() - clock
        append_row(out_dir / "log.csv", {
            "step": s, "tokens": s * config.tokens_per_step, "heldout_loss": heldout,
            "wall_time": round(seconds, 3),
            **(metrics or dict.fromkeys(("lr", "loss", "grad_norm")))})
        if s > start and (s % config.save_every == 0 or s == config.steps):
            save_state(out_dir / "state", state, config, {"wall_time": seconds})

    with _progress(progress) as bar:
        task = bar.add_task("training", total=config.steps, completed=start, loss="-",
                            rate="-")
        if not resumed:
            finish(state, None)
        for s in range(start, config.steps):
            batch = batch_at(data, config.data_seed, int(state.epoch), int(state.index),
                             config.batch)
            state, metrics = train_step(config, per_epoch, state, jnp.asarray(batch))
            metrics = jax.device_get(metrics)
            if not (math.isfinite(metrics["loss"]) and math.isfinite(metrics["grad_norm"])):
                saved = latest_state(out_dir / "state")
                raise NonFiniteLossError(
                    f"non-finite loss or gradient at step {s + 1} (loss {metrics['loss']}, "
                    f"gradient norm {metrics['grad_norm']}): the step was not applied; the last "
                    f"saved state is {saved or 'none (a rerun starts from step 0)'}")
            losses.append(float(metrics["loss"]))
            ends.append(time.perf_counter())
            finish(state, metrics)
            rate = _rate(ends, config.tokens_per_step)
            bar.update(task, completed=s + 1, loss=f"{losses[-1]:.3f}",
                       rate="-" if rate is None else f"{rate:,.0f}")
    return TrainSummary(
        out_dir=out_dir, step=int(state.step), tokens=int(state.step) * config.tokens_per_step,
        loss=losses[-1] if losses else None, heldout_loss=heldouts[-1] if heldouts else None,
        checkpoints=tuple(sorted((out_dir / "checkpoints").glob("step_*"))),
        resumed_from=start if resumed else None,
        tokens_per_second=_rate(ends, config.tokens_per_step))


def _rate(ends: list[float], tokens_per_step: int) -> float | None:
    """Tokens/s over the steps after the first (which includes compilation)."""
    return (len(ends) - 1) * tokens_per_step / (ends[-1] - ends[0]) if len(ends) > 1 else None


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]} · {task.fields[rate]} tokens/s"),
                    TimeRemainingColumn(), disable=not enabled)


def _open(out_dir: Path, config: TrainConfig, inputs: dict) -> tuple[TrainState, dict] | None:
    """The latest saved state and its meta if out_dir is a training directory of this config
    and these tokens (None if it has no state yet); None after creating out_dir if it is
    absent or empty. TrainError (nothing written) for anything else."""
    marker = out_dir / "train.json"
    if marker.exists():
        try:
            info = json.loads(marker.read_text())
            saved_config, saved_inputs = info["config"], info["inputs"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TrainError(f"{marker} cannot be read: {e!r}") from None
        check_same_config(saved_config, config, str(out_dir))
        if saved_inputs != inputs:
            changed = sorted(k for k in inputs if saved_inputs.get(k) != inputs[k])
            raise TrainError(f"{out_dir} was trained on other tokens (differing: {changed}); "
                             "nothing was changed: use another directory for these tokens")
        saved = latest_state(out_dir / "state")
        return None if saved is None else load_state(saved, config)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TrainError(f"{out_dir} exists and is not an empty directory or a training "
                         "directory (no train.json); nothing was changed")
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"config": config.to_dict(), "inputs": inputs}, indent=1))
    return None


def _tokenizer_files(tokenizer_dir: str | Path | None, vocab_size: int) -> tuple[Path, ...]:
    """The tokenizer files to copy into each checkpoint, after checking that the tokenizer's
    vocabulary fits in the model's."""
    if tokenizer_dir is None:
        return ()
    path = Path(tokenizer_dir)
    directory = path.parent if path.is_file() else path
    files = tuple(directory / name for name in TOKENIZER_FILES if (directory / name).is_file())
    if not files:
        raise TrainError(f"tokenizer_dir={str(tokenizer_dir)!r}: no "
                         f"{' or '.join(TOKENIZER_FILES)} found there")
    if files[0].name == "tokenizer.json":
        try:
            size = Tokenizer.from_file(str(files[0])).get_vocab_size(with_added_tokens=True)
        except Exception as e:
            raise TrainError(f"{files[0]} is not a readable tokenizer: {e}") from None
        if size > vocab_size:
            raise TrainError(f"the tokenizer {files[0]} has {size} tokens; the model's "
                             f"vocabulary holds {vocab_size}")
    return files


def _write_checkpoint(path: Path, cfg, params, tokenizer_files: tuple[Path, ...]) -> None:
    save_hf(Model(cfg, params), path)
    for source in tokenizer_files:
        with atomic_path(path / source.name) as tmp:
            shutil.copyfile(source, tmp)

