"""Token windows and their order.

A flat token array (documents already joined by an end-of-text separator) is cut into
non-overlapping windows of seq_len + 1 tokens, window i = tokens[i·(T+1) : (i+1)·(T+1)]
(a remainder shorter than a window is unused), as Pythia cuts its 2049-token sequences.
Epoch e visits the windows in the permutation drawn from (data_seed, e), `batch` at a time;
the windows left over after the last full batch of an epoch are skipped in that epoch. The
data position (epoch, index of the next batch in it) is part of the training state.
"""

from __future__ import annotations

import functools
import hashlib

import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_tokens
from dynsys.train.config import TrainError


def windows(tokens, seq_len: int, vocab_size: int, name: str) -> np.ndarray:
    """The windows [n, seq_len + 1] (int32) of a 1-D token array, after checking it: ids are
    integers in [0, vocab_size) and there is at least one window. TrainError otherwise."""
    try:
        tokens = check_tokens(tokens, vocab_size, name, ndim=1)
    except ValueError as e:
        raise TrainError(f"{e} (does the tokenizer match the model?)"
                         if "outside the vocabulary" in str(e) else str(e)) from None
    n = len(tokens) // (seq_len + 1)
    if n == 0:
        raise TrainError(f"{name} holds {len(tokens)} tokens, fewer than one window of "
                         f"seq_len + 1 = {seq_len + 1}")
    return tokens[:n * (seq_len + 1)].reshape(n, seq_len + 1)


def batches_per_epoch(count: int, batch: int) -> int:
    """Full batches in an epoch of `count` windows (TrainError if not even one)."""
    if count < batch:
        raise TrainError(f"the training tokens give {count} window(s) of seq_len + 1 tokens, "
                         f"fewer than one batch of {batch}")
    return count // batch


@functools.lru_cache(maxsize=2)
def _order(data_seed: int, epoch: int, count: int) -> np.ndarray:
    return np.random.default_rng([data_seed, epoch]).permutation(count)


def batch_at(windows: np.ndarray, data_seed: int, epoch: int, index: int,
             batch: int) -> np.ndarray:
    """Batch `index` of epoch `epoch`: windows[π_e[index·batch : (index+1)·batch]], π_e the
    permutation of epoch e drawn from (data_seed, e)."""
    order = _order(data_seed, epoch, len(windows))
    return windows[order[index * batch:(index + 1) * batch]]


def advance(epoch: jnp.ndarray, index: jnp.ndarray,
            per_epoch: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The data position after one batch: (epoch, index + 1), or (epoch + 1, 0) after the
    last full batch of the epoch."""
    index = index + 1
    wrap = index >= per_epoch
    return epoch + wrap, jnp.where(wrap, 0, index)


def digest(tokens: np.ndarray) -> str:
    """SHA-256 of an int32 token array: what a resumed run checks its data against."""
    return hashlib.sha256(np.ascontiguousarray(tokens, np.int32).data).hexdigest()
