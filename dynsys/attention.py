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
    """Keys k and values v, [S, K, H] (shared by all rows) or [B, S, K, H] (one per row), and
    a boolean mask broadcastable to [B, T, S] (True = the query may attend to the key)."""

    k: jnp.ndarray
    v: jnp.ndarray
    mask: jnp.ndarray


def attend(q: jnp.ndarray, segments: list[Segment]) -> tuple[jnp.ndarray, jnp.ndarray]:
    """softmax(q·kᵀ/√H) v over the union of the segments' unmasked keys.

    q: [B, T, K, G, H]. Returns the output [B, T, K, G, H] (float32) and the attention mass
    each segment receives, [n_segments, B, K, G, T]. A query with no key gets output 0.
    """
    q = q.astype(jnp.float32) * (q.shape[-1] ** -0.5)
    maxes, masses, outputs = [], [], []
    for seg in segments:
        k, v = seg.k.astype(jnp.float32), seg.v.astype(jnp.float32)
        shared = k.ndim == 3
        z = jnp.einsum("BTKGH,SKH->BKGTS" if shared else "BTKGH,BSKH->BKGTS", q, k)
        mask = jnp.broadcast_to(seg.mask, (q.shape[0], q.shape[1], k.shape[-3]))[:, None, None]
        z = jnp.where(mask, z, -jnp.inf)
        m = jnp.max(z, axis=-1)  # −inf where the segment has no key for this query
        p = jnp.where(mask, jnp.exp(z - jnp.where(jnp.isfinite(m), m, 0.0)[..., None]), 0.0)
        maxes.append(m)
        masses.append(p.sum(-1))
        outputs.append(jnp.einsum("BKGTS,SKH->BTKGH" if shared else "BKGTS,BSKH->BTKGH", p, v))
    top = jnp.max(jnp.stack(maxes), axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    weights = [jnp.exp(m - top) for m in maxes]  # e^{m_i − M}, 0 for an empty segment
    scaled = jnp.stack([w * l for w, l in zip(weights, masses)])  # [n, B, K, G, T]
    total = scaled.sum(0)
    safe = jnp.where(total > 0, total, 1.0)
    out = sum(o * (w / safe).transpose(0, 3, 1, 2)[..., None] for o, w in zip(outputs, weights))
    return out, scaled / safe
