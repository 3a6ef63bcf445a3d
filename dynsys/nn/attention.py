"""Attention over several key segments, merged by log-sum-exp (docs/concepts.md, "The
shared-prefix step").

A query attends to a shared prefix (keys with no batch axis, never copied per row) and to its
row's own suffix. Each segment i gives its masked max m_i, mass l_i = Σ_j exp(z_j − m_i) and
unnormalised output o_i = Σ_j exp(z_j − m_i) v_j; with M = max_i m_i the merged output is
Σ_i e^{m_i−M} o_i / Σ_i e^{m_i−M} l_i, exactly softmax attention over the union of keys,
and the weight of key j of segment i is e^{z_j − m_i} e^{m_i−M} / Σ_i e^{m_i−M} l_i (computed
only when asked for). A per-row segment may carry an additive score bias: z_j + b_j.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

_MASKED = -1e30  # a score that exp() turns into exactly 0 next to any real score
SCORE_BLOCK = 1 << 22  # scores computed at once over a shared segment (16 MB: stays in cache)


class Segment(NamedTuple):
    """Keys k [K, H, S] and values v [K, S, H] (shared by all rows), or k [B, K, H, S] and
    v [B, K, S, H] (one per row), and which keys may be attended: mask [S] for a shared
    segment (the key alone decides), [B, T, S] for a per-row one. A per-row segment may add
    bias [B or 1, T, S] to the scores of its attended keys (−inf hides a key)."""

    k: jnp.ndarray
    v: jnp.ndarray
    mask: jnp.ndarray
    bias: jnp.ndarray | None = None


class Attended(NamedTuple):
    """What `attend` returns: the output [B, T, K, G, H] (float32), the attention mass each
    segment receives [n_segments, B, T, K, G], and, when asked for, the weight of every key
    [B, T, K, G, S_1 + … + S_n] (the segments' keys in order; 0 at masked keys), else None."""

    output: jnp.ndarray
    mass: jnp.ndarray
    weights: jnp.ndarray | None


def _partial(q: jnp.ndarray, seg: Segment, weights: bool = False):
    """(m, l, o, p) of one segment: masked max [B, T, K, G], mass Σ e^{z−m}, unnormalised
    output [B, T, K, G, H] and, with `weights`, each key's e^{z−m} [B, T, K, G, S] (else
    None).

    Queries are laid out as plain [batch…, M, H] matrices (M = T·G, or B·T·G for a shared
    segment) before the dots, and keys are stored kv-head-major and transposed, so both dots
    are canonical batched matmuls [M, H]·[H, S] and [M, S]·[S, H] (XLA's CPU dot is several
    times slower on any other layout: 8x for the decode scores with keys stored [S, H]).
    """
    B, T, K, G, H = q.shape
    k, v = seg.k.astype(jnp.float32), seg.v.astype(jnp.float32)
    if k.ndim == 3:  # shared: batch K, M = B·T·G
        if seg.bias is not None:
            raise ValueError("a score bias is for per-row segments only")
        # The key mask rides in the dot as an extra coordinate (q_H = 1, k_H = 0 or −∞-ish),
        # sparing a pass over the [K, M, S] scores.
        rows = q.transpose(2, 0, 1, 3, 4).reshape(K, B * T * G, H)
        rows = jnp.concatenate([rows, jnp.ones((K, B * T * G, 1), rows.dtype)], axis=-1)
        bias = jnp.where(seg.mask, 0.0, _MASKED)[None, None, :]
        k = jnp.concatenate([k, jnp.broadcast_to(bias, (K, 1, k.shape[2]))], axis=1)
        mask = True
        dims = (((2,), (1,)), ((0,), (0,)))
        back, order = (K, B, T, G), (1, 2, 0, 3)
    else:  # per row: batch (B, K), M = T·G
        rows = q.transpose(0, 2, 1, 3, 4).reshape(B, K, T * G, H)
        mask = jnp.broadcast_to(seg.mask[:, None, :, None, :],
                                (B, 1, T, G, seg.mask.shape[-1])).reshape(B, 1, T * G, -1)
        dims = (((3,), (2,)), ((0, 1), (0, 1)))
        back, order = (B, K, T, G), (0, 2, 1, 3)
    z = jax.lax.dot_general(rows, k, dims)
    if seg.bias is not None:
        z = z + jnp.broadcast_to(seg.bias[:, None, :, None, :],
                                 (seg.bias.shape[0], 1, T, G, k.shape[-1])
                                 ).reshape(seg.bias.shape[0], 1, T * G, -1)
    z = z if mask is True else jnp.where(mask, z, -jnp.inf)
    m = jnp.max(z, axis=-1)
    m = jnp.where(m > _MASKED / 2, m, -jnp.inf)  # −inf where the segment has no key for this query
    p = jnp.exp(z - jnp.where(jnp.isfinite(m), m, 0.0)[..., None])
    l = jnp.sum(p, axis=-1)
    o = jax.lax.dot_general(p, v, (((p.ndim - 1,), (v.ndim - 2,)), dims[1]))
    p = p.reshape(*back, -1).transpose(*order, 4) if weights else None
    return (m.reshape(back).transpose(order), l.reshape(back).transpose(order),
            o.reshape(*back, H).transpose(*order, 4), p)


def _blocked(q: jnp.ndarray, seg: Segment, weights: bool = False):
    """_partial of a shared segment, rows taken in blocks of at most SCORE_BLOCK scores, so
    the passes over each block's scores (max, exp, sum, values) read cache, not memory
    (2.7x faster per layer for 4096 rows after a 1000-token prefix)."""
    B, T, K, G, _ = q.shape
    block = max(1, SCORE_BLOCK // (T * K * G * seg.k.shape[-1]))
    if block >= B:
        return _partial(q, seg, weights)
    n = -(-B // block)
    q = jnp.pad(q, [(0, n * block - B)] + [(0, 0)] * 4).reshape(n, block, *q.shape[1:])
    parts = jax.lax.map(lambda rows: _partial(rows, seg, weights), q)
    return jax.tree.map(lambda x: x.reshape(n * block, *x.shape[2:])[:B], parts)


def attend(q: jnp.ndarray, segments: list[Segment], weights: bool = False) -> Attended:
    """softmax(q·kᵀ/√H + bias) v over the union of the segments' unmasked keys.

    q: [B, T, K, G, H]. Returns the output, each segment's mass and, with `weights`, every
    key's softmax weight, from the same scores (see `Attended`). A query with no key gets
    output 0, masses 0 and weights 0.
    """
    q = q.astype(jnp.float32) * (q.shape[-1] ** -0.5)
    maxes, masses, outputs, exps = zip(*((_partial if seg.k.ndim == 4 else _blocked)(
        q, seg, weights) for seg in segments))
    top = jnp.max(jnp.stack(maxes), axis=0)
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    scales = [jnp.exp(m - top) for m in maxes]  # e^{m_i − M}, 0 for an empty segment
    scaled = jnp.stack([w * l for w, l in zip(scales, masses)])  # [n, B, T, K, G]
    total = scaled.sum(0)
    safe = jnp.where(total > 0, total, 1.0)
    out = sum(o * (w / safe)[..., None] for o, w in zip(outputs, scales))
    keys = jnp.concatenate([p * (w / safe)[..., None] for p, w in zip(exps, scales)],
                           axis=-1) if weights else None
    return Attended(out, scaled / safe, keys)
