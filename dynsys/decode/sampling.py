"""Next-token selection with Hugging Face semantics, in Hugging Face's order:
repetition penalty, no-repeat-n-gram, temperature, top-k, top-p, then argmax or a draw.

The Sampler's *kind* (greedy or not, which filters are on, the n-gram size) is static; its
values are traced arrays, so a sweep over temperatures or top-p compiles once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dynsys.config import check_float, check_int, set_frozen


@dataclasses.dataclass(frozen=True)
class Sampler:
    """temperature 0 is greedy (ties to the lowest id). top_k 0 and top_p 1 are off.
    repetition_penalty ρ (CTRL): a seen token's score s becomes s/ρ if s > 0 else s·ρ.
    no_repeat_ngram_size n: a token that would complete an n-gram already in the sequence
    is banned.

    Accepted: temperature >= 0, 0 < top_p <= 1 and repetition_penalty > 0, finite numbers (ints
    and numpy scalars too, stored as float); top_k >= 0 and no_repeat_ngram_size >= 0, integers
    (numpy integers too, stored as int; never bools or floats). Anything else is a ValueError."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        set_frozen(
            self, temperature=check_float("temperature", self.temperature, at_least=0),
            top_k=check_int("top_k", self.top_k, minimum=0),
            top_p=check_float("top_p", self.top_p, above=0, at_most=1),
            repetition_penalty=check_float("repetition_penalty", self.repetition_penalty, above=0),
            no_repeat_ngram_size=check_int("no_repeat_ngram_size", self.no_repeat_ngram_size,
                                           minimum=0))

    @property
    def kind(self) -> tuple[bool, bool, bool, bool, int]:
        """The static part: (greedy, top_k on, top_p on, penalty on, n-gram size)."""
        return (self.temperature == 0, self.top_k > 0, self.top_p < 1,
                self.repetition_penalty != 1, self.no_repeat_ngram_size)

    @property
    def values(self) -> dict[str, jnp.ndarray]:
        return {"temperature": jnp.float32(self.temperature), "top_k": jnp.int32(self.top_k),
                "top_p": jnp.float32(self.top_p),
                "repetition_penalty": jnp.float32(self.repetition_penalty)}


GREEDY = Sampler()


def process(logits: jnp.ndarray, seq: jnp.ndarray, seen: jnp.ndarray, kind: tuple,
            values: dict) -> jnp.ndarray:
    """Scores [B, V] after the penalty and the n-gram ban (the scores greedy takes argmax of).

    seq [B, C]: the tokens so far; seen [B, C]: which slots hold a real token, the last one
    being the current token (slots fill left to right)."""
    _, _, _, penalty_on, ngram = kind
    B, V = logits.shape
    if penalty_on:
        rho = values["repetition_penalty"]
        present = jnp.zeros((B, V), bool).at[jnp.arange(B)[:, None], seq].max(seen)
        logits = jnp.where(present, jnp.where(logits > 0, logits / rho, logits * rho), logits)
    if ngram:
        logits = jnp.where(_banned_ngram_completions(seq, seen, ngram, V), -jnp.inf, logits)
    return logits


def _banned_ngram_completions(seq, seen, n: int, vocab: int) -> jnp.ndarray:
    """banned[b, x]: some n-gram (w_1..w_{n−1}, x) occurs in row b and w_1..w_{n−1} equals
    the row's last n−1 tokens."""
    B, C = seq.shape
    last_slot = jnp.sum(seen, axis=1) - 1 + jnp.argmax(seen, axis=1)  # [B]
    if n == 1:
        return jnp.zeros((B, vocab), bool).at[jnp.arange(B)[:, None], seq].max(seen)
    offsets = jnp.arange(n - 1)
    last = jnp.take_along_axis(seq, last_slot[:, None] - (n - 2) + offsets[None], axis=1)
    starts = jnp.arange(C - n + 1)
    windows = seq[:, starts[:, None] + offsets[None]]  # [B, W, n−1]
    window_seen = seen[:, starts[:, None] + jnp.arange(n)[None]].all(-1)
    match = (windows == last[:, None, :]).all(-1) & window_seen
    match &= (last_slot - (n - 2) >= jnp.argmax(seen, axis=1))[:, None]
    return jnp.zeros((B, vocab), bool).at[jnp.arange(B)[:, None], seq[:, starts + n - 1]].max(match)


def select(scores: jnp.ndarray, key: jax.Array, kind: tuple, values: dict) -> jnp.ndarray:
    """The next token [B] from processed scores: argmax, or a draw after temperature/top-k/top-p."""
    greedy, top_k_on, top_p_on, _, _ = kind
    if greedy:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    scores = scores / values["temperature"]
    ascending = jnp.sort(scores, axis=-1)
    if top_k_on:
        k = jnp.minimum(values["top_k"], scores.shape[-1])
        kth = jnp.take(ascending, scores.shape[-1] - k, axis=-1)[:, None]
        scores = jnp.where(scores < kth, -jnp.inf, scores)
        ascending = jnp.where(ascending < kth, -jnp.inf, ascending)
    if top_p_on:
        # Drop the ascending-sorted tokens whose cumulative probability is <= 1 − p (the top
        # token always stays); a token is dropped iff its sorted score is below the cut score.
        cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
        drop = cum <= 1 - values["top_p"]
        drop = drop.at[:, -1].set(False)
        cut = jnp.max(jnp.where(drop, ascending, -jnp.inf), axis=-1, keepdims=True)
        scores = jnp.where(scores <= cut, -jnp.inf, scores)
    return jax.random.categorical(key, scores, axis=-1).astype(jnp.int32)


def margin(scores: jnp.ndarray) -> jnp.ndarray:
    """Top-1 minus top-2 score per row: max_v s_v − max_{v ≠ argmax} s_v (0 on a tie)."""
    # Two reductions, not lax.top_k: XLA's CPU top_k is fast alone but, once its values are
    # sliced in the same program, falls back to a path ~100x slower at V = 50k.
    best = jnp.argmax(scores, axis=-1)
    others = jnp.where(jnp.arange(scores.shape[-1]) == best[..., None], -jnp.inf, scores)
    return jnp.max(scores, axis=-1) - jnp.max(others, axis=-1)
