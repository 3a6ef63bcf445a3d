"""The Markov map of a prompt and its relatives, all through the shared-prefix step.

f_{P,τ}(v) = argmax logits(P + [v]) with v at position n + τ (ties to the lowest id), and its
margin m(v) = top-1 − top-2 logit. The memory-k map takes the last k tokens instead of one.
At temperature T the kernel row K_P(v, ·) = softmax(logits / T), kept sparse (top-k).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from dynsys.checks import check_finite, check_temperature, check_tokens, usable_logits
from dynsys.config import ModelConfig, check_int
from dynsys.decode import last_logits, prefix_for, sampling
from dynsys.nn import Model
from dynsys.nn.cache import Prefix, source_digest
from dynsys.runs import chunked
from dynsys.sharding import use


@dataclasses.dataclass(frozen=True)
class MarkovMap:
    """next[i] = f_{P,τ}(tokens[i]) and margin[i] its top-1 − top-2 logit, for the given
    `tokens` (all of V for a full map). With `kernel_k`, `kernel` is the sparse row-stochastic
    [len(tokens), V] matrix of the top-k softmax at `temperature`, renormalised on the top-k.
    `source`: the digest of the model and prompt it was computed from (`source_digest`)."""

    tokens: np.ndarray
    next: np.ndarray
    margin: np.ndarray
    offset: int | np.ndarray
    prompt_length: int
    vocab_size: int
    source: str
    kernel: sp.csr_array | None = None
    temperature: float | None = None

    @property
    def is_full(self) -> bool:
        """Whether this is the map on all of V, in order (next[v] = f(v))."""
        return np.array_equal(self.tokens, np.arange(self.vocab_size))


@functools.partial(jax.jit, static_argnames=("cfg", "kernel_k"))
def _map_chunk(cfg: ModelConfig, kernel_k: int, params, prefix: Prefix, suffixes, positions,
               temperature):
    """Argmax, margin, top-k (ids, probabilities) and usability (`usable_logits`) of the last
    row token's logits."""
    logits = last_logits(cfg, params, prefix, suffixes, positions)
    nxt = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # lowest id among ties
    if kernel_k:
        top_values, top_ids = jax.lax.top_k(logits, kernel_k)
    else:
        top_values, top_ids = jnp.zeros((len(nxt), 0)), jnp.zeros((len(nxt), 0), jnp.int32)
    probs = jax.nn.softmax(sampling.scaled(top_values, temperature), axis=-1)
    return (nxt, sampling.margin(logits), top_ids.astype(jnp.int32), probs,
            usable_logits(logits))


def _fingerprint(model: Model, prompt: np.ndarray, suffixes: np.ndarray, offsets: np.ndarray,
                 chunk: int, kernel_k: int, temperature: float) -> str:
    """Everything a stored chunk depends on: the model (config and all parameters), the
    prompt, the rows, their offsets and the chunking and kernel settings."""
    h = hashlib.sha256()
    h.update(repr((model.digest, chunk, kernel_k, temperature)).encode())
    h.update(offsets.tobytes())
    h.update(prompt.tobytes())
    h.update(suffixes.tobytes())
    return h.hexdigest()


