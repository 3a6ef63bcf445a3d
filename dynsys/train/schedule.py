"""The learning-rate schedule and the steps at which checkpoints are written."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

from dynsys.config import check_int
from dynsys.train.config import TrainConfig, TrainError


def learning_rate(config: TrainConfig) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """lr(s), the rate of the update from step s to s + 1 (s = 0, 1, …, S − 1): linear warmup
    then cosine decay,

        lr(s) = η · (s + 1) / W                                   for s < W,
        lr(s) = η · (r + (1 − r) · (1 + cos(π · (s − W) / (S − W))) / 2)   for s ≥ W,

    with η = config.lr, W = config.warmup, S = config.steps and r = config.min_lr_ratio: the
    rate reaches η at the last warmup step and decays towards r·η (Pythia: r = 0.1)."""
    peak, warmup, floor = config.lr, config.warmup, config.min_lr_ratio
    span = max(config.steps - warmup, 1)

    def schedule(s):
        s = jnp.asarray(s, jnp.float32)
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * jnp.clip((s - warmup) / span, 0.0, 1.0)))
        return jnp.where(s < warmup, peak * (s + 1) / max(warmup, 1),
                         peak * (floor + (1 - floor) * cosine))

    return schedule


def checkpoint_steps(total: int, every: int) -> tuple[int, ...]:
    """Pythia's checkpoint schedule: steps 0, 1, 2, 4, …, 512 (powers of two), then every
    multiple of `every`, and the final step `total`; all ≤ total, sorted, each once."""
    try:
        total, every = check_int("total", total, 0), check_int("every", every, 1)
    except ValueError as e:
        raise TrainError(str(e)) from None
    steps = {0, total, *range(every, total + 1, every)}
    steps.update(2**i for i in range(10) if 2**i <= total)
    return tuple(sorted(steps))
