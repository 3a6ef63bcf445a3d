"""Token windows and their order.

A flat token array (documents already joined by an end-of-text separator) is cut into
non-overlapping windows of seq_len + 1 tokens, window i = tokens[i·(T+1) : (i+1)·(T+1)]
(a remainder shorter than a window is unused), as Pythia cuts its 2049-token sequences.
Per-document windows (`document_windows`) are cut from each document alone, so that a
long-context window never spans two documents. Epoch e visits the windows in the permutation
drawn from (data_seed, e), `batch` at a time; the windows left over after the last full batch
of an epoch are skipped in that epoch. The data position (epoch, index of the next batch in
it) is part of the training state.
"""

from __future__ import annotations

import functools
import hashlib

import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_tokens
from dynsys.train.config import TrainError


def _checked(tokens, vocab_size: int, name: str) -> np.ndarray:
    """A 1-D int32 array of ids in [0, vocab_size) (non-empty), or TrainError."""
    try:
        return check_tokens(tokens, vocab_size, name, ndim=1)
    except ValueError as e:
        raise TrainError(f"{e} (does the tokenizer match the model?)"
                         if "outside the vocabulary" in str(e) else str(e)) from None


def _cut(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """The floor(len / (seq_len + 1)) non-overlapping windows [n, seq_len + 1] from the start
    of `tokens`."""
    n = len(tokens) // (seq_len + 1)
    return tokens[:n * (seq_len + 1)].reshape(n, seq_len + 1)


def windows(tokens, seq_len: int, vocab_size: int, name: str) -> np.ndarray:
    """The windows [n, seq_len + 1] (int32) of a 1-D token array, after checking it: ids are
    integers in [0, vocab_size) and there is at least one window. TrainError otherwise."""
    tokens = _checked(tokens, vocab_size, name)
    if len(tokens) < seq_len + 1:
        raise TrainError(f"{name} holds {len(tokens)} tokens, fewer than one window of "
                         f"seq_len + 1 = {seq_len + 1}")
    return _cut(tokens, seq_len)


def document_windows(documents, seq_len: int, vocab_size: int, name: str) -> np.ndarray:
    """The windows [n, seq_len + 1] (int32) cut from each document alone: a document of L
    tokens gives its floor(L / (seq_len + 1)) non-overlapping windows from its start, in
    document order, and one shorter than seq_len + 1 tokens gives none (it is skipped, never
    joined to another), so no window spans two documents and none holds a separator.

    documents: a sequence of 1-D arrays of ids in [0, vocab_size), one per document (no
    separator needed). TrainError (a ValueError) if there are none, an id is outside the
    vocabulary, or no document holds a window (the message gives the longest's length).
    `windows(result.ravel(), seq_len, ...)` is `result` again, so `train(config,
    result.ravel(), ...)` trains on exactly these windows."""
    if isinstance(documents, np.ndarray) or not len(documents):
        raise TrainError(f"{name} must be a non-empty sequence of 1-D token arrays, one per "
                         "document")
    checked = [_checked(document, vocab_size, f"{name}[{i}]")
               for i, document in enumerate(documents)]
    longest = max(map(len, checked))
    if longest < seq_len + 1:
        raise TrainError(f"no document of {name} holds a window of seq_len + 1 = {seq_len + 1} "
                         f"tokens: the longest of its {len(checked)} has {longest}")
    return np.concatenate([_cut(document, seq_len) for document in checked])


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
