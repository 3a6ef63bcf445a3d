"""Self-reinforcement of repetition (Xu et al. 2022, "Learning to Break the Loop"): the more
often a span already stands in the context, the likelier the model is to repeat it again.

A span s = (s_1..s_m) is written K times in a row, x = s s … s, and read teacher-forced. The
probability of repeating it for the k-th time (k = 0: its first occurrence) is the mean, over
its tokens, of the probability the model gives the token after everything before it:

    TP_k(s) = (1/m) Σ_i p(s_i | x_<km+i),      k = 0, 1, …, K−1

(the first token of the first copy, which has no context, is left out of TP_0). Xu et al. find
TP_k increasing in k, for sentences of real text and of random tokens alike; a model whose
TP_k rises towards 1 is one that a loop, once entered, holds ever more firmly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_finite, check_tokens, usable_logits
from dynsys.config import ModelConfig
from dynsys.decode import sequence_logits
from dynsys.nn import Model


@functools.partial(jax.jit, static_argnames=("cfg",))
def _token_probabilities(cfg: ModelConfig, params, tokens):
    """p(x_t | x_<t) for t >= 1, [B, T−1], and whether every row of logits was usable
    (`usable_logits`) [B]."""
    lg = sequence_logits(cfg, params, tokens)[:, :-1].astype(jnp.float32)
    logp = jax.nn.log_softmax(lg, -1)
    chosen = jnp.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    return jnp.exp(chosen), usable_logits(lg).all(1)


def repetition_probability(model: Model, spans, repeats: int) -> np.ndarray:
    """TP_k(s) of the module docstring for each span: spans [S, m] (m >= 2) written `repeats`
    = K >= 2 times; returns [S, K]. One compile per (config, S, m·K)."""
    cfg = model.config
    spans = check_tokens(spans, cfg.vocab_size, "spans", ndim=2)
    if not isinstance(repeats, int | np.integer) or isinstance(repeats, bool) or repeats < 2:
        raise ValueError(f"repeats={repeats!r} must be an integer >= 2")
    S, m = spans.shape
    if m < 2:
        raise ValueError(f"spans of {m} token(s): a span needs at least 2")
    if m * repeats > cfg.max_position_embeddings:
        raise ValueError(f"{repeats} copies of a {m}-token span need {m * repeats} positions; "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    tokens = np.tile(spans, (1, repeats))
    p, finite = _token_probabilities(cfg, model.params, jnp.asarray(tokens))
    check_finite(finite, "repetition_probability (spans)")
    p = np.concatenate([np.full((S, 1), np.nan), np.asarray(p, np.float64)], axis=1)
    return np.nanmean(p.reshape(S, repeats, m), axis=2)
