"""Attention concentration: how far a model's attention is from uniform, so that a trivial
test bed shows.

Dilution (docs/concepts.md) is trivially true for a model that spreads its attention evenly:
then the r generated keys get a(R) = r/(n + r + 1) whatever the mechanism. At random
initialisation with a small initializer_range the scores z_j = q·k_j/√H are nearly equal and
that is what happens. For the query of the last prompt token (the one that picks the first
generated token), over the n keys it sees, per layer and head:

    excess    n · max_j a_j        the largest weight over the uniform weight 1/n (1: uniform)
    score_sd  sd_j(z_j)            the spread of the scores (0: uniform)
    entropy   H(a) / ln n          the attention's entropy over the uniform entropy (1: uniform)

with a = softmax(z). A trained model that attends to a few keys has excess ≫ 1, entropy well
below 1 and a score s.d. of several nats.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_finite, check_tokens
from dynsys.config import ModelConfig
from dynsys.decode import run
from dynsys.nn import Model
from dynsys.nn.cache import empty_rows
from dynsys.theory.dilution import queries


@dataclasses.dataclass(frozen=True)
class Concentration:
    """Per prompt, layer and head ([B, L, N] each): the last prompt token's attention over
    the n prompt keys (module docstring). `weights` [B, L, N, n] is that attention itself."""

    excess: np.ndarray
    score_sd: np.ndarray
    entropy: np.ndarray
    weights: np.ndarray

    def summary(self) -> dict[str, float]:
        """Means over prompts, layers and heads, and the largest excess of any head."""
        return {"excess": float(self.excess.mean()), "max_excess": float(self.excess.max()),
                "score_sd": float(self.score_sd.mean()), "entropy": float(self.entropy.mean())}

    def layers(self) -> list[dict[str, float]]:
        """Per layer: `summary` over prompts and heads ({layer, excess, max_excess, score_sd,
        entropy})."""
        return [{"layer": layer, **Concentration(
            self.excess[:, layer], self.score_sd[:, layer], self.entropy[:, layer],
            self.weights[:, layer]).summary()} for layer in range(self.excess.shape[1])]


@functools.partial(jax.jit, static_argnames=("cfg",))
def _last_query_attention(cfg: ModelConfig, params, tokens):
    B, n = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (B, n))
    out = run(cfg, params, tokens, positions, empty_rows(cfg, B, n), jnp.ones((B, n), bool),
              None, record=True)  # no LM head: only the attention scores are needed
    scores = []
    for layer in range(cfg.num_layers):
        q = queries(cfg, out.recorded, layer)[:, -1]  # [B, K, G, H]
        z = jnp.einsum("BKGH,BKHS->BKGS", q, out.rows.k[layer].astype(jnp.float32))
        scores.append(z.reshape(B, cfg.num_heads, n))
    z = jnp.stack(scores, 1)  # [B, L, N, n]
    return z, jnp.isfinite(z).all((1, 2, 3)) & jnp.isfinite(out.hidden).all((1, 2))


def attention_concentration(model: Model, prompts) -> Concentration:
    """The concentration of the attention of each prompt's last token (prompts [B, n], n >= 2,
    all of one length): see the module docstring. One compile per (config, B, n)."""
    cfg = model.config
    prompts = check_tokens(prompts, cfg.vocab_size, "prompts", ndim=2)
    n = prompts.shape[1]
    if n < 2:
        raise ValueError(f"prompts of length {n}: the concentration needs at least 2 keys")
    if n > cfg.max_position_embeddings:
        raise ValueError(f"prompt length {n} exceeds max_position_embeddings="
                         f"{cfg.max_position_embeddings}")
    z, finite = _last_query_attention(cfg, model.params, jnp.asarray(prompts))
    check_finite(finite, "attention_concentration (prompts)")
    z = np.asarray(z, np.float64)
    log_a = z - z.max(-1, keepdims=True)
    log_a -= np.log(np.exp(log_a).sum(-1, keepdims=True))
    a = np.exp(log_a)
    return Concentration(excess=n * a.max(-1), score_sd=z.std(-1),
                         entropy=-(a * log_a).sum(-1) / np.log(n), weights=a)
