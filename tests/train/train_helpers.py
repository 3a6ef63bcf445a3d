"""Shared pieces of the training tests: a tiny llama, a periodic corpus, a tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, models

from dynsys import ModelConfig
from dynsys.train import TrainConfig

TINY = ModelConfig(family="llama", vocab_size=64, hidden_size=64, intermediate_size=128,
                   num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                   max_position_embeddings=64)


def tiny_config(**changes) -> TrainConfig:
    """The tiny llama on windows of 33 tokens, 8 per step (256 predictions)."""
    base = dict(model=TINY, seq_len=32, batch=8, steps=100, lr=3e-3, warmup=10, eval_every=20,
                eval_windows=16, save_every=25, checkpoint_every=40)
    return TrainConfig(**{**base, **changes})


def periodic_tokens(n: int, period: int = 7, seed: int = 0) -> np.ndarray:
    """A random period-`period` sequence of ids below TINY's vocabulary, repeated to n tokens."""
    cycle = np.random.default_rng(seed).integers(0, TINY.vocab_size, period)
    return np.resize(cycle, n).astype(np.int32)


def write_tokenizer(directory: Path, size: int) -> Path:
    """A word-level tokenizer of `size` tokens (tokenizer.json, tokenizer_config.json)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = {f"t{i}": i for i in range(size)}
    Tokenizer(models.WordLevel(vocab, unk_token="t0")).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    return directory
