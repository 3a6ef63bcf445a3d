"""Prompt generators for the experiments (seeded, numpy int32 arrays)."""

from __future__ import annotations

import numpy as np


def _check(vocab_size: int, length: int) -> None:
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be positive")
    if length < 1:
        raise ValueError(f"length={length} must be positive")


def repeated_ngram(vocab_size: int, n: int, length: int, seed: int = 0) -> np.ndarray:
    """A uniformly random n-gram (ids in [0, vocab_size)) repeated and cut to `length` tokens."""
    _check(vocab_size, length)
    if n < 1:
        raise ValueError(f"n={n} must be positive")
    gram = np.random.default_rng(seed).integers(0, vocab_size, n, dtype=np.int32)
    return np.resize(gram, length)


def random_tokens(vocab_size: int, length: int, seed: int = 0) -> np.ndarray:
    """`length` i.i.d. uniform token ids: a prompt with no repetition structure."""
    _check(vocab_size, length)
    return np.random.default_rng(seed).integers(0, vocab_size, length, dtype=np.int32)


PROMPT_KINDS = ("ngram", "random")


def make_prompt(kind: str, vocab_size: int, n: int, seed: int, ngram: int = 3) -> np.ndarray:
    """A repeated random `ngram`-gram ('ngram') or i.i.d. uniform tokens ('random')."""
    if kind == "ngram":
        return repeated_ngram(vocab_size, ngram, n, seed)
    if kind == "random":
        return random_tokens(vocab_size, n, seed)
    raise ValueError(f"prompt kind {kind!r} is not one of {PROMPT_KINDS}")
