"""Causal self-attention of one full sequence in blocks (FlashAttention-2), for training.

    o_t = Σ_{s≤t} softmax_s(z_ts) v_s,   z_ts = <q_t, k_s>/√H,

computed without the T×T matrix of scores, forward or backward. The sequence is cut into
n = ⌈T/b⌉ blocks of b positions (T padded with zeros to n·b; a padded key sits after every
real query, so the causal mask already hides it, and padded queries are cut off). Only the
n(n+1)/2 block pairs (i, j ≤ i) are visited; the causal mask is applied on the diagonal
pairs alone.

Forward (online softmax): query block i keeps its running max m, mass l = Σ e^{z−m} and
unnormalised output a = Σ e^{z−m} v; a key block j with scores Z and M = max(m, max Z) updates

    l ← e^{m−M} l + Σ e^{Z−M},   a ← e^{m−M} a + e^{Z−M} V_j,   m ← M,

and at the end o = a / l, with L = m + log l the log-sum-exp kept for the backward pass.

Backward (custom VJP): P = e^{Z−L} is recomputed per pair from q, k and L; with D = rowsum(dO ∘ O),

    dP = dO Vᵀ,   dS = P ∘ (dP − D),   dQ += dS K / √H,   dK += dSᵀ Q / √H,   dV += Pᵀ dO.

Extra memory is O(T): the (m, l, L) rows and one block pair's b·G × b scores at a time.
Queries are grouped (GQA): K kv-heads, G query heads per kv-head; a query block holds b
positions × G groups as b·G rows against the b keys of a key block.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BLOCK = 128  # positions per block: scores of one pair are B·K·(b·G)·b floats


def causal_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, *,
                     block: int = BLOCK) -> jnp.ndarray:
    """softmax(q·kᵀ/√H + causal mask)·v of one sequence: query t sees keys 0..t.

    q [B, T, K, G, H], k and v [B, T, K, H] → the output [B, T, K, G, H] (float32), exactly
    the dense attention's (to float rounding), with the gradient of a custom VJP that never
    holds a T×T matrix. `block` positions per block (a sequence shorter than that is one
    block)."""
    B, T, K, G, H = q.shape
    if block < 1:
        raise ValueError(f"block={block} must be a positive number of positions")
    if k.shape != (B, T, K, H) or v.shape != (B, T, K, H):
        raise ValueError(f"k {k.shape} and v {v.shape} must both be {(B, T, K, H)} for q {q.shape}")
    b = min(block, T)
    n = -(-T // b)
    pad = [(0, 0), (0, n * b - T)] + [(0, 0)] * (q.ndim - 2)
    q = jnp.pad(q.astype(jnp.float32) * H**-0.5, pad)
    k, v = (jnp.pad(x.astype(jnp.float32), pad[:4]) for x in (k, v))
    # [B, n·b, K, (G,) H] → [n, B, K, b·G or b, H]: per block, a plain [rows, H] matrix
    qb = q.reshape(B, n, b, K, G, H).transpose(1, 0, 3, 2, 4, 5).reshape(n, B, K, b * G, H)
    kb, vb = (x.reshape(B, n, b, K, H).transpose(1, 0, 3, 2, 4) for x in (k, v))
    out = _flash(qb, kb, vb)
    out = out.reshape(n, B, K, b, G, H).transpose(1, 0, 3, 2, 4, 5).reshape(B, n * b, K, G, H)
    return out[:, :T]


def _pairs(n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The block pairs (i, j) with j ≤ i, query block i first: two int32 [n(n+1)/2]."""
    i, j = np.tril_indices(n)
    return jnp.asarray(i, jnp.int32), jnp.asarray(j, jnp.int32)


def _scores(q: jnp.ndarray, k: jnp.ndarray, i, j) -> jnp.ndarray:
    """Scores [B, K, b·G, b] of query block q [B, K, b·G, H] against key block k [B, K, b, H];
    −inf above the diagonal when i = j (row r is position r // G of the block)."""
    z = jnp.einsum("bkrh,bkch->bkrc", q, k)
    rows, b = z.shape[-2:]
    causal = np.arange(b)[None, :] <= np.arange(rows)[:, None] // (rows // b)
    return jnp.where(causal | (i != j), z, -jnp.inf)


def _forward(q, k, v):
    """(o, L): output [n, B, K, b·G, H] and log-sum-exp [n, B, K, b·G] by the online softmax."""
    rows = q.shape[:-1]
    start = (jnp.full(rows, -jnp.inf), jnp.zeros(rows), jnp.zeros(q.shape))

    def pair(carry, ij):
        m, l, a = carry
        i, j = ij
        z = _scores(q[i], k[j], i, j)
        m_i, l_i, a_i = m[i], l[i], a[i]
        top = jnp.maximum(m_i, z.max(-1))  # finite: every row sees key 0 of its first block
        p, decay = jnp.exp(z - top[..., None]), jnp.exp(m_i - top)
        l_i = decay * l_i + p.sum(-1)
        a_i = decay[..., None] * a_i + jnp.einsum("bkrc,bkch->bkrh", p, v[j])
        put = jax.lax.dynamic_update_index_in_dim
        return (put(m, top, i, 0), put(l, l_i, i, 0), put(a, a_i, i, 0)), None

    (m, l, a), _ = jax.lax.scan(pair, start, _pairs(q.shape[0]))
    return a / l[..., None], m + jnp.log(l)


@jax.custom_vjp
def _flash(q, k, v):
    """Blocked causal attention: q [n, B, K, b·G, H] (scaled by 1/√H), k, v [n, B, K, b, H]."""
    return _forward(q, k, v)[0]


def _flash_fwd(q, k, v):
    o, lse = _forward(q, k, v)
    return o, (q, k, v, o, lse)


def _flash_bwd(residuals, do):
    """(dQ, dK, dV) of the blocked attention, one block pair at a time (module docstring)."""
    q, k, v, o, lse = residuals
    d = jnp.sum(do * o, axis=-1)  # D = rowsum(dO ∘ O) [n, B, K, b·G]

    def pair(carry, ij):
        dq, dk, dv = carry
        i, j = ij
        p = jnp.exp(_scores(q[i], k[j], i, j) - lse[i][..., None])
        ds = p * (jnp.einsum("bkrh,bkch->bkrc", do[i], v[j]) - d[i][..., None])

        def add(x, y, at):
            return jax.lax.dynamic_update_index_in_dim(x, x[at] + y, at, 0)

        return (add(dq, jnp.einsum("bkrc,bkch->bkrh", ds, k[j]), i),
                add(dk, jnp.einsum("bkrc,bkrh->bkch", ds, q[i]), j),
                add(dv, jnp.einsum("bkrc,bkrh->bkch", p, do[i]), j)), None

    zeros = tuple(jnp.zeros(x.shape) for x in (q, k, v))
    (dq, dk, dv), _ = jax.lax.scan(pair, zeros, _pairs(q.shape[0]))
    return dq, dk, dv


_flash.defvjp(_flash_fwd, _flash_bwd)
