"""The parameter tree's accessors against the tree init_params builds and the module docstring's
layout, for every family."""

import jax
import numpy as np
import pytest
from conftest import CONFIGS

from dynsys.nn import init_params
from dynsys.nn.params import KINDS, block, block_name, get, param_path, part, put


@pytest.mark.parametrize("name", CONFIGS)
def test_the_accessors_name_the_tree_init_params_builds(name):
    cfg = CONFIGS[name]
    params = jax.eval_shape(lambda: init_params(cfg, 0))
    blocks = {block_name(i) for i in range(cfg.num_layers)}
    assert set(params) - blocks == {"embed", "final_norm"} | (
        set() if cfg.tie_embeddings else {"lm_head"})
    assert set(params) >= blocks
    D, F = cfg.hidden_size, cfg.intermediate_size
    for i in range(cfg.num_layers):
        assert set(block(params, i)) == set(KINDS)
        assert part(params, i, "mlp") is params[f"blocks_{i}"]["mlp"]
        assert get(params, param_path(i, "mlp", "down", "kernel")).shape == (D, F)
        assert get(params, param_path(i, "mlp", "up", "kernel")).shape == (F, D)
        assert get(params, param_path(i, "attn", "o", "kernel")).shape == (
            D, cfg.num_heads, cfg.head_dim)
        assert get(params, param_path(i, "norm1", "scale")).shape == (D,)


def test_put_builds_the_path_and_get_reads_it_back():
    tree = {}
    put(tree, param_path(2, "mlp", "down", "kernel"), np.ones(3))
    assert list(tree) == ["blocks_2"]
    np.testing.assert_array_equal(get(tree, ("blocks_2", "mlp", "down", "kernel")), np.ones(3))


@pytest.mark.parametrize("layer", [True, 0.0, "0"])
def test_a_layer_that_is_not_an_integer_is_refused(layer):
    with pytest.raises(ValueError, match=f"layer={layer!r} must be an integer"):
        block_name(layer)


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="kind='ffn' must be one of norm1, attn, norm2, mlp"):
        param_path(0, "ffn")
