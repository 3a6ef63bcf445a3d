"""Logical axis names, the one table that maps them to a device mesh, and the mesh itself.

Every parameter and cache array names its axes with these logical names (declared where the
array is made: `dynsys.nn` for parameters, `dynsys.nn.cache` for caches); activations are
constrained with `constrain`. The rules below map the names to the two axes of a mesh
(`make_mesh`): "data" splits rows (generate's batch, the Markov map's rows), "model" splits
parameters tensor-parallel (heads, kv heads, MLP features, the vocabulary) and with them the
KV caches and the shared prefix. A dimension that its mesh axis does not divide (e.g. 2 kv
heads on 4 model devices, a 257-token vocabulary) is replicated instead, so every config
runs on every mesh.

Parameters carry their mesh: `place` puts them on it with their NamedShardings, and the entry
points (generate, prefill, step, the Markov map) enter `use(params)`, which puts that mesh in
context while they trace. Without a mesh in context (one device, the default) every
annotation is the identity and the compiled program is unchanged.
"""

from __future__ import annotations

import contextlib
import numbers
import re

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

AXES = ("batch", "seq", "cache_seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab")
MESH_AXES = ("data", "model")

# logical axis -> mesh axis (None: replicated)
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"), ("heads", "model"), ("kv_heads", "model"), ("mlp", "model"),
    ("embed", None), ("head_dim", None), ("seq", None), ("cache_seq", None),
)
_RULE = dict(RULES)


def make_mesh(data: int, model: int, devices=None) -> Mesh:
    """A data × model mesh over `devices` (default: all of jax.devices()), which must number
    exactly data·model."""
    devices = jax.devices() if devices is None else list(devices)
    for name, size in (("data", data), ("model", model)):
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
            raise ValueError(f"mesh {name} size {size!r} must be a positive integer")
    if data * model != len(devices):
        raise ValueError(f"a {data}x{model} mesh needs {data * model} devices; "
                         f"{len(devices)} are available")
    return jax.make_mesh((data, model), MESH_AXES, (AxisType.Auto,) * 2, devices=devices)


def parse_mesh(text: str) -> Mesh:
    """The mesh of a "DATAxMODEL" string, e.g. "2x4" (see `make_mesh`)."""
    found = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not found:
        raise ValueError(f"mesh {text!r} must look like DATAxMODEL, e.g. 2x4")
    return make_mesh(int(found[1]), int(found[2]))


def spec(shape: tuple[int, ...], axes: tuple[str, ...], mesh_shape) -> PartitionSpec:
    """The PartitionSpec of an array of `shape` whose axes are named `axes`, on a mesh of
    `mesh_shape` (axis name → size): each name's mesh axis per RULES, or None (replicated)
    where that axis does not divide the dimension or has size 1."""
    out = []
    for size, name in zip(shape, axes, strict=True):
        axis = _RULE[name]
        n = mesh_shape.get(axis, 1) if axis is not None else 1
        out.append(axis if n > 1 and size % n == 0 else None)
    return PartitionSpec(*out)


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """x with its axes named (a sharding constraint under a mesh, else x itself)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, spec(x.shape, axes, dict(mesh.shape)))


def partitioned(init, axes: tuple[str, ...]):
    """An initializer whose parameter carries the logical axis names `axes`."""
    return nn.with_logical_partitioning(init, axes)


def place(tree, axes, mesh: Mesh):
    """`tree` (arrays, e.g. parameters) put on `mesh`, each leaf with the NamedSharding of its
    logical axis names (`axes`: a like tree of PartitionSpecs of names, e.g.
    `dynsys.nn.param_axes(cfg)`)."""
    missing = set(MESH_AXES) - set(mesh.axis_names)
    if missing:
        raise ValueError(f"mesh axes {mesh.axis_names} lack {sorted(missing)}; "
                         "build the mesh with dynsys.sharding.make_mesh")
    shape = dict(mesh.shape)
    shardings = jax.tree_util.tree_map(
        lambda x, names: NamedSharding(mesh, spec(x.shape, tuple(names), shape)), tree, axes)
    return jax.device_put(tree, shardings)


def mesh_of(tree) -> Mesh | None:
    """The mesh of the first leaf placed on one with more than one device, else None."""
    for x in jax.tree_util.tree_leaves(tree):
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def use(params):
    """A context with the mesh of `params` (`mesh_of`) set, so that the constraints apply in
    what is traced inside it; with unplaced parameters, nothing changes."""
    mesh = mesh_of(params)
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)
