"""Logical axis names: on every parameter and cache, and free on one device."""

import jax
import numpy as np
import pytest
from conftest import CONFIGS, random_model
from jax.sharding import Mesh

import dynsys.nn
import dynsys.nn.transformer
from dynsys.nn.cache import ROW_KEY_AXES, ROW_VALUE_AXES
from dynsys.decode import forward
from dynsys.nn import param_axes
from dynsys.sharding import AXES, RULES

from test_sites import inputs, lowered


@pytest.mark.parametrize("name", CONFIGS)
def test_every_parameter_names_each_of_its_axes(name):
    cfg = CONFIGS[name]
    shapes = jax.eval_shape(lambda: dynsys.nn.init_params(cfg, 0))
    axes = param_axes(cfg)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(
        axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    for shape, spec in zip(jax.tree_util.tree_leaves(shapes), jax.tree_util.tree_leaves(
            axes, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
        assert len(spec) == len(shape.shape) and set(spec) <= set(AXES)
    assert len(ROW_KEY_AXES) == len(ROW_VALUE_AXES) == 4
    assert {name for name, _ in RULES} == set(AXES)


def test_annotations_change_nothing_on_one_device(monkeypatch):
    cfg = CONFIGS["llama-g4-tied-llama3"]
    model = random_model(cfg, seed=5)
    tokens, positions = inputs(cfg)
    annotated = lowered(cfg, model.params, tokens, positions)
    expected = np.asarray(forward(model, tokens))
    monkeypatch.setattr(dynsys.nn.transformer, "constrain", lambda x, axes: x)
    assert lowered(cfg, model.params, tokens, positions) == annotated
    monkeypatch.undo()
    mesh = Mesh(np.array(jax.devices()[:1]).reshape(1, 1), ("data", "model"))
    with mesh:  # the constraints now apply, on a 1 x 1 mesh
        np.testing.assert_array_equal(np.asarray(forward(model, tokens)), expected)
