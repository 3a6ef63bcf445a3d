"""Validation at the public boundary: JAX clamps out-of-range gathers silently, so ids,
lengths and shapes are checked here, in numpy, with errors that name the bad value."""

from __future__ import annotations

import numpy as np


def check_tokens(tokens, vocab_size: int, name: str, ndim: int) -> np.ndarray:
    """An int32 array of token ids in [0, vocab_size) with `ndim` dims and no empty axis."""
    arr = np.asarray(tokens)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size == 0 or 0 in arr.shape:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    return _in_range(arr, vocab_size, name, "the vocabulary")


def check_positions(positions, shape: tuple[int, ...], limit: int) -> np.ndarray:
    """Positions of the given shape in [0, limit)."""
    arr = np.asarray(positions)
    if arr.shape != tuple(shape):
        raise ValueError(f"positions have shape {arr.shape}, expected {tuple(shape)}")
    return _in_range(arr, limit, "positions", "max_position_embeddings")


def _in_range(arr: np.ndarray, limit: int, name: str, what: str) -> np.ndarray:
    """arr as int32 after checking it holds integers in [0, limit); errors name the first bad
    entry, its index and value."""
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr >= limit)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}{list(where)} = {int(arr[where])} is outside {what} "
                         f"[0, {limit})")
    return arr.astype(np.int32)


class NonFiniteError(ValueError):
    """The model produced NaN or infinite logits (broken weights or an overflow): its argmax
    would be token 0, and a trace of zeros would look like a period-1 loop."""


def check_finite(finite, what: str) -> None:
    """Raise NonFiniteError naming the first index where `finite` (a bool array computed
    inside jit, one flag per row or step) is False."""
    finite = np.asarray(finite)
    if not finite.all():
        where = [int(i) for i in np.argwhere(~finite)[0]]
        raise NonFiniteError(f"non-finite logits in {what} at index {where} "
                             f"({int((~finite).sum())} of {finite.size} entries): the model's "
                             "weights or activations are NaN or overflow")
