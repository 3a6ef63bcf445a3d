"""Named sites: the places in the model an experiment may read or change.

A site is one call `x = site(module, name, x)` in the model's code. With nothing asked of it
it is the identity and adds nothing to the compiled program. Two things can be asked, both
as data passed into the (jitted) call, never as hooks:

- **record**: with the collection "record" mutable, the site's value is stored; `Recorded`
  reads it back by site name and layer.
- **edit**: a variable `edits[path][name] = {"scale": s, "shift": b}` replaces the value x by
  x·s + b (broadcast over x's trailing axes: zero ablation s = 0, b = 0; mean ablation s = 0,
  b = mean; a neuron scaled or sign-flipped by s = ±c at its index, 1 elsewhere). Edit values
  are traced, so new values do not recompile.

An edit may carry, beside scale and shift, a *scope* and per-token *values*, all traced (new
values reuse the compiled program; each form, present or absent, [G] or [B, G], is its own):

- "positions": bool [P] or [B, P], the edit applies only to the tokens at positions p < P with
  mask[p] (mask[b, p]); elsewhere the site keeps its value.
- "steps" (`generate` only): an int t, "from step t on", or bool [G] or [B, G] over the
  generation steps; step i is the position whose logits choose token i (p_b − 1 + i for a
  prompt of length p_b: the last prompt token for i = 0), as `generate`'s `recorded`. With
  "positions" too, both must hold.
- "values": added per token, x·s + b + values: [B, T, ...] for a call of T tokens (`run`,
  `step`), [B, G, ...] per generation step in `generate` (implying "steps": every step unless
  given). Activation patching is s = 0, b = 0, values = what another run recorded there
  (`patch`).

`check_edits` refuses a tree naming a site the model does not have, at every entry point
(`dynsys.decode.engine.run`, which every model call goes through, checks it too).

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
import numpy as np
from flax import struct

from dynsys.checks import check_int
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
    """The value of site `name` of `module`: x, or x·scale + shift under an edit (`resolve`d:
    only where its gate [B, T] holds, if it has one); recorded when the "record" collection
    is mutable."""
    if module.has_variable("edits", name):
        edit = module.get_variable("edits", name)
        edited = (x * edit["scale"] + edit["shift"]).astype(x.dtype)
        if "gate" in edit:
            edited = jnp.where(edit["gate"].reshape(edit["gate"].shape + (1,) * (x.ndim - 2)),
                               edited, x)
        x = edited
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


SCOPE = ("positions", "steps", "values")  # what an edit may hold beside scale and shift


def edits(changes: Mapping[tuple[str, int | None], Mapping[str, object]],
          num_layers: int) -> dict:
    """The edit tree for `changes` {(site, layer): {"scale": s, "shift": b}} (either key may
    be left out: scale 1, shift 0), each optionally with "positions", "steps" and "values"
    (module docstring); layer None for "embed_out". Layers are checked against num_layers."""
    tree: dict = {}
    for (name, layer), change in changes.items():
        path = _path(name, layer)
        _check_editable(name)
        if layer is not None and not 0 <= layer < num_layers:
            raise ValueError(f"layer={layer} is outside [0, {num_layers})")
        unknown = set(change) - {"scale", "shift", *SCOPE}
        if unknown:
            raise ValueError(f"an edit holds 'scale' and 'shift' (and optionally {SCOPE}), "
                             f"not {sorted(unknown)}")
        node = tree
        for key in path:
            node = node.setdefault(key, {})
        node[name] = {"scale": jnp.asarray(change.get("scale", 1.0), jnp.float32),
                      "shift": jnp.asarray(change.get("shift", 0.0), jnp.float32)}
        for key in SCOPE:
            if key in change:
                node[name][key] = _scope_array(key, change[key])
    check_edits(tree, num_layers, generation=True)
    return tree


def _scope_array(key: str, value) -> jnp.ndarray:
    """An edit's "values" as float32, "steps" t as int32, a mask as it is (checked bool)."""
    if key == "values":
        return jnp.asarray(value, jnp.float32)
    if key == "steps" and np.ndim(value) == 0:
        return jnp.int32(check_int("steps", value, minimum=0, maximum=2**31 - 1))
    return jnp.asarray(value)