def suffix_map(model: Model, prompt, suffixes, *, offset=0, chunk: int = 1024,
               kernel_k: int = 0, temperature: float = 1.0, prefix: Prefix | None = None,
               resume_dir: str | Path | None = None, progress: bool = True) -> MarkovMap:
    """The next token after P + s for every row s of `suffixes` [M, k], s placed at positions
    n+τ .. n+τ+k−1 (k = 1: the Markov map on suffixes[:, 0]; k > 1: the memory-k map).
    `offset` τ is one integer or one per row.

    Rows are processed `chunk` at a time through the shared-prefix step (the prefix is cached
    once and never copied per row); with the parameters on a mesh (dynsys.sharding) each
    chunk's rows are split over "data", the model and the prefix over "model". With
    `resume_dir`, each finished chunk is written atomically there and a rerun recomputes only
    the missing chunks.
    """
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    suffixes = check_tokens(suffixes, cfg.vocab_size, "suffixes", ndim=2)
    n, (m, k) = prompt.shape[0], suffixes.shape
    offsets = np.broadcast_to(np.asarray(offset), (m,))
    if not np.issubdtype(offsets.dtype, np.integer) or (offsets < 0).any():
        raise ValueError(f"offset={offset!r} must be non-negative integers")
    if n + offsets.max() + k > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {n} + offset {offsets.max()} + suffix length {k} "
                         f"exceeds max_position_embeddings={cfg.max_position_embeddings}")
    if not 0 <= check_int("kernel_k", kernel_k) <= cfg.vocab_size:
        raise ValueError(f"kernel_k={kernel_k} must lie in [0, {cfg.vocab_size}]")
    if kernel_k:
        temperature = check_temperature(temperature)
    chunk = min(check_int("chunk", chunk, minimum=1), m)
    prefix = prefix_for(model, prompt, prefix)

    positions = (n + offsets[:, None] + np.arange(k)).astype(np.int32)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        padded, at = np.zeros((chunk, k), np.int32), np.zeros((chunk, k), np.int32)
        padded[:stop - start], at[:stop - start] = suffixes[start:stop], positions[start:stop]
        with use(model.params):
            out = _map_chunk(cfg, kernel_k, model.params, prefix, jnp.asarray(padded),
                             jnp.asarray(at), jnp.float32(temperature))
        *part, finite = (np.asarray(x)[:stop - start] for x in out)
        check_finite(finite, f"the map's rows {start}..{stop - 1}")
        return dict(zip(("next", "margin", "ids", "probs"), part))

    parts = chunked(m, chunk, compute, store=resume_dir,
                    fingerprint=_fingerprint(model, prompt, suffixes, offsets, chunk, kernel_k,
                                             temperature),
                    description=f"map: {m} rows after {n} prompt tokens", progress=progress)
    nxt, margin, ids, probs = (np.concatenate([p[f] for p in parts])
                               for f in ("next", "margin", "ids", "probs"))
    kernel = None
    if kernel_k:
        indptr = np.arange(0, m * kernel_k + 1, kernel_k)
        probs = probs.astype(np.float64)
        probs /= probs.sum(axis=1, keepdims=True)
        kernel = sp.csr_array((probs.ravel(), ids.ravel(), indptr),
                              shape=(m, cfg.vocab_size))
        kernel.sort_indices()
    return MarkovMap(tokens=suffixes[:, -1].copy(), next=nxt, margin=margin, offset=offset,
                     prompt_length=n, vocab_size=cfg.vocab_size,
                     source=source_digest(model.digest, prompt), kernel=kernel,
                     temperature=temperature if kernel_k else None)


def markov_map(model: Model, prompt, tokens=None, *, offset: int = 0, **options) -> MarkovMap:
    """f_{P,τ} on `tokens` (default: all of V), τ = offset. Options as in `suffix_map`."""
    V = model.config.vocab_size
    tokens = np.arange(V, dtype=np.int32) if tokens is None else check_tokens(
        tokens, V, "tokens", ndim=1)
    return suffix_map(model, prompt, tokens[:, None], offset=offset, **options)


def lazy_orbit(model: Model, prompt, start: int, *, offset: int = 0, max_steps: int = 100_000,
               prefix: Prefix | None = None) -> tuple[list[int], list[int]]:
    """(tail, cycle) of `start` under f_{P,τ}, evaluating f only on the tokens visited.

    For models whose full map is too costly: cost is (tail + cycle length) single-row steps.
    """
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    check_tokens([start], cfg.vocab_size, "start", ndim=1)
    prefix = prefix_for(model, prompt, prefix)
    seen: dict[int, int] = {}
    path = [int(start)]
    while path[-1] not in seen:
        if len(path) > max_steps:
            raise RuntimeError(f"no cycle within max_steps={max_steps}")
        seen[path[-1]] = len(path) - 1
        f = markov_map(model, prompt, [path[-1]], offset=offset, prefix=prefix, progress=False)
        path.append(int(f.next[0]))
    first = seen[path[-1]]
    return path[:first], path[first:-1]
