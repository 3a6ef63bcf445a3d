"""Blockwise causal attention (dynsys.nn.blockwise) against the dense attention: the output and
its gradients with respect to q, k and v, the whole model's training loss and gradient for
every family, the path training takes, and no T×T buffer in the compiled gradient."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS, random_model

from dynsys.decode import engine
from dynsys.nn import init_params
from dynsys.nn.attention import Segment, attend
from dynsys.nn.blockwise import causal_attention
from dynsys.train import TrainConfig
from dynsys.train.step import loss


def dense(q, k, v):
    """The cached path's attention (dynsys.nn.attention.attend) over one causal segment:
    q [B, T, K, G, H], k, v [B, T, K, H]."""
    T = q.shape[1]
    causal = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (q.shape[0], T, T))
    return attend(q, [Segment(k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3), causal)])[0]


def inputs(B, T, K, G, H, seed=0):
    """q, k, v and an output weighting w (the loss Σ w ∘ o), standard normal."""
    rng = np.random.default_rng(seed)
    shapes = [(B, T, K, G, H), (B, T, K, H), (B, T, K, H), (B, T, K, G, H)]
    return [jnp.asarray(rng.standard_normal(s), jnp.float32) for s in shapes]


# (B, T, K, G, H, block): one block (T < block, T = block), odd T over several blocks, GQA
SHAPES = [(2, 5, 1, 1, 4, 16), (1, 16, 2, 2, 8, 16), (2, 37, 2, 3, 8, 8), (1, 64, 1, 4, 16, 16),
          (3, 129, 2, 1, 16, 32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-T{}-K{}-G{}-H{}-b{}".format(*s))
def test_matches_dense(shape):
    """Output and ∂(Σ w∘o)/∂(q, k, v) within 1e-5 of the dense attention's."""
    *dims, block = shape
    q, k, v, w = inputs(*dims)

    def objective(fn):
        return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(w * fn(q, k, v)), (0, 1, 2)))

    out = causal_attention(q, k, v, block=block)
    np.testing.assert_allclose(out, dense(q, k, v), rtol=1e-5, atol=1e-5)
    got = objective(lambda q, k, v: causal_attention(q, k, v, block=block))(q, k, v)
    want = objective(dense)(q, k, v)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    for name, g, h in zip("qkv", got[1], want[1], strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5, err_msg=f"d{name}")


def test_bfloat16_inputs_give_bfloat16_gradients():
    """Inputs are computed in float32; each gradient comes back in its input's dtype."""
    q, k, v, _ = inputs(1, 20, 1, 2, 8)
    q, k, v = (x.astype(jnp.bfloat16) for x in (q, k, v))
    grads = jax.grad(lambda q, k, v: jnp.sum(causal_attention(q, k, v, block=8)), (0, 1, 2))(
        q, k, v)
    assert [g.dtype for g in grads] == [jnp.bfloat16] * 3


def train_loss(cfg, T, blockwise: bool, monkeypatch):
    """(L, ∇L) of dynsys.train.step.loss on 2 random windows of T + 1 tokens, through the
    blockwise path (BLOCKWISE_MIN_LENGTH = 1) or the cached one (never blockwise)."""
    monkeypatch.setattr(engine, "BLOCKWISE_MIN_LENGTH", 1 if blockwise else T + 1)
    model = random_model(cfg, seed=3)
    windows = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (2, T + 1)),
                          jnp.int32)
    config = TrainConfig(model=cfg, seq_len=T, batch=2)
    # a fresh function per call: jit's trace cache must not mix the two paths
    return jax.jit(jax.value_and_grad(lambda p, w: loss(config, p, w)))(model.params, windows)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_training_loss_and_gradients_match_cached_path(name, monkeypatch):
    """Every family (qkv biases, partial rotary, GQA, tied heads): the training loss and
    gradient through blockwise attention (T = 150: two blocks of 128, the second padded)
    within 1e-5 of the cached path's."""
    cfg = CONFIGS[name]
    want = train_loss(cfg, 150, False, monkeypatch)
    got = train_loss(cfg, 150, True, monkeypatch)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    paths = jax.tree_util.tree_flatten_with_path(want[1])[0]
    for (path, h), g in zip(paths, jax.tree_util.tree_leaves(got[1]), strict=True):
        np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_training_takes_the_blockwise_path_from_the_threshold():
    """sequence_logits attends in blocks (a custom VJP in its program) from
    BLOCKWISE_MIN_LENGTH tokens on, through the row cache below."""
    cfg = CONFIGS["llama-g1"]
    params = jax.eval_shape(lambda: init_params(cfg))

    def uses_blockwise(T):
        tokens = jax.ShapeDtypeStruct((1, T), jnp.int32)
        jaxpr = jax.make_jaxpr(lambda p, t: engine.sequence_logits(cfg, p, t))(params, tokens)
        return "custom_vjp_call" in str(jaxpr)

    assert uses_blockwise(engine.BLOCKWISE_MIN_LENGTH)
    assert not uses_blockwise(engine.BLOCKWISE_MIN_LENGTH - 1)


def test_compiled_gradient_holds_no_t_by_t_buffer():
    """At T = 1024 the jitted gradient's temporaries stay far below one T×T float32 matrix of
    scores per head (the dense attention's need more than that), and no [T, T] array appears
    in its program."""
    B, T, K, G, H = 1, 1024, 1, 2, 16
    shapes = [jax.ShapeDtypeStruct(s, jnp.float32) for s in [(B, T, K, G, H), (B, T, K, H),
                                                             (B, T, K, H)]]

    def compiled(fn):
        grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), (0, 1, 2))
        return jax.jit(grad).lower(*shapes).compile()

    scores = B * K * G * T * T * 4  # bytes of the dense scores
    blockwise = compiled(causal_attention)
    assert blockwise.memory_analysis().temp_size_in_bytes < scores / 4
    assert compiled(dense).memory_analysis().temp_size_in_bytes > scores
    assert f"{T},{T}]" not in blockwise.as_text()


@pytest.mark.parametrize("block", [0, -3])
def test_bad_block_is_refused(block):
    q, k, v, _ = inputs(1, 4, 1, 1, 4)
    with pytest.raises(ValueError, match=f"block={block}"):
        causal_attention(q, k, v, block=block)


def test_mismatched_keys_are_refused():
    q, k, v, _ = inputs(1, 4, 1, 1, 4)
    with pytest.raises(ValueError, match=r"k \(1, 3, 1, 4\)"):
        causal_attention(q, k[:, :3], v)
