"""AdamW with Pythia's weight-decay groups, after clipping by the global gradient norm."""

from __future__ import annotations

import jax
import optax

from dynsys.train.config import TrainConfig
from dynsys.train.schedule import learning_rate

DECAYED = ("kernel", "embedding")  # the parameter leaves that weight decay applies to


def decay_mask(params) -> dict:
    """True for the leaves weight decay applies to: every matrix (linear kernels, the LM head
    and the token embedding), as GPT-NeoX (Pythia) groups them; False for norm scales and
    biases (LayerNorm/RMSNorm parameters and every bias), which decay would pull to zero."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED, params)


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """g ← g · min(1, c / ‖g‖₂) over all parameters together (c = config.clip), then AdamW:

        m ← β₁ m + (1 − β₁) g,   v ← β₂ v + (1 − β₂) g²,
        θ ← θ − lr(s) · ( m̂ / (√v̂ + ε) + λ · mask ⊙ θ ),   m̂ = m / (1 − β₁ᵗ), v̂ = v / (1 − β₂ᵗ)

    with decoupled weight decay λ = config.weight_decay on `decay_mask` and lr(s) the
    `learning_rate` schedule."""
    b1, b2 = config.betas
    return optax.chain(
        optax.clip_by_global_norm(config.clip),
        optax.adamw(learning_rate(config), b1=b1, b2=b2, eps=config.eps,
                    weight_decay=config.weight_decay, mask=decay_mask))
