import importlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import CONFIGS
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

from dynsys.config import preset, to_hf_config
from dynsys.nn.rope import apply_rope, inverse_frequencies

_ROTARY_CLASS = {"llama": "LlamaRotaryEmbedding", "qwen2": "Qwen2RotaryEmbedding",
                 "gpt_neox": "GPTNeoXRotaryEmbedding"}


def hf_rotary(cfg):
    """transformers' own rotary-embedding module for this config."""
    module = importlib.import_module(f"transformers.models.{cfg.family}.modeling_{cfg.family}")
    hf_cfg = transformers.AutoConfig.for_model(**to_hf_config(cfg))
    return getattr(module, _ROTARY_CLASS[cfg.family])(config=hf_cfg)


@pytest.mark.parametrize("cfg", [preset("llama-3.2-1b"), CONFIGS["llama-g4-tied-llama3"],
                                 CONFIGS["qwen2-g1-llama3"]],
                         ids=["llama-3.2-1b", "llama", "qwen2"])
def test_llama3_inverse_frequencies_match_transformers(cfg):
    hf_cfg = transformers.AutoConfig.for_model(**to_hf_config(cfg))
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg, "cpu")
    ours = inverse_frequencies(cfg)
    np.testing.assert_allclose(ours, expected.numpy(), rtol=1e-6)
    # the scaling is not the identity here: some frequencies are divided, some kept
    plain = inverse_frequencies(cfg.replace(rope_scaling=None))
    assert (ours < plain * 0.99).any() and (ours == plain).any()


@pytest.mark.parametrize("name", CONFIGS)
def test_inverse_frequencies_match_transformers_buffer(name):
    cfg = CONFIGS[name]
    np.testing.assert_allclose(inverse_frequencies(cfg), hf_rotary(cfg).inv_freq.numpy(),
                               rtol=1e-6)
    assert inverse_frequencies(cfg).shape == (cfg.rotary_dim // 2,)


@pytest.mark.parametrize("name", CONFIGS)
def test_apply_rope_matches_transformers(name):
    cfg = CONFIGS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, cfg.num_heads, cfg.head_dim)).astype(np.float32)
    positions = rng.integers(0, cfg.max_position_embeddings, (2, 9))
    cos, sin = hf_rotary(cfg)(torch.from_numpy(x), torch.from_numpy(positions))
    expected, _ = apply_rotary_pos_emb(torch.from_numpy(x), torch.from_numpy(x), cos, sin,
                                       unsqueeze_dim=2)
    ours = apply_rope(jnp.asarray(x), jnp.asarray(positions), cfg)
    np.testing.assert_allclose(np.asarray(ours), expected.numpy(), atol=1e-4)  # cos of ~2e3 rad


@pytest.mark.parametrize("name", ["neox-rot25", "neox-rot50-tied-seq"])
def test_partial_rotary_leaves_other_dims_untouched(name):
    cfg = CONFIGS[name]
    d = cfg.rotary_dim
    assert 0 < d < cfg.head_dim
    x = np.random.default_rng(1).standard_normal((1, 5, 2, cfg.head_dim)).astype(np.float32)
    out = np.asarray(apply_rope(jnp.asarray(x), jnp.arange(5)[None] * 37, cfg))
    np.testing.assert_array_equal(out[..., d:], x[..., d:])
    assert not np.allclose(out[..., :d], x[..., :d])
    # each rotated pair (i, i + d/2) keeps its length
    pair_norm = lambda y: y[..., : d // 2] ** 2 + y[..., d // 2: d] ** 2  # noqa: E731
    np.testing.assert_allclose(pair_norm(out), pair_norm(x), rtol=1e-5)


@pytest.mark.parametrize("name", ["llama-g1", "neox-rot25"])
def test_without_rope_is_identity(name):
    cfg = CONFIGS[name].with_rope(False)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 3, cfg.head_dim)),
                    jnp.float32)
    positions = jnp.asarray([[0, 5, 77, 1000], [3, 3, 3, 2047]])
    np.testing.assert_array_equal(np.asarray(apply_rope(x, positions, cfg)), np.asarray(x))


@settings(deadline=None, max_examples=25)
@given(p=st.integers(0, 1500), s=st.integers(0, 1500), shift=st.integers(0, 500),
       seed=st.integers(0, 2**31))
def test_scores_depend_only_on_relative_position(p, s, shift, seed):
    cfg = CONFIGS["llama-g4-tied-llama3"]
    q, k = np.random.default_rng(seed).standard_normal((2, 1, 1, 1, cfg.head_dim))

    def score(a, b):
        qa = apply_rope(jnp.asarray(q, jnp.float32), jnp.asarray([[a]]), cfg)
        kb = apply_rope(jnp.asarray(k, jnp.float32), jnp.asarray([[b]]), cfg)
        return float(jnp.sum(qa * kb))

    assert score(p, s) == pytest.approx(score(p + shift, s + shift), abs=2e-4)


def test_float64_angles_are_exact_and_float32_ones_are_the_models():
    """rope_angles in float64 is the exact product p · ω (scores depend on offsets only, to
    1e-12 at positions ~30000, where float32 angles are off by ~1e-3 rad); in float32 it is the
    model's (apply_rope equals rotate with them); float64 outside x64 is refused."""
    import jax

    from dynsys.nn.rope import rope_angles, rotate

    cfg = CONFIGS["llama-g4-tied-llama3"]
    d, omega = cfg.rotary_dim, inverse_frequencies(cfg).astype(np.float64)
    q, k = np.random.default_rng(3).standard_normal((2, cfg.head_dim))
    p, s, shift = 31000, 30000, 777
    with jax.enable_x64(True):
        def score(a, b):
            qa = rotate(jnp.asarray(q), rope_angles(jnp.asarray(a), cfg, jnp.float64), d)
            kb = rotate(jnp.asarray(k), rope_angles(jnp.asarray(b), cfg, jnp.float64), d)
            return float(jnp.sum(qa * kb))

        exact = rope_angles(jnp.asarray([p]), cfg, jnp.float64)
        np.testing.assert_array_equal(np.asarray(exact)[0], p * omega)
        assert score(p, s) == pytest.approx(score(p + shift, s + shift), abs=1e-12)
    model = np.asarray(rope_angles(jnp.asarray([p]), cfg))
    assert model.dtype == np.float32 and np.abs(model[0] - p * omega).max() > 1e-4
    x = np.random.default_rng(4).standard_normal((1, 1, 1, cfg.head_dim)).astype(np.float32)
    np.testing.assert_array_equal(
        np.asarray(apply_rope(jnp.asarray(x), jnp.asarray([[p]]), cfg)),
        np.asarray(rotate(jnp.asarray(x), jnp.asarray(model)[None, None], d)))
    with pytest.raises(ValueError, match="enable_x64"):
        rope_angles(jnp.asarray([p]), cfg, jnp.float64)
