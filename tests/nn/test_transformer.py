import jax
import numpy as np
import pytest
from conftest import CONFIGS, hf_attentions, hf_greedy, hf_logits, small

from dynsys.decode import forward, generate, run
from dynsys.nn import empty_rows, init_params


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_match_transformers(name, pair):
    model, hf = pair(name)
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 520))
    np.testing.assert_allclose(np.asarray(forward(model, tokens)), hf_logits(hf, tokens),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_tokens_match_transformers(name, pair):
    model, hf = pair(name)
    prompts = np.random.default_rng(1).integers(0, model.config.vocab_size, (2, 24))
    ours = np.asarray(generate(model, prompts, 64).tokens)
    np.testing.assert_array_equal(ours, hf_greedy(hf, prompts, 64))


@pytest.mark.parametrize("name", CONFIGS)
def test_recorded_attention_weights_equal_transformers_eager(name, pair):
    """The "attn_weights" site of a recording full forward: each layer's [B, T, N, T] softmax
    weights sum to 1 over the keys and equal transformers' eager output_attentions."""
    model, hf = pair(name)
    cfg, (B, T) = model.config, (2, 40)
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (B, T))
    recorded = run(cfg, model.params, tokens, np.tile(np.arange(T), (B, 1)),
                   empty_rows(cfg, B, T), np.ones((B, T), bool), None, record=True).recorded
    theirs = hf_attentions(hf, tokens)
    for layer in range(cfg.num_layers):
        ours = np.asarray(recorded("attn_weights", layer))
        assert ours.shape == (B, T, cfg.num_heads, T)
        np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)
        np.testing.assert_allclose(ours, theirs[layer].transpose(0, 2, 1, 3), atol=1e-5)


def test_init_is_like_transformers_and_seeded():
    """normal(0, initializer_range) weights and embeddings, unit norm scales, zero biases."""
    cfg = small("gpt_neox", hidden_size=128, intermediate_size=256, initializer_range=0.05)
    params = init_params(cfg, 3)
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name, x = path[-1].key, np.asarray(x)
        if name == "scale":
            np.testing.assert_array_equal(x, 1)
        elif name == "bias":
            np.testing.assert_array_equal(x, 0)
        else:
            assert abs(x.mean()) < 0.01 and x.std() == pytest.approx(0.05, rel=0.1), path
    again, other = init_params(cfg, 3), init_params(cfg, 4)
    assert all(jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda x, y: bool((x == y).all()), params, again)))
    assert not np.array_equal(params["embed"]["embedding"], other["embed"]["embedding"])


def test_bfloat16_model_is_close_to_float32(model_of):
    model = model_of("qwen2-g2-tied")
    half = type(model)(model.config.replace(dtype="bfloat16"),
                       jax.tree_util.tree_map(lambda x: x.astype("bfloat16"), model.params))
    tokens = np.random.default_rng(2).integers(0, model.config.vocab_size, (1, 40))
    full, low = np.asarray(forward(model, tokens)), np.asarray(forward(half, tokens))
    assert low.dtype == np.float32
    assert np.abs(full - low).max() < 0.1 * np.abs(full).max()
    assert (full.argmax(-1) == low.argmax(-1)).mean() > 0.8


def test_with_rope_false_shares_weights_and_changes_logits(model_of):
    model = model_of("llama-g1")
    nope = model.with_rope(False)
    assert nope.params is model.params and not nope.config.use_rope
    tokens = np.random.default_rng(3).integers(0, 257, (2, 12))
    assert not np.allclose(forward(model, tokens), forward(nope, tokens), atol=1e-3)
    # position 0 has no rotation: the first token's logits agree
    np.testing.assert_allclose(forward(model, tokens)[:, 0], forward(nope, tokens)[:, 0],
                               atol=1e-5)
