"""Next-token selection with Hugging Face semantics, in Hugging Face's order:
repetition penalty, DRY, no-repeat-n-gram, temperature, top-k, top-p, then argmax or a draw.
DRY (not in transformers) follows text-generation-webui's DRYLogitsProcessor, placed where
that tool's default sampler order has it: after the repetition penalty, before temperature.

The Sampler's *kind* (greedy or not, which filters are on, the n-gram size) is static; its
values are traced arrays, so a sweep over temperatures or top-p compiles once.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dynsys.checks import check_temperature
from dynsys.config import check_float, check_int, set_frozen
from dynsys.config.model import INT32_LIMIT
from dynsys.nn.cache import bucket


@dataclasses.dataclass(frozen=True)
class Sampler:
    """temperature 0 is greedy (ties to the lowest id). top_k 0 and top_p 1 are off.
    repetition_penalty ρ (CTRL): a seen token's score s becomes s/ρ if s > 0 else s·ρ.
    no_repeat_ngram_size n: a token that would complete an n-gram already in the sequence
    is banned.

    DRY ("Don't Repeat Yourself", text-generation-webui's DRYLogitsProcessor; dry_multiplier
    m = 0 is off): in the last dry_penalty_last_n tokens x (0: all), L_v is the max over slots
    i < last with x_{i+1} = v, v not a sequence breaker, of the length of the longest common
    suffix of x_{..i} and x_{..last} holding no breaker, capped at DRY_MAX_MATCH (webui's cap);
    if L_v >= dry_allowed_length a, the score s_v becomes s_v − m·dry_base^(L_v − a). Matches
    may overlap the suffix (x = 1 1 1: L_1 = 2).

    Accepted: temperature 0 or >= dynsys.checks.MIN_TEMPERATURE, 0 < top_p <= 1,
    repetition_penalty > 0, dry_multiplier >= 0 and dry_base >= 1, finite numbers (ints and
    numpy scalars too, stored as float); top_k >= 0, no_repeat_ngram_size >= 0,
    dry_allowed_length >= 1 and dry_penalty_last_n >= 0, integers (numpy integers too, stored
    as int; never bools or floats; the traced ones below 2**31); dry_sequence_breakers, a tuple
    or list of token ids >= 0 (stored as a tuple of int). Anything else is a ValueError."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_sequence_breakers: tuple[int, ...] = ()
    dry_penalty_last_n: int = 0

    def __post_init__(self):
        if not isinstance(self.dry_sequence_breakers, tuple | list):
            raise ValueError(f"dry_sequence_breakers={self.dry_sequence_breakers!r} must be a "
                             "tuple of token ids")
        set_frozen(
            self, temperature=check_temperature(self.temperature, greedy=True),
            top_k=check_int("top_k", self.top_k, minimum=0, maximum=INT32_LIMIT - 1),
            top_p=check_float("top_p", self.top_p, above=0, at_most=1),
            repetition_penalty=check_float("repetition_penalty", self.repetition_penalty, above=0),
            no_repeat_ngram_size=check_int("no_repeat_ngram_size", self.no_repeat_ngram_size,
                                           minimum=0),
            dry_multiplier=check_float("dry_multiplier", self.dry_multiplier, at_least=0),
            dry_base=check_float("dry_base", self.dry_base, at_least=1),
            dry_allowed_length=check_int("dry_allowed_length", self.dry_allowed_length,
                                         minimum=1, maximum=INT32_LIMIT - 1),
            dry_sequence_breakers=tuple(check_int("dry_sequence_breakers", t, minimum=0,
                                                  maximum=INT32_LIMIT - 1)
                                        for t in self.dry_sequence_breakers),
            dry_penalty_last_n=check_int("dry_penalty_last_n", self.dry_penalty_last_n,
                                         minimum=0, maximum=INT32_LIMIT - 1))

    @property
    def kind(self) -> tuple[bool, bool, bool, bool, int, bool]:
        """The static part: (greedy, top_k on, top_p on, penalty on, n-gram size, DRY on)."""
        return (self.temperature == 0, self.top_k > 0, self.top_p < 1,
                self.repetition_penalty != 1, self.no_repeat_ngram_size, self.dry_multiplier > 0)

    @property
    def values(self) -> dict[str, jnp.ndarray]:
        """The traced part, DRY's entries only when DRY is on. The breakers are padded with −1
        (no token) to `bucket(count, DRY_BREAKER_BUCKET)`: counts in one bucket share a compile."""
        values = {"temperature": jnp.float32(self.temperature), "top_k": jnp.int32(self.top_k),
                  "top_p": jnp.float32(self.top_p),
                  "repetition_penalty": jnp.float32(self.repetition_penalty)}
        if self.dry_multiplier == 0:
            return values
        breakers = self.dry_sequence_breakers
        padded = (*breakers, *(-1,) * (bucket(len(breakers), DRY_BREAKER_BUCKET) - len(breakers)))
        return values | {"dry_multiplier": jnp.float32(self.dry_multiplier),
                         "dry_base": jnp.float32(self.dry_base),
                         "dry_allowed_length": jnp.int32(self.dry_allowed_length),
                         "dry_sequence_breakers": jnp.asarray(padded, jnp.int32),
                         "dry_penalty_last_n": jnp.int32(self.dry_penalty_last_n)}


GREEDY = Sampler()
DRY_MAX_MATCH = 50  # text-generation-webui's cap on a DRY match length
DRY_BREAKER_BUCKET = 8  # up to this many sequence breakers share one compile


def process(logits: jnp.ndarray, seq: jnp.ndarray, seen: jnp.ndarray, kind: tuple,
            values: dict) -> jnp.ndarray:
    """Scores [B, V] after the penalty, DRY and the n-gram ban (the scores greedy takes argmax
    of).

    seq [B, C]: the tokens so far; seen [B, C]: which slots hold a real token, one contiguous
    run, the last one being the current token (slots fill left to right)."""
    _, _, _, penalty_on, ngram, dry_on = kind
    B, V = logits.shape
    if penalty_on:
        rho = values["repetition_penalty"]
        present = jnp.zeros((B, V), bool).at[jnp.arange(B)[:, None], seq].max(seen)
        logits = jnp.where(present, jnp.where(logits > 0, logits / rho, logits * rho), logits)
    if dry_on:
        length = _dry_match_lengths(seq, seen, values, V)
        allowed = values["dry_allowed_length"]
        penalty = values["dry_multiplier"] * values["dry_base"] ** (length - allowed)
        logits = jnp.where(length >= allowed, logits - penalty, logits)
    if ngram:
        logits = jnp.where(_banned_ngram_completions(seq, seen, ngram, V), -jnp.inf, logits)
    return logits


def _dry_match_lengths(seq, seen, values, vocab: int) -> jnp.ndarray:
    """L [B, V] of the Sampler's DRY rule (0 where v follows no match), in O(C·DRY_MAX_MATCH):
    with usable slots u = [start, last] (the last dry_penalty_last_n real ones) and tail
    t_k = x_{last−k}, the match ending at slot i has length min{k : x_{i−k} ≠ t_k, or slot i−k
    or last−k is not usable, or t_k is a breaker}, capped; L_v is its max over i < last with
    x_{i+1} = v not a breaker."""
    B, C = seq.shape
    first = jnp.argmax(seen, axis=1)
    last = first + jnp.sum(seen, axis=1) - 1
    n = values["dry_penalty_last_n"]
    start = jnp.where(n > 0, jnp.maximum(first, last - n + 1), first)
    slots = jnp.arange(C)
    rows = jnp.arange(B)[:, None]
    usable = (slots >= start[:, None]) & (slots <= last[:, None])  # [B, C]
    breaker = (seq[..., None] == values["dry_sequence_breakers"]).any(-1)  # [B, C]
    k = jnp.arange(min(C, DRY_MAX_MATCH))
    tail = jnp.maximum(last[:, None] - k, 0)  # [B, K] slot last − k
    tail_ok = usable[rows, tail] & ~breaker[rows, tail] & (last[:, None] >= k)
    back = slots[:, None] - k  # [C, K] slot i − k
    agree = ((seq[rows[..., None], jnp.maximum(back, 0)] == seq[rows, tail][:, None])
             & usable[rows[..., None], jnp.maximum(back, 0)] & (back >= 0)
             & tail_ok[:, None])  # [B, C, K]
    length = jnp.cumprod(agree.astype(jnp.int32), axis=-1).sum(-1)  # [B, C] match ending at slot i
    follower = jnp.roll(seq, -1, axis=1)  # x_{i+1}
    counts = usable & (slots < last[:, None]) & ~jnp.roll(breaker, -1, axis=1)
    return jnp.zeros((B, vocab), length.dtype).at[rows, follower].max(
        jnp.where(counts, length, 0))


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
    greedy, top_k_on, top_p_on, *_ = kind
    if greedy:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    scores = scaled(scores, values["temperature"])
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


def scaled(scores, temperature):
    """(scores − their row max) / temperature: softmax(scores / T) unchanged (and the same
    tokens kept by top-k and top-p), but no score overflows for any T >= MIN_TEMPERATURE, where
    scores / T alone reaches inf − inf = NaN inside the softmax. numpy or jax arrays."""
    if scores.shape[-1] == 0:  # no kept scores (a map without its kernel): nothing to scale
        return scores
    return (scores - scores.max(-1, keepdims=True)) / temperature


def margin(scores: jnp.ndarray) -> jnp.ndarray:
    """Top-1 minus top-2 score per row: max_v s_v − max_{v ≠ argmax} s_v (0 on a tie)."""
    # Two reductions, not lax.top_k: XLA's CPU top_k is fast alone but, once its values are
    # sliced in the same program, falls back to a path ~100x slower at V = 50k.
    best = jnp.argmax(scores, axis=-1)
    others = jnp.where(jnp.arange(scores.shape[-1]) == best[..., None], -jnp.inf, scores)
    return jnp.max(scores, axis=-1) - jnp.max(others, axis=-1)


def top_logprobs(logits: jnp.ndarray, k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The k most likely ids [B, k] (int32) and their log-probabilities [B, k], log_softmax of
    the logits given (float32), sorted descending, ties to the lower id; [B, 0] each for k = 0."""
    if k == 0:
        empty = jnp.zeros((*logits.shape[:-1], 0))
        return empty.astype(jnp.int32), empty
    values, ids = jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), k)
    return ids.astype(jnp.int32), values
