"""KV cache pytrees: a shared prefix with no batch axis, and per-row caches of fixed capacity."""

from __future__ import annotations

import hashlib

import jax.numpy as jnp
import numpy as np
from flax import struct

from dynsys.config import ModelConfig


@struct.dataclass
class RowCache:
    """Per-row keys [B, K, H, C] and values [B, K, C, H], one array per layer (RoPE already
    applied to k). Keys are stored transposed so that the scores q·k are a canonical matmul.

    valid[b, c]: slot c of row b holds a real token (left padding and unwritten slots are False).
    end: the next slot to write, shared by all rows (ragged prompts are left-padded).
    """

    k: tuple[jnp.ndarray, ...]
    v: tuple[jnp.ndarray, ...]
    valid: jnp.ndarray
    end: jnp.ndarray

    @property
    def capacity(self) -> int:
        return self.valid.shape[1]


@struct.dataclass
class Prefix:
    """The shared prompt's keys [K, H, S] and values [K, S, H], one array per layer, no batch
    axis (keys transposed as in RowCache).

    Slots [0, length) hold the prompt at positions 0..length−1; the rest is unused capacity.
    source [8] uint32: the SHA-256 of the model and prompt it was computed from (see
    `source_digest`), carried as data so that a new prompt does not recompile; entry points
    that take a prefix refuse one of another model or prompt.
    """

    k: tuple[jnp.ndarray, ...]
    v: tuple[jnp.ndarray, ...]
    length: jnp.ndarray
    source: jnp.ndarray

    @property
    def capacity(self) -> int:
        return self.v[0].shape[1]

    @property
    def valid(self) -> jnp.ndarray:
        return jnp.arange(self.capacity) < self.length


# Logical axis names (dynsys.sharding) of the cache arrays, one layer's each.
ROW_KEY_AXES = ("batch", "kv_heads", "head_dim", "cache_seq")
ROW_VALUE_AXES = ("batch", "kv_heads", "cache_seq", "head_dim")
PREFIX_KEY_AXES = ROW_KEY_AXES[1:]
PREFIX_VALUE_AXES = ROW_VALUE_AXES[1:]


def empty_rows(cfg: ModelConfig, batch: int, capacity: int) -> RowCache:
    K, H, L = cfg.num_kv_heads, cfg.head_dim, cfg.num_layers
    keys = tuple(jnp.zeros((batch, K, H, capacity), cfg.cache_dtype) for _ in range(L))
    values = tuple(jnp.zeros((batch, K, capacity, H), cfg.cache_dtype) for _ in range(L))
    return RowCache(k=keys, v=values, valid=jnp.zeros((batch, capacity), bool),
                    end=jnp.zeros((), jnp.int32))


def grow(rows: RowCache, capacity: int) -> RowCache:
    """The same rows in a cache of a larger capacity: new slots empty (invalid, zero)."""
    extra = capacity - rows.capacity
    if extra < 0:
        raise ValueError(f"cannot shrink a row cache of capacity {rows.capacity} to {capacity}")

    def pad(x, axis: int):
        return jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])

    return rows.replace(k=tuple(pad(k, 3) for k in rows.k), v=tuple(pad(v, 2) for v in rows.v),
                        valid=pad(rows.valid, 1))


def prefix_of(rows: RowCache, source) -> Prefix:
    """The single row of a one-row cache (filled left to right, no padding) as a shared prefix
    computed from `source` (a digest as 8 uint32 words)."""
    return Prefix(k=tuple(k[0] for k in rows.k), v=tuple(v[0] for v in rows.v), length=rows.end,
                  source=source)


def source_digest(model_digest: str, prompt: np.ndarray) -> str:
    """SHA-256 (hex) of a model digest and a prompt's token ids: what a prefix or a Markov map
    of that prompt depends on."""
    prompt = np.ascontiguousarray(prompt, np.int32)
    return hashlib.sha256(model_digest.encode() + b"|" + prompt.tobytes()).hexdigest()


def digest_words(hexdigest: str) -> np.ndarray:
    """A SHA-256 hex digest as 8 uint32 words (how a Prefix carries it)."""
    return np.frombuffer(bytes.fromhex(hexdigest), np.uint32).copy()


def words_digest(words) -> str:
    """The hex digest of 8 uint32 words (inverse of `digest_words`)."""
    return np.asarray(words, np.uint32).tobytes().hex()


def bucket(n: int, minimum: int = 16) -> int:
    """Round a length up to a bucket: a power of two up to 64, then 8 buckets per octave
    (at most 12.5% padding), so sweeps over lengths compile a bounded number of times."""
    if n <= 64:
        return max(minimum, 1 << max(n - 1, 0).bit_length())
    step = 1 << (n.bit_length() - 4)
    return -(-n // step) * step
