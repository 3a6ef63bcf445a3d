"""Next-token selection with Hugging Face semantics, in Hugging Face's order:
repetition penalty, presence and frequency penalties, DRY, no-repeat-n-gram, the user's
logits processor, temperature, top-k, top-p, min-p, then argmax or a draw. DRY (not in
transformers) follows text-generation-webui's DRYLogitsProcessor, placed where that tool's
default sampler order has it: after the repetition penalty, before temperature. Presence and
frequency penalties (not in transformers) follow vLLM and the OpenAI API: they count the
generated tokens only, not the prompt's. A user's processor sits where transformers puts a
`logits_processor` passed to generate: after its own processors, before the warpers.

Stop tokens end a row: the row emits `pad_token` from the step after its first stop token on
and is marked finished (transformers' eos_token_id and pad_token_id), but every row still
runs max_new_tokens steps: generation has a fixed length, the default (no stop tokens) and
what the dynamics code uses (a trace is a fixed-length orbit, not a text).

The Sampler's *kind* (greedy or not, which filters are on, the n-gram size, the processor) is
static; its values are traced arrays, so a sweep over temperatures or top-p compiles once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

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
    or list of token ids >= 0 (stored as a tuple of int). Anything else is a ValueError.

    min_p p (transformers' MinPLogitsWarper; 0 is off): after temperature, top-k and top-p,
    a token whose probability is below p times the most likely token's is dropped (sampling
    only: the argmax is never dropped). presence_penalty α and frequency_penalty β (vLLM and
    the OpenAI API; 0 is off): with c_v the count of v among the *generated* tokens so far, the
    score s_v becomes s_v − α·[c_v > 0] − β·c_v. stop_tokens: ids that end a row (see the
    module docstring); pad_token, the id a finished row emits. Accepted: 0 <= min_p <= 1,
    finite penalties of either sign, ids >= 0 (below the vocabulary, checked by generate).

    logits_processor: None, or a pure-JAX function (scores [B, V], seq [B, C], seen [B, C]) ->
    scores [B, V] (seq, seen as `process` takes them: the tokens so far in cache slots and
    which slots hold a real token), run inside the jitted loop after the built-in processors.
    It is part of the static kind, compared by identity: define it once (a new lambda per call
    compiles a new program)."""

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
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop_tokens: tuple[int, ...] = ()
    pad_token: int = 0
    logits_processor: Callable | None = None

    def __post_init__(self):
        for name in ("dry_sequence_breakers", "stop_tokens"):
            if not isinstance(getattr(self, name), tuple | list):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a tuple of token ids")
        if self.logits_processor is not None and not callable(self.logits_processor):
            raise ValueError(f"logits_processor={self.logits_processor!r} must be None or a "
                             "function (scores, seq, seen) -> scores")
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
                                         minimum=0, maximum=INT32_LIMIT - 1),
            min_p=check_float("min_p", self.min_p, at_least=0, at_most=1),
            presence_penalty=check_float("presence_penalty", self.presence_penalty),
            frequency_penalty=check_float("frequency_penalty", self.frequency_penalty),
            stop_tokens=tuple(check_int("stop_tokens", t, minimum=0, maximum=INT32_LIMIT - 1)
                              for t in self.stop_tokens),
            pad_token=check_int("pad_token", self.pad_token, minimum=0,
                                maximum=INT32_LIMIT - 1))

    @property
    def kind(self) -> Kind:
        """The static part (`Kind`)."""
        return Kind(self.temperature == 0, self.top_k > 0, self.top_p < 1,
                    self.repetition_penalty != 1, self.no_repeat_ngram_size,
                    self.dry_multiplier > 0, self.min_p > 0,
                    self.presence_penalty != 0 or self.frequency_penalty != 0,
                    bool(self.stop_tokens), self.logits_processor)

    @property
    def values(self) -> dict[str, jnp.ndarray]:
        """The traced part, DRY's and the stop tokens' entries only when on. The breakers and
        stop tokens are padded with −1 (no token) to `bucket(count, DRY_BREAKER_BUCKET)`:
        counts in one bucket share a compile."""
        values = {"temperature": jnp.float32(self.temperature), "top_k": jnp.int32(self.top_k),
                  "top_p": jnp.float32(self.top_p),
                  "repetition_penalty": jnp.float32(self.repetition_penalty),
                  "min_p": jnp.float32(self.min_p),
                  "presence_penalty": jnp.float32(self.presence_penalty),
                  "frequency_penalty": jnp.float32(self.frequency_penalty)}
        if self.stop_tokens:
            values |= {"stop_tokens": _padded(self.stop_tokens),
                       "pad_token": jnp.int32(self.pad_token)}
        if self.dry_multiplier == 0:
            return values
        return values | {"dry_multiplier": jnp.float32(self.dry_multiplier),
                         "dry_base": jnp.float32(self.dry_base),
                         "dry_allowed_length": jnp.int32(self.dry_allowed_length),
                         "dry_sequence_breakers": _padded(self.dry_sequence_breakers),
                         "dry_penalty_last_n": jnp.int32(self.dry_penalty_last_n)}