def patch(recorded: Mapping[str, object], sites, num_layers: int, steps=None) -> dict:
    """The edit tree writing what one `generate` run recorded (`Generation.recorded`,
    {site: [B, G, L, ...]} or [B, G, ...] for "embed_out") into another at `sites`, a list of
    (site, layer): at every step (or those of `steps`, as an edit's "steps") the site takes
    the recorded value of the same step, x ↦ values[:, i]. Causal tracing: record a clean
    run, patch it into a corrupted one at one site and layer."""
    changes = {}
    for name, layer in sites:
        if name not in recorded:
            raise ValueError(f"site {name!r} was not recorded (recorded: {sorted(recorded)})")
        values = recorded[name] if layer is None else jnp.asarray(recorded[name])[:, :, layer]
        changes[(name, layer)] = {"scale": 0.0, "values": values,
                                  **({} if steps is None else {"steps": steps})}
    return edits(changes, num_layers)


def _check_editable(name: str) -> None:
    if name in RECORD_ONLY:
        raise ValueError(f"site {name!r} is recorded only and cannot be edited (the output is "
                         "computed from the scores; edit 'query' or 'heads' instead)")


def _site_paths(num_layers: int) -> set[tuple[str, ...]]:
    """The path of every site of a model with num_layers blocks (owner modules, then name)."""
    return {(name,) for name in MODEL_SITES} | {
        (*_path(name, layer), name) for layer in range(num_layers) for name in BLOCK_SITES}


def check_edits(tree: Mapping | None, num_layers: int, generation: bool = False) -> None:
    """Check a (possibly hand-built) edit tree against the sites of a model with num_layers
    blocks: flax silently ignores an edit at a path the model does not have (a misspelled
    site, a missing layer, the wrong owner module), and an ablation that never happened would
    read as "no effect". Each site's entry must hold "scale" and "shift", and may hold
    "positions" (bool, 1-D or 2-D), "values" and, for `generate` (generation=True), "steps"
    (an integer, or bool 1-D or 2-D)."""
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
            allowed = {"scale", "shift", *SCOPE} - (set() if generation else {"steps"})
            if not {"scale", "shift"} <= set(node) <= allowed:
                raise ValueError(f"edits: {where} must hold 'scale' and 'shift' (and "
                                 f"optionally {sorted(allowed - {'scale', 'shift'})}), got "
                                 f"{sorted(map(str, node))}")
            _check_scope(node, where)
            return
        for key, child in node.items():
            if (*path, key) not in sites | prefixes:
                raise ValueError(f"edits: {'/'.join(map(str, (*path, key)))} is not a site "
                                 f"of this model ({num_layers} layers; sites: "
                                 f"{[*MODEL_SITES, *BLOCK_SITES]}; build trees with edits())")
            walk(child, (*path, key))

    walk(tree, ())


def _check_scope(edit: Mapping, where: str) -> None:
    """A scope's masks are bool and 1-D or 2-D; "steps" may instead be a 0-d integer."""
    for key in ("positions", "steps"):
        if key not in edit:
            continue
        mask = edit[key]
        integer = key == "steps" and np.ndim(mask) == 0 and jnp.issubdtype(
            jnp.result_type(mask), jnp.integer)
        if not integer and (np.ndim(mask) not in (1, 2)
                            or np.dtype(jnp.result_type(mask)) != np.dtype(bool)):
            raise ValueError(f"edits: {where}/{key} must be a bool mask [N] or [B, N]"
                             f"{' or an integer step' * (key == 'steps')}, got "
                             f"{jnp.result_type(mask)} of shape {np.shape(mask)}")


def resolve(tree: dict | None, positions) -> dict | None:
    """The tree the model applies to a call of tokens at positions [B, T]: "values" [B, T, ...]
    folded into each shift, and "positions" turned into a gate [B, T] (position p < P with
    mask[b, p]); an edit without scope is left as it is (the program of an unscoped edit does
    not change). A "steps" scope must have been turned into positions (`generate`)."""
    if tree is None:
        return None

    def leaf(edit: Mapping) -> dict:
        if "steps" in edit:
            raise ValueError("an edit's 'steps' scope is for generate only; use 'positions'")
        out = {"scale": edit["scale"], "shift": edit["shift"]}
        if "values" in edit:
            out["shift"] = out["shift"] + edit["values"]
        if "positions" in edit:
            mask = jnp.asarray(edit["positions"])
            mask = jnp.broadcast_to(mask, (positions.shape[0], mask.shape[-1]))
            index = jnp.clip(positions, 0, mask.shape[1] - 1)
            out["gate"] = jnp.take_along_axis(mask, index, 1) & (positions < mask.shape[1])
        return out

    def walk(node):
        if "scale" in node:
            return leaf(node)
        return {key: walk(child) for key, child in node.items()}

    return walk(tree)


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
