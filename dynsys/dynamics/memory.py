"""The smallest memory that explains each step of a greedy trace.

Prompt P of length n, greedy trace x_1..x_G with x_j at position n + j − 1 (as `generate`
places it; a left-padded prompt counts its real tokens only). Step t (t = 1..G−1) produces
x_{t+1}. The memory-k prediction at step t is

    g_k(t) = argmax logits(P + x_{t−k+1..t}),   x_{t−k+1..t} at positions n+t−k .. n+t−1,

their real positions, the earlier generated tokens x_1..x_{t−k} simply absent (no key, no
shift of position); ties go to the lowest id, as greedy decoding breaks them. k = 1 is the
Markov map, g_1(t) = f_{P,t−1}(x_t); k = t is the whole history, so g_t(t) = x_{t+1} for a
greedy trace by definition (up to a margin below float error: the trace came from the cached
decode loop, g from the shared-prefix step). The memory of step t is the smallest k ≤ K with
g_k(t) = x_{t+1}, or NONE (0) when no k ≤ K explains it (possible only for K < t). Agreement
need not be monotone in k: `Memory.explains` keeps every k.

Computed by windows, not per (t, k): the window starting at token s holds x_s..x_{s+W−1}
(W = min(K, G−1)) at positions n+s−1.., and, attention being causal, its logits at column c
are those after P + x_s..x_{s+c}: g_{c+1}(s + c). So the G−1 windows give every (t, k ≤ K)
at once: (G−1)·W tokens through the model after the prompt's prefix (computed once per
prompt, never copied per row), each attending to n + c + 1 keys, against G tokens for the
generation itself; the windows are independent rows (no loop over steps), `chunk` of them per
call of one compiled program: one compile per (chunk, W, prefix capacity), the capacity shared
by all prompts of a call.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_finite, check_int, check_tokens, usable_logits
from dynsys.config import ModelConfig
from dynsys.decode import logits, prefill, prefix_for, run
from dynsys.nn import Model
from dynsys.nn.cache import Prefix, bucket, empty_rows
from dynsys.sharding import use

NONE = 0  # the memory of a step that no k ≤ K explains
LOGIT_BUDGET = 1 << 25  # logits held at once (floats): chunk·W·V stays within it


@dataclasses.dataclass(frozen=True)
class Memory:
    """explains [B, G−1, K] bool: explains[b, t−1, k−1] is g_k(t) = x_{t+1} for trace b (the
    module docstring); False for k > t, where no window of k generated tokens exists."""

    explains: np.ndarray

    @property
    def smallest(self) -> np.ndarray:
        """[B, G−1] int32: the smallest k with explains, NONE (0) where there is none."""
        first = self.explains.argmax(-1) + 1
        return np.where(self.explains.any(-1), first, NONE).astype(np.int32)


def window_logits(cfg: ModelConfig, params, prefix: Prefix, windows, positions) -> jnp.ndarray:
    """Float32 logits [M, W, V] of windows [M, W] at positions [M, W] after the shared prefix:
    entry [m, c] is the next-token logits after P + windows[m, :c + 1] (causal attention)."""
    M, W = windows.shape
    out = run(cfg, params, windows, positions, empty_rows(cfg, M, W), jnp.ones((M, W), bool),
              prefix)
    return logits(cfg, params, out.hidden)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _window_next(cfg: ModelConfig, params, prefix: Prefix, windows, positions):
    """The greedy next token [M, W] of every window prefix and whether its logits are usable."""
    out = window_logits(cfg, params, prefix, windows, positions)
    return jnp.argmax(out, -1).astype(jnp.int32), usable_logits(out)


def _real_prompts(prompts, mask, vocab_size: int) -> list[np.ndarray]:
    """The prompts as 1-D arrays of real tokens: rows of [B, n], ragged sequences, or, with a
    real-token `mask` [B, W], the rows of left-padded tokens [B, W]."""
    if mask is None:
        if isinstance(prompts, np.ndarray | jnp.ndarray) and np.ndim(prompts) != 2:
            raise ValueError(f"prompts must be 2-D [batch, length], got shape "
                             f"{np.shape(prompts)}")
        return [check_tokens(p, vocab_size, f"prompts[{i}]", ndim=1)
                for i, p in enumerate(prompts)]
    tokens, mask = check_tokens(prompts, vocab_size, "prompts", ndim=2), np.asarray(mask)
    if mask.shape != tokens.shape or mask.dtype != bool:
        raise ValueError(f"mask must be bool of the prompts' shape {tokens.shape}, got "
                         f"{mask.dtype} {mask.shape}")
    lengths = mask.sum(1)
    left_padded = np.arange(mask.shape[1])[None] >= mask.shape[1] - lengths[:, None]
    if (lengths == 0).any() or (mask != left_padded).any():
        bad = int(np.argmax((lengths == 0) | (mask != left_padded).any(1)))
        raise ValueError(f"mask row {bad} is not left padding followed by at least one real "
                         "token")
    return [row[m] for row, m in zip(tokens, mask)]


def step_memory(model: Model, prompts, traces, max_memory: int, *, mask=None,
                prefixes: Sequence[Prefix] | None = None, chunk: int | None = None) -> Memory:
    """For each prompt b and its greedy trace traces[b] [G], whether each memory k ≤ K =
    max_memory explains each step t = 1..G−1 (see the module docstring); `.smallest` is the
    smallest such k.

    prompts: an int array [B, n], a list of 1-D sequences of different lengths, or, with
    `mask` [B, W] (True on real tokens), the left-padded tokens [B, W] of `pad_prompts`.
    prefixes: each prompt's `prefill` where the caller has them (checked against the prompt);
    otherwise computed here at the capacity bucket(longest prompt). chunk: windows per call
    (default: as many as keep chunk·W·V logits within LOGIT_BUDGET floats).
    """
    cfg = model.config
    rows = _real_prompts(prompts, mask, cfg.vocab_size)
    traces = check_tokens(traces, cfg.vocab_size, "traces", ndim=2)
    (B, G), K = traces.shape, check_int("max_memory", max_memory, minimum=1)
    if len(rows) != B:
        raise ValueError(f"{len(rows)} prompts but {B} traces")
    if G < 2:
        raise ValueError(f"traces have {G} token(s): a step needs at least 2")
    if prefixes is not None and len(prefixes) != B:
        raise ValueError(f"{len(prefixes)} prefixes for {B} prompts")
    longest = max(len(r) for r in rows)
    if longest + G - 1 > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {longest} + {G - 1} generated tokens exceeds "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    W, M = min(K, G - 1), G - 1  # window length, windows per prompt
    chunk = (min(M, max(1, LOGIT_BUDGET // (W * cfg.vocab_size))) if chunk is None
             else check_int("chunk", chunk, minimum=1))
    padded = -(-M // chunk) * chunk
    start, column = np.arange(padded)[:, None], np.arange(W)[None]  # window j: x_{j+1}..
    real = (start + column <= G - 2)  # [padded, W]: the window prefix ends at x_1..x_{G−1}
    explains = np.zeros((B, M, K), bool)
    for b, (prompt, trace) in enumerate(zip(rows, traces)):
        prefix = (prefill(model, prompt, capacity=bucket(longest)) if prefixes is None
                  else prefix_for(model, prompt, prefixes[b]))
        ext = np.concatenate([trace, np.zeros(padded + W, np.int32)])
        windows = ext[start + column]
        positions = np.minimum(len(prompt) + start + column,
                               cfg.max_position_embeddings - 1).astype(np.int32)
        nxt, usable = [], []
        with use(model.params):
            for i in range(0, padded, chunk):
                out = _window_next(cfg, model.params, prefix, jnp.asarray(windows[i:i + chunk]),
                                   jnp.asarray(positions[i:i + chunk]))
                nxt.append(np.asarray(out[0]))
                usable.append(np.asarray(out[1]))
        check_finite(np.concatenate(usable)[real], f"memory windows of prompt {b}")
        hit = (np.concatenate(nxt) == ext[start + column + 1]) & real  # [padded, W]
        # step t (row t − 1) with memory k (column k − 1) is window t − k, column k − 1
        t, k = np.arange(1, M + 1)[:, None], np.arange(1, W + 1)[None]
        explains[b, :, :W] = np.where(t >= k, hit[np.maximum(t - k, 0), k - 1], False)
    return Memory(explains)
