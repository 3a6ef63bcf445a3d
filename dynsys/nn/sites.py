"""Named sites: the places in the model an experiment may read or change.

A site is one call `x = site(module, name, x)` in the model's code. With nothing asked of it
it is the identity and adds nothing to the compiled program. Two things can be asked, both
as data passed into the (jitted) call, never as hooks:

- **record**: with the collection "record" mutable, the site's value is stored; `Recorded`
  reads it back by site name and layer.
- **edit**: a variable `edits[path][name] = {"scale": s, "shift": b}` replaces the value x by
  x·s + b (broadcast over x's trailing axes: zero ablation s = 0, b = 0; mean ablation s = 0,
  b = mean; a neuron scaled or sign-flipped by s = ±c at its index, 1 elsewhere; patching
  s = 0, b = stored values). Edit values are traced, so new values do not recompile.

Sites, per block (layer i): "query" [B, T, N, H] (the rotated query), "heads" [B, T, N, H]
(each head's attention output before the output projection), "attn_out" [B, T, D] (the
attention branch), "resid_mid" [B, T, D] (x + attention), "mlp_up" [B, T, F] (the up
projection), "mlp_hidden" [B, T, F] (the activation entering the down projection), "mlp_out"
[B, T, D] (the MLP branch), "resid_post" [B, T, D] (the block's output); and "embed_out" [B, T, D]
(the token embedding, before block 0).

"attn_weights" [B, T, N, S] is recorded only (`record`; an edit of it is refused: the output
is computed from the scores, not from this copy): head n's softmax weights of query t over the
S key slots of the call, a shared prefix's slots first, then the row cache's (0 at masked or
padded slots). It is computed only when recording, from the scores the output uses; the
blockwise full-sequence path (rows=None) does not record it.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
from flax import struct

from dynsys.nn.params import block_name

# Site name -> the submodule of a block that owns it (() = the block itself).
BLOCK_SITES: dict[str, tuple[str, ...]] = {
    "query": ("attn",), "heads": ("attn",), "attn_out": (), "resid_mid": (),
    "mlp_up": ("mlp",), "mlp_hidden": ("mlp",), "mlp_out": (), "resid_post": (),
    "attn_weights": ("attn",),
}
MODEL_SITES: tuple[str, ...] = ("embed_out",)
RECORD_ONLY: tuple[str, ...] = ("attn_weights",)  # sites that can be recorded, not edited


def site(module, name: str, x):
    """The value of site `name` of `module`: x, or x·scale + shift under an edit; recorded
    when the "record" collection is mutable."""
    if module.has_variable("edits", name):
        edit = module.get_variable("edits", name)
        x = (x * edit["scale"] + edit["shift"]).astype(x.dtype)
    record(module, name, x)
    return x


def record(module, name: str, x) -> None:
    """Store x as site `name` of `module` when the "record" collection is mutable."""
    module.sow("record", name, x)


def _path(name: str, layer: int | None) -> tuple[str, ...]:
    """The module path of site `name` of block `layer` (a true integer: True and 0.0 would
    name modules "blocks_True" and "blocks_0.0" that do not exist)."""
    if layer is not None:
        try:
            block = block_name(layer)
        except ValueError:
            raise ValueError(f"layer={layer!r} of site {name!r} must be an integer") from None
    if name in MODEL_SITES:
        if layer is not None:
            raise ValueError(f"site {name!r} is not per layer (got layer={layer})")
        return ()
    if name not in BLOCK_SITES:
        raise ValueError(f"unknown site {name!r}; sites: {[*MODEL_SITES, *BLOCK_SITES]}")
    if layer is None:
        raise ValueError(f"site {name!r} is per layer: give a layer")
    return (block, *BLOCK_SITES[name])


def edits(changes: Mapping[tuple[str, int | None], Mapping[str, object]],
          num_layers: int) -> dict:
    """The edit tree for `changes` {(site, layer): {"scale": s, "shift": b}} (either key may
    be left out: scale 1, shift 0); layer None for "embed_out". Layers are checked against
    num_layers."""
    tree: dict = {}
    for (name, layer), change in changes.items():
        path = _path(name, layer)
        _check_editable(name)
        if layer is not None and not 0 <= layer < num_layers:
            raise ValueError(f"layer={layer} is outside [0, {num_layers})")
        unknown = set(change) - {"scale", "shift"}
        if unknown:
            raise ValueError(f"an edit holds 'scale' and 'shift', not {sorted(unknown)}")
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node[name] = {"scale": jnp.asarray(change.get("scale", 1.0), jnp.float32),
                      "shift": jnp.asarray(change.get("shift", 0.0), jnp.float32)}
    return tree


def _check_editable(name: str) -> None:
    if name in RECORD_ONLY:
        raise ValueError(f"site {name!r} is recorded only and cannot be edited (the output is "
                         "computed from the scores; edit 'query' or 'heads' instead)")


def _site_paths(num_layers: int) -> set[tuple[str, ...]]:
    """The path of every site of a model with num_layers blocks (owner modules, then name)."""
    return {(name,) for name in MODEL_SITES} | {
        (*_path(name, layer), name) for layer in range(num_layers) for name in BLOCK_SITES}


def check_edits(tree: Mapping | None, num_layers: int) -> None:
    """Check a (possibly hand-built) edit tree against the sites of a model with num_layers
    blocks: flax silently ignores an edit at a path the model does not have (a misspelled
    site, a missing layer, the wrong owner module), and an ablation that never happened would
    read as "no effect". Each site's entry must hold exactly "scale" and "shift"."""
    if tree is None:
        return
    sites = _site_paths(num_layers)
    prefixes = {path[:i] for path in sites for i in range(1, len(path))}

    def walk(node, path: tuple[str, ...]) -> None:
        where = "/".join(path) or "the edit tree"
        if not isinstance(node, Mapping):
            raise ValueError(f"edits: {where} is a {type(node).__name__}, not a mapping")
        if path in sites:
            _check_editable(path[-1])
            if set(node) != {"scale", "shift"}:
                raise ValueError(f"edits: {where} must hold 'scale' and 'shift', got "
                                 f"{sorted(map(str, node))}")
            return
        for key, child in node.items():
            if (*path, key) not in sites | prefixes:
                raise ValueError(f"edits: {'/'.join(map(str, (*path, key)))} is not a site "
                                 f"of this model ({num_layers} layers; sites: "
                                 f"{[*MODEL_SITES, *BLOCK_SITES]}; build trees with edits())")
            walk(child, (*path, key))

    walk(tree, ())


@struct.dataclass
class Recorded:
    """What the sites stored during one call (the "record" collection), read by name."""

    tree: dict

    def __call__(self, name: str, layer: int | None = None) -> jnp.ndarray:
        """The value of site `name` (of block `layer`) in the call."""
        node = self.tree
        for key in (*_path(name, layer), name):
            if key not in node:
                raise KeyError(f"site {name!r} (layer {layer}) was not recorded")
            node = node[key]
        return node[0]
