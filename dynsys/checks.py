"""Validation at the public boundary: JAX clamps out-of-range gathers silently, so ids,
lengths and shapes are checked here, in numpy, with errors that name the bad value; and the
logits a model produced are checked to be usable (finite, not all equal)."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

# float32's smallest normal number: a smaller (subnormal) temperature is flushed to 0 on the
# device, and the logits divided by it overflow.
MIN_TEMPERATURE = float(np.finfo(np.float32).tiny)


# --- numbers and flags: each returns the plain Python value or raises a one-line ValueError
# naming the field and the value. Nothing is coerced: "64", 64.0 and True are not 64.

def check_int(name: str, value: Any, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """`value` as an int: a Python or numpy integer, never a bool; at least `minimum` and at
    most `maximum` where given."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or (minimum is not None and value < minimum)
            or (maximum is not None and value > maximum)):
        bounds = [f"{op} {b}" for op, b in ((">=", minimum), ("<=", maximum)) if b is not None]
        raise ValueError(f"{name}={value!r} must be an integer{' ' if bounds else ''}"
                         f"{' and '.join(bounds)}")
    return int(value)


def check_float(name: str, value: Any, *, above: float | None = None,
                at_least: float | None = None, at_most: float | None = None) -> float:
    """`value` as a float: a Python or numpy int or float, never a bool or a string; finite (no
    NaN, no ±inf) and > `above`, >= `at_least`, <= `at_most` where given."""
    bounds = [f"{op} {b}" for op, b in ((">", above), (">=", at_least), ("<=", at_most))
              if b is not None]
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (above is None or value > above) and (at_least is None or value >= at_least)
          and (at_most is None or value <= at_most))
    if not ok:
        raise ValueError(f"{name}={value!r} must be a finite number{' ' if bounds else ''}"
                         f"{' and '.join(bounds)}")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """`value` if it is True or False (not 0/1, not "false", not None)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r} must be true or false")
    return value


# --- token ids, positions, neurons -----------------------------------------------------------

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


def check_neuron(neuron, num_layers: int | None = None,
                 width: int | None = None) -> tuple[int, int]:
    """An MLP neuron (layer, index) as a pair of ints; with `num_layers` and `width` (the
    intermediate size F) also one of the model's: layer in [0, num_layers), index in
    [0, width). Errors name the neuron."""
    if not isinstance(neuron, tuple | list) or len(neuron) != 2:
        raise ValueError(f"neuron {neuron!r} must be a (layer, index) pair")
    layer, index = check_int("layer", neuron[0]), check_int("neuron index", neuron[1])
    if num_layers is not None and not 0 <= layer < num_layers:
        raise ValueError(f"neuron {layer}:{index}: layer {layer} is outside [0, {num_layers})")
    if width is not None and not 0 <= index < width:
        raise ValueError(f"neuron {layer}:{index}: index {index} is outside [0, {width}) "
                         "(intermediate_size)")
    return layer, index


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


def check_temperature(value, greedy: bool = False) -> float:
    """A sampling temperature as a float: a finite number >= MIN_TEMPERATURE (Python or
    numpy, never a bool), or exactly 0 (greedy) where `greedy`."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
          and (MIN_TEMPERATURE <= value < np.inf or (greedy and value == 0)))
    if not ok:
        raise ValueError(f"temperature={value!r} must be a finite number >= {MIN_TEMPERATURE:.4g}"
                         f"{' or 0 (greedy)' if greedy else ''} (below float32's smallest "
                         "normal number it is flushed to 0 and the scaled logits overflow)")
    return float(value)


def check_seed(seed) -> int:
    """A random seed as an int: a Python or numpy integer (never a bool or a float) in
    [0, 2**63), which jax.random.PRNGKey and numpy's generators both take."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"seed={seed!r} must be an integer in [0, 2**63)")
    return int(seed)


class NonFiniteError(ValueError):
    """The model produced NaN, infinite or constant logits (broken weights or an overflow): the
    argmax would be token 0, and a trace of zeros would look like a period-1 loop."""


def usable_logits(logits):
    """One flag per row of logits [..., V] (numpy, or traced inside jit): every logit finite
    and not all equal. A row whose logits are all equal carries no choice: it is what an
    overflow inside an RMSNorm gives (mean(x²) = inf scales the hidden state to exactly 0, and
    every logit with it). Two reductions, max and min, which propagate NaN; their difference
    is NaN or infinite if any logit is (or if the logits span more than float32 holds)."""
    spread = logits.max(-1) - logits.min(-1)
    return (spread > 0) & (spread < np.inf)


def check_finite(usable, what: str) -> None:
    """Raise NonFiniteError naming the first index where `usable` (`usable_logits` computed
    inside jit, one flag per row or step) is False."""
    usable = np.asarray(usable)
    if not usable.all():
        where = [int(i) for i in np.argwhere(~usable)[0]]
        raise NonFiniteError(f"non-finite or constant logits in {what} at index {where} "
                             f"({int((~usable).sum())} of {usable.size} entries): the model's "
                             "weights or activations are NaN or overflow (or every logit is "
                             "equal)")
