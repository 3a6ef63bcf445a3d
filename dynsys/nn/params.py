"""The parameter tree's layout, named in one place: every reader and writer of parameters by
block (edits, theory, checkpoint I/O) goes through these accessors, not through literal paths.

`init_params(cfg, seed)` gives a nested dict

    "embed":      {"embedding": [V, D]}
    BLOCK(i):     one per layer i < L, with the parts (KINDS)
                  "norm1", "norm2":  {"scale": [D]} (+ "bias" [D] for LayerNorm)
                  "attn":            {"q", "k", "v": {"kernel": [N|K, H, D], "bias"?},
                                      "o": {"kernel": [D, N, H], "bias"?}}
                  "mlp":             {"gate"? (SwiGLU), "up": {"kernel": [F, D], "bias"?},
                                      "down": {"kernel": [D, F], "bias"?}}
    "final_norm": {"scale": [D]} (+ "bias")
    "lm_head":    {"kernel": [V, D]} (untied embeddings only)

(kernels [out…, in…]). BLOCK(i) is the name flax gives the i-th entry of Transformer.blocks.
A path is a tuple of keys from the root (`param_path`, `get`, `put`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

KINDS: tuple[str, ...] = ("norm1", "attn", "norm2", "mlp")  # the parts of a block


def block_name(layer: int) -> str:
    """The key of block `layer` (a true integer: True and 0.0 would name blocks that do not
    exist)."""
    if isinstance(layer, bool) or not isinstance(layer, int | np.integer):
        raise ValueError(f"layer={layer!r} must be an integer")
    return f"blocks_{int(layer)}"


def param_path(layer: int, kind: str, *names: str) -> tuple[str, ...]:
    """The path of part `kind` (KINDS) of block `layer`, then `names` inside it, e.g.
    param_path(3, "mlp", "down", "kernel")."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {', '.join(KINDS)}")
    return (block_name(layer), kind, *names)


def block(params: Mapping, layer: int) -> Mapping:
    """The parameters of block `layer`: {kind: {name: ...}} for kind in KINDS."""
    return params[block_name(layer)]


def part(params: Mapping, layer: int, kind: str) -> Mapping:
    """The parameters of part `kind` of block `layer`, e.g. part(p, 0, "mlp")["down"]."""
    return get(params, param_path(layer, kind))


def get(tree: Mapping, keys: tuple[str, ...]):
    """The node at path `keys` of a nested dict."""
    for key in keys:
        tree = tree[key]
    return tree


def put(tree: dict, keys: tuple[str, ...], value) -> None:
    """Set the node at path `keys` of a nested dict, making the dicts on the way."""
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value
