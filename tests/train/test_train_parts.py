"""The pieces of a step: checkpoint schedule, learning rate, weight-decay groups, data order,
gradient accumulation and bf16 compute."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import TINY, periodic_tokens, tiny_config

import dynsys as ds
from dynsys.train import (
    TrainError,
    batch_at,
    checkpoint_steps,
    decay_mask,
    gradients,
    init_state,
    learning_rate,
    windows,
)


def test_checkpoint_steps_follow_pythia():
    pythia = checkpoint_steps(143_000, 1000)
    assert len(pythia) == 154  # Pythia's 154 checkpoints
    assert pythia[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    assert pythia[-1] == 143_000
    assert checkpoint_steps(5, 1000) == (0, 1, 2, 4, 5)
    assert checkpoint_steps(7, 3) == (0, 1, 2, 3, 4, 6, 7)
    assert checkpoint_steps(0, 10) == (0,)
    with pytest.raises(TrainError, match="every=0"):
        checkpoint_steps(10, 0)


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    config = tiny_config(lr=1.0, warmup=4, steps=24, min_lr_ratio=0.1)
    lr = np.asarray(jax.vmap(learning_rate(config))(jnp.arange(25)))
    np.testing.assert_allclose(lr[:4], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    np.testing.assert_allclose(lr[4], 1.0, rtol=1e-6)
    np.testing.assert_allclose(lr[14], 0.55, rtol=1e-6)  # half-way: r + (1 − r)/2
    np.testing.assert_allclose(lr[24], 0.1, rtol=1e-6)
    assert np.all(np.diff(lr[4:]) < 0)


def test_weight_decay_on_matrices_not_on_norms_or_biases():
    for cfg in (TINY, TINY.replace(family="gpt_neox", num_kv_heads=4, tie_embeddings=True)):
        shapes = jax.eval_shape(lambda: ds.init_params(cfg))  # noqa: B023
        flat = jax.tree_util.tree_flatten_with_path(decay_mask(shapes))[0]
        for path, decayed in flat:
            assert decayed == (path[-1].key in ("kernel", "embedding")), path
        assert any(path[-1].key == "bias" for path, _ in flat) == (cfg.family == "gpt_neox")


def test_window_order_is_fixed_by_the_seed_and_epoch():
    data = windows(np.arange(33 * 10 + 5) % 64, 32, 64, "tokens")
    assert data.shape == (10, 33) and data[1, 0] == 33 % 64
    first = [batch_at(data, 0, 0, i, 3) for i in range(3)]
    np.testing.assert_array_equal(first[1], batch_at(data, 0, 0, 1, 3))
    starts = np.concatenate([b[:, 0] for b in first])
    assert len(set(starts.tolist())) == 9  # an epoch draws each window at most once
    assert not np.array_equal(batch_at(data, 0, 1, 0, 3), first[0])
    assert not np.array_equal(batch_at(data, 1, 0, 0, 3), first[0])


def test_gradient_accumulation_equals_the_whole_batch():
    params = init_state(tiny_config()).params
    batch = jnp.asarray(windows(periodic_tokens(33 * 8, period=11), 32, 64, "t"))
    whole = gradients(tiny_config(), params, batch)
    accumulated = gradients(tiny_config(micro_batches=4), params, batch)
    for a, b in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(accumulated),
                    strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_bfloat16_compute_keeps_float32_gradients():
    params = init_state(tiny_config()).params
    batch = jnp.asarray(windows(np.random.default_rng(0).integers(0, 64, 33 * 8), 32, 64, "t"))
    value32, grads32 = gradients(tiny_config(), params, batch)
    value16, grads16 = gradients(tiny_config(dtype="bfloat16"), params, batch)
    assert value16.dtype == jnp.float32
    assert float(value16) == pytest.approx(float(value32), rel=1e-2)
    a = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(grads32)])
    b = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(grads16)])
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(grads16))
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
