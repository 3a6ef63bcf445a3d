"""Logical axis names: on every parameter and cache, and free on one device."""

import jax
import numpy as np
import pytest
from conftest import CONFIGS, random_model
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P
from test_sites import inputs, lowered

import dynsys.nn
import dynsys.nn.transformer
from dynsys.decode import forward
from dynsys.io import load
from dynsys.nn import param_axes
from dynsys.nn.cache import ROW_KEY_AXES, ROW_VALUE_AXES
from dynsys.sharding import AXES, RULES, make_mesh, mesh_of, parse_mesh, place
from dynsys.sharding import spec as spec_of


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


def test_axes_that_do_not_divide_are_replicated():
    mesh = {"data": 2, "model": 4}
    assert spec_of((257, 64), ("vocab", "embed"), mesh) == P(None, None)
    assert spec_of((300, 64), ("vocab", "embed"), mesh) == P("model", None)
    assert spec_of((6, 2, 16, 32), ROW_KEY_AXES, mesh) == P("data", None, None, None)
    assert spec_of((5, 4, 16, 32), ROW_KEY_AXES, mesh) == P(None, "model", None, None)
    assert spec_of((6, 4), ("batch", "vocab"), {"data": 1, "model": 1}) == P(None, None)


def test_a_mesh_of_the_wrong_size_or_spelling_is_refused():
    with pytest.raises(ValueError, match=f"a 3x3 mesh needs 9 devices; {jax.device_count()} "):
        make_mesh(3, 3)
    with pytest.raises(ValueError, match="mesh model size 0 must be a positive integer"):
        make_mesh(1, 0)
    with pytest.raises(ValueError, match="mesh '2by4' must look like DATAxMODEL"):
        parse_mesh("2by4")
    one = make_mesh(1, 1, jax.devices()[:1])
    assert dict(parse_mesh(f"{jax.device_count()}x1").shape) == {"data": jax.device_count(),
                                                                  "model": 1}
    cfg = CONFIGS["llama-g1"]
    shapes = jax.eval_shape(lambda: dynsys.nn.init_params(cfg, 0))
    params = place(jax.tree_util.tree_map(lambda x: np.zeros(x.shape, x.dtype), shapes),
                   param_axes(cfg), one)
    assert mesh_of(params) is None  # one device: nothing to split, nothing constrained
    with pytest.raises(ValueError, match=r"lack \['data'\]"):
        place(params, param_axes(cfg), Mesh(np.array(jax.devices()[:1]), ("model",)))


def test_load_places_a_preset_on_the_mesh():
    mesh = make_mesh(1, 1, jax.devices()[:1])
    model = load("tiny", mesh=mesh)
    assert all(x.sharding.mesh == mesh for x in jax.tree_util.tree_leaves(model.params))
    assert model.digest == load("tiny").digest
