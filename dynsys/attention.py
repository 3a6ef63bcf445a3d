"""Attention over several key segments, merged by log-sum-exp (DESIGN §3).

A query attends to a shared prefix (keys with no batch axis, never copied per row) and to its
row's own suffix. Each segment i gives its masked max m_i, mass l_i = Σ_j exp(z_j − m_i) and
unnormalised output o_i = Σ_j exp(z_j − m_i) v_j; with M = max_i m_i the merged output is
Σ_i e^{m_i−M} o_i / Σ_i e^{m_i−M} l_i, exactly softmax attention over the union of keys.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class Segment(NamedTuple):
    """Keys k and values v, [K, S, H] (shared by all rows) or [B, K, S, H] (one per row), and
    which keys may be attended: mask [S] for a shared segment (the key alone decides),
    [B, T, S] for a per-row one."""

    k: jnp.ndarray
    v: jnp.ndarray
    mask: jnp.ndarray


def _partial(q: jnp.ndarray, seg: Segment):
    """(m, l, o) of one segment: masked max [B, T, K, G], mass Σ e^{z−m} and unnormalised
    output [B, T, K, G, H]. Keys are stored kv-head-major and scores stay in the layout XLA's
    dot produces (batch axes first), so no S-sized tensor is ever transposed."""
    k, v = seg.k.astype(jnp.float32), seg.v.astype(jnp.float32)
    if k.ndim == 3:
        z = jnp.einsum("BTKGH,KSH->KBTGS", q, k)
        mask = seg.mask
        to_btkg = (1, 2, 0, 3)
    else:
        z = jnp.einsum("BTKGH,BKSH->BKTGS", q, k)
        mask = seg.mask[:, None, :, None, :]
        to_btkg = (0, 2, 1, 3)
    z = jnp.where(mask, z, -jnp.inf)
    m = jnp.max(z, axis=-1)  # −inf where the segment has no key for this query
    p = jnp.exp(z - jnp.where(jnp.isfinite(m), m, 0.0)[..., None])
    l = jnp.sum(p, axis=-1)
    if k.ndim == 3:
        o = jnp.einsum("KBTGS,KSH->KBTGH", p, v)
    else:
        o = jnp.einsum("BKTGS,BKSH->BKTGH", p, v)
    return m.transpose(to_btkg), l.transpose(to_btkg), o.transpose(*to_btkg, 4)


def attend(q: jnp.ndarray, segments: list[Segment]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """softmax(q·kᵀ/√H) v over the union of the segments' unmasked keys.

    q: [B, T, K, G, H]. Returns the output [B, T, K, G, H] (float32) and the attention mass
    each segment receives, [n_segments, B, T, K, G]. A query with no key gets output 0.
    """
    q = q.astype(jnp.float32) * (q.shape[-1] ** -0.5)
    maxes, masses, outputs = zip(*(_partial(q, seg) for seg in segments))
    top = jnp.max(jnp.stack(maxes), axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = [jnp.exp(m - top) for m in maxes]  # e^{m_i − M}, 0 for an empty segment
    scaled = jnp.stack([w * l for w, l in zip(weights, masses)])  # [n, B, T, K, G]
    total = scaled.sum(0)
    safe = jnp.where(total > 0, total, 1.0)
    out = sum(o * (w / safe)[..., None] for o, w in zip(outputs, weights))
    return out, scaled / safe