class Kind(NamedTuple):
    """A Sampler's static part: what is on (each a separate compile), the n-gram size and the
    logits processor."""

    greedy: bool
    top_k: bool
    top_p: bool
    repetition_penalty: bool
    ngram: int
    dry: bool
    min_p: bool
    counts: bool  # presence or frequency penalty
    stop: bool
    processor: Callable | None


def _padded(ids: tuple[int, ...]) -> jnp.ndarray:
    """ids padded with −1 (no token) to bucket(count, DRY_BREAKER_BUCKET), as int32."""
    return jnp.asarray((*ids, *(-1,) * (bucket(len(ids), DRY_BREAKER_BUCKET) - len(ids))),
                       jnp.int32)


GREEDY = Sampler()
DRY_MAX_MATCH = 50  # text-generation-webui's cap on a DRY match length
DRY_BREAKER_BUCKET = 8  # up to this many sequence breakers share one compile


def process(logits: jnp.ndarray, seq: jnp.ndarray, seen: jnp.ndarray, kind: Kind,
            values: dict, generated_from: int = 0) -> jnp.ndarray:
    """Scores [B, V] after the penalties, DRY, the n-gram ban and the user's processor (the
    scores greedy takes argmax of).

    seq [B, C]: the tokens so far; seen [B, C]: which slots hold a real token, one contiguous
    run, the last one being the current token (slots fill left to right). Slots from
    `generated_from` on hold generated tokens (what presence and frequency penalties count)."""
    B, V = logits.shape
    rows = jnp.arange(B)[:, None]
    if kind.repetition_penalty:
        rho = values["repetition_penalty"]
        present = jnp.zeros((B, V), bool).at[rows, seq].max(seen)
        logits = jnp.where(present, jnp.where(logits > 0, logits / rho, logits * rho), logits)
    if kind.counts:
        generated = seen & (jnp.arange(seq.shape[1]) >= generated_from)
        counts = jnp.zeros((B, V), jnp.float32).at[rows, seq].add(generated)
        logits = (logits - values["presence_penalty"] * (counts > 0)
                  - values["frequency_penalty"] * counts)
    if kind.dry:
        length = _dry_match_lengths(seq, seen, values, V)
        allowed = values["dry_allowed_length"]
        penalty = values["dry_multiplier"] * values["dry_base"] ** (length - allowed)
        logits = jnp.where(length >= allowed, logits - penalty, logits)
    if kind.ngram:
        logits = jnp.where(_banned_ngram_completions(seq, seen, kind.ngram, V), -jnp.inf, logits)
    if kind.processor is not None:
        logits = kind.processor(logits, seq, seen)
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


def select(scores: jnp.ndarray, key: jax.Array, kind: Kind, values: dict) -> jnp.ndarray:
    """The next token [B] from processed scores: argmax, or a draw after temperature, top-k,
    top-p and min-p."""
    if kind.greedy:
        return jnp.argmax(scores, axis=-1).astype(jnp.int32)
    scores = scaled(scores, values["temperature"])
    ascending = jnp.sort(scores, axis=-1)
    if kind.top_k:
        k = jnp.minimum(values["top_k"], scores.shape[-1])
        kth = jnp.take(ascending, scores.shape[-1] - k, axis=-1)[:, None]
        scores = jnp.where(scores < kth, -jnp.inf, scores)
        ascending = jnp.where(ascending < kth, -jnp.inf, ascending)
    if kind.top_p:
        # Drop the ascending-sorted tokens whose cumulative probability is <= 1 − p (the top
        # token always stays); a token is dropped iff its sorted score is below the cut score.
        cum = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
        drop = cum <= 1 - values["top_p"]
        drop = drop.at[:, -1].set(False)
        cut = jnp.max(jnp.where(drop, ascending, -jnp.inf), axis=-1, keepdims=True)
        scores = jnp.where(scores <= cut, -jnp.inf, scores)
    if kind.min_p:
        probs = jax.nn.softmax(scores, axis=-1)
        scores = jnp.where(probs < values["min_p"] * probs.max(-1, keepdims=True), -jnp.inf,
                           scores)
    return jax.random.categorical(key, scores, axis=-1).astype(jnp.int32)


def stop(token: jnp.ndarray, finished: jnp.ndarray, kind: Kind, values: dict
         ) -> tuple[jnp.ndarray, jnp.ndarray]:
    """token [B] with the finished rows' replaced by pad_token, and finished [B] updated: a
    row is finished from the step after it emits one of stop_tokens. Unchanged without them."""
    if not kind.stop:
        return token, finished
    token = jnp.where(finished, values["pad_token"], token)
    return token, finished | (token[:, None] == values["stop_tokens"]).any(-1)


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
