"""Logical axis names and the one table that maps them to a device mesh.

Every parameter and cache array names its axes with these logical names (declared where the
array is made: `dynsys.nn` for parameters, `dynsys.nn.cache` for caches); activations are
constrained with `constrain`. The rules below map the names to the axes of a mesh
("data" for rows, "model" for tensor parallelism). Without a mesh in context (one device,
the default) every annotation is the identity and the compiled program is unchanged.
"""

from __future__ import annotations

import flax.linen as nn
import jax

AXES = ("batch", "seq", "cache_seq", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab")

# logical axis -> mesh axis (None: replicated)
RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", "data"),
    ("vocab", "model"), ("heads", "model"), ("kv_heads", "model"), ("mlp", "model"),
    ("embed", None), ("head_dim", None), ("seq", None), ("cache_seq", None),
)


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """x with its axes named (a sharding constraint under a mesh, else x itself)."""
    return nn.with_logical_constraint(x, axes, rules=RULES)


def partitioned(init, axes: tuple[str, ...]):
    """An initializer whose parameter carries the logical axis names `axes`."""
    return nn.with_logical_partitioning(init, axes)
