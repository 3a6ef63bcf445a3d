"""The loss, its gradient over micro-batches, the jitted training step and the held-out loss."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from dynsys.decode import sequence_logits
from dynsys.train.config import TrainConfig
from dynsys.train.data import advance
from dynsys.train.optimizer import optimizer
from dynsys.train.schedule import learning_rate
from dynsys.train.state import TrainState


def loss(config: TrainConfig, params, windows: jnp.ndarray) -> jnp.ndarray:
    """Next-token cross-entropy of windows x [b, T + 1], averaged over the b·T predictions:

        L = −1/(b·T) · Σ_i Σ_{t<T} log softmax(f_θ(x_i,0..t))[x_i,t+1],

    f_θ the model's logits at positions 0..T−1. The forward pass runs in config.dtype (the
    model casts the float32 parameters to it layer by layer, so the gradient is float32);
    logits, log-softmax and the mean are float32."""
    logits = sequence_logits(config.compute_model, params, windows[:, :-1])
    targets = windows[:, 1:]
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - picked)


@functools.partial(jax.jit, static_argnames=("config",))
def gradients(config: TrainConfig, params, batch: jnp.ndarray):
    """(L, ∇_θ L) of a batch [batch, T + 1], as the mean over its config.micro_batches
    micro-batches (consecutive rows) of each one's loss and gradient, accumulated in float32
    one micro-batch at a time. Every window has T predictions, so this is the loss and
    gradient of the whole batch."""
    micro = batch.reshape(config.micro_batches, config.micro_batch, batch.shape[-1])
    value_and_grad = jax.value_and_grad(functools.partial(loss, config))

    def accumulate(total, windows):
        return jax.tree_util.tree_map(jnp.add, total, value_and_grad(params, windows)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(accumulate, zero, micro)
    return jax.tree_util.tree_map(lambda x: x / config.micro_batches, total)


@functools.partial(jax.jit, static_argnames=("config", "per_epoch"), donate_argnames=("state",))
def train_step(config: TrainConfig, per_epoch: int, state: TrainState,
               batch: jnp.ndarray) -> tuple[TrainState, dict]:
    """One update on batch [config.batch, T + 1]: the state after it, and metrics {loss,
    grad_norm (‖∇L‖₂ before clipping), lr (of this update)}. The data position advances by
    one batch (`per_epoch` batches per epoch). If the loss or the gradient norm is not finite
    the state comes back unchanged (the caller stops). `state` is donated."""
    value, grads = gradients(config, state.params, batch)
    norm = optax.global_norm(grads)
    updates, opt_state = optimizer(config).update(grads, state.opt_state, state.params)
    epoch, index = advance(state.epoch, state.index, per_epoch)
    new = TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1,
                     epoch, index)
    finite = jnp.isfinite(value) & jnp.isfinite(norm)
    new = jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, state)
    return new, {"loss": value, "grad_norm": norm, "lr": learning_rate(config)(state.step)}


@functools.partial(jax.jit, static_argnames=("config",))
def heldout_loss(config: TrainConfig, params, windows: jnp.ndarray) -> jnp.ndarray:
    """The cross-entropy `loss` over held-out windows [n, T + 1], evaluated
    config.micro_batch windows at a time (every window has T predictions, so the mean of the
    per-window losses is the loss of all of them)."""
    per_window = jax.lax.map(lambda w: loss(config, params, w[None]), windows,
                             batch_size=config.micro_batch)
    return jnp.mean(per_window)
