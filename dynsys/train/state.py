"""The training state pytree and its checkpoints on disk (safetensors + JSON, never pickle).

A saved state is a directory `step_XXXXXXX/` holding state.safetensors (every leaf of the
state, named by its path in the pytree) and state.json (the config, the step and the data
position, and `meta`). It is written under a temporary name and renamed into place, so a
directory named step_* is always complete; a load takes the highest step. Leaves are restored
into the structure of a freshly initialised state, so they come back bit for bit.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from dynsys.nn import init_params
from dynsys.train.config import TrainConfig, TrainError
from dynsys.train.optimizer import optimizer

FORMAT = 1  # bump when the layout or meaning of a saved state changes


@struct.dataclass
class TrainState:
    """params (float32), optimizer state, step (updates done) and the data position (epoch,
    index of the next batch in it), all arrays (int32 scalars for the counters)."""

    params: dict
    opt_state: optax.OptState
    step: jnp.ndarray
    epoch: jnp.ndarray
    index: jnp.ndarray


@functools.partial(jax.jit, static_argnames=("config",))
def init_state(config: TrainConfig, params: dict | None = None) -> TrainState:
    """Step 0: `params` (a warm start: parameters of config.model's shapes) or parameters
    drawn by `init_params(config.model, config.seed)`, a fresh optimizer state, data position
    (0, 0)."""
    if params is None:
        params = init_params(config.model, config.seed)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, optimizer(config).init(params), zero, zero, zero)


def _leaves(tree) -> list[tuple[str, object]]:
    return [(jax.tree_util.keystr(path), x)
            for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def save_state(directory: str | Path, state: TrainState, config: TrainConfig,
               meta: dict) -> Path:
    """Write `state` as directory/step_XXXXXXX (atomically, see the module) and remove the
    earlier ones; returns its path. `meta`: JSON values saved beside it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state.step)
    target = directory / f"step_{step:07d}"
    tmp = directory / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        save_file({name: np.asarray(x) for name, x in _leaves(state)},
                  tmp / "state.safetensors")
        info = {"format": FORMAT, "config": config.to_dict(), "step": step,
                "epoch": int(state.epoch), "index": int(state.index), "meta": meta}
        (tmp / "state.json").write_text(json.dumps(info, indent=1))
        if target.exists():  # the same step saved by a session that was killed after it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for old in directory.glob("step_*"):
        if old != target:  # renamed first, so no partial step_* is ever left
            trash = directory / f".old-{old.name}-{os.getpid()}"
            os.replace(old, trash)
            shutil.rmtree(trash)
    return target


def latest_state(directory: str | Path) -> Path | None:
    """The saved state of the highest step under `directory`, None if there is none."""
    saved = sorted(Path(directory).glob("step_*"))
    return saved[-1] if saved else None


def load_state(path: str | Path, config: TrainConfig) -> tuple[TrainState, dict]:
    """The state saved at `path` (a step_* directory) and its meta. TrainError if it was
    written with another config or format, or cannot be read."""
    path = Path(path)
    try:
        info = json.loads((path / "state.json").read_text())
        arrays = load_file(path / "state.safetensors")
    except (OSError, ValueError, SafetensorError) as e:
        raise TrainError(f"the training state {path} cannot be read: {e}") from None
    if info.get("format") != FORMAT:
        raise TrainError(f"the training state {path} has format {info.get('format')!r}; this "
                         f"dynsys reads format {FORMAT}")
    check_same_config(info["config"], config, str(path))
    template = jax.eval_shape(init_state, config)
    names = [name for name, _ in _leaves(template)]
    if sorted(names) != sorted(arrays):
        raise TrainError(f"the training state {path} does not hold this optimizer's state "
                         f"(missing {sorted(set(names) - set(arrays))[:4]}, unexpected "
                         f"{sorted(set(arrays) - set(names))[:4]})")
    leaves = []
    for name, spec in _leaves(template):
        x = arrays[name]
        if x.shape != spec.shape or x.dtype != spec.dtype:
            raise TrainError(f"{name} in {path} is {x.dtype}{list(x.shape)}, expected "
                             f"{spec.dtype}{list(spec.shape)}")
        leaves.append(jnp.asarray(x))
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), leaves), \
        info["meta"]


def check_same_config(saved: dict, config: TrainConfig, where: str) -> None:
    """TrainError naming every field whose value differs between `saved` (a config as JSON)
    and `config`."""
    now = json.loads(json.dumps(config.to_dict()))
    if saved != now:
        diffs = _differences(saved, now)
        raise TrainError(f"{where} was written with another config ({diffs}); nothing was "
                         "changed: use another directory to train this config")


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            parts.append(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            parts.append(f"{prefix}{key}: {a!r} there, {b!r} now")
    return ", ".join(p for p in parts if p)
