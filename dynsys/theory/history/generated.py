"""The generated keys of the history-uniform certificate by a dynamic programme over positions
(proofs/history_uniform.md, Lemma H4).

The generated token at position n + i, whatever it is and whatever the i tokens before it were,
is some token t at position n + i after some history of length i: its stream entering every
block lies in the enclosure of the query (t, i) that `history_bound` computes, so its key and
value lie in the union over t ∈ V of that query's own key and value enclosures. Stage i = 0 has
no history: its keys and values are points, the float64 evaluation of each token's step at
position n (`_point`). Stage i ≥ 1 encloses all V queries (t, i) with the stages before it.
`Generated` holds stages 0..S − 1 as balls: key centre and radius, value centre and radius,
per stage, token, layer and kv head."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig
from dynsys.nn.rope import rope_angles, rotate
from dynsys.theory.exact import F64


@dataclasses.dataclass(frozen=True)
class Generated:
    """The generated keys and values of stages i = 0..S − 1 (position n + i after any history of
    i tokens), float64 numpy, for a prompt of length n, vocabulary V, L layers, K kv heads:
    every key at position n + i (rotated by RoPE there) lies in the ball keys[i, t] ±
    key_radius[i, t] (ℓ2) for some token t, every value in values[i, t] ± value_radius[i, t].

    keys, values [S, V, L, K, H]; key_radius, value_radius [S, V, L, K] (+inf: vacuous)."""

    n: int
    keys: np.ndarray
    key_radius: np.ndarray
    values: np.ndarray
    value_radius: np.ndarray

    @property
    def stages(self) -> int:
        return self.keys.shape[0]

    def extend(self, keys, key_radius, values, value_radius) -> Generated:
        """These sets with one more stage: [V, L, K, H] centres, [V, L, K] radii (a ball with
        a non-finite centre or radius becomes centre 0, radius +inf: vacuous, not NaN)."""
        return Generated(self.n, *(np.concatenate([old, new[None]]) for old, new in zip(
            (self.keys, self.key_radius, self.values, self.value_radius),
            _balls(keys, key_radius) + _balls(values, value_radius))))

    def tables(self, rows: int) -> list[dict]:
        """Per layer the arrays `_head` reads (kv head first), padded with vacuous stages to
        `rows` ≥ S: dk [K, rows, V, H] the key centres, dkr [K, rows, V] their radii, and for
        j < rows the ball about the mean of every value of stages 0..j: dvm [K, rows, H] its
        centre, dvr [K, rows] its radius (+inf when a radius is)."""
        pad = [(0, rows - self.stages)] + [(0, 0)] * 4
        keys = np.pad(self.keys, pad)
        key_radius = np.pad(self.key_radius, pad[:4], constant_values=np.inf)
        values = np.pad(self.values, pad)
        value_radius = np.pad(self.value_radius, pad[:4], constant_values=np.inf)
        out = []
        for layer in range(keys.shape[2]):
            k, kr = keys[:, :, layer], key_radius[:, :, layer]  # [rows, V, K, (H)]
            v, vr = values[:, :, layer], value_radius[:, :, layer]
            centres, radii = [], []
            for j in range(rows):
                vals = v[:j + 1].reshape(-1, *v.shape[2:])  # [(j + 1) V, K, H]
                mean = vals.mean(0)
                far = np.linalg.norm(vals - mean, axis=-1) + vr[:j + 1].reshape(-1, v.shape[2])
                radius = far.max(0) * (1 + F64) + F64 * np.linalg.norm(mean, axis=-1)
                centres.append(mean)
                radii.append(np.where(np.isfinite(radius), radius, np.inf))
            out.append(dict(dk=k.transpose(2, 0, 1, 3), dkr=kr.transpose(2, 0, 1),
                            dvm=np.stack(centres, 1), dvr=np.stack(radii, 1)))
        return out


def _rms(x, gamma, eps):
    return gamma * x / jnp.sqrt(jnp.mean(x * x) + eps)


def _point(cfg: ModelConfig, weights, embed, pos, prior_k, prior_v):
    """One token (embedding [D]) at position pos after the prompt and G earlier generated tokens
    whose keys (rotated) and values prior_k, prior_v [L, K, G, H] are given, evaluated in
    float64 (the exact-arithmetic step up to float64 rounding): its keys (rotated at pos) and
    values [L, K, H]. `weights` as `weights.constants`."""
    H, eps = cfg.head_dim, cfg.norm_eps
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    angles = rope_angles(pos, cfg).astype(jnp.float64)
    rope = (lambda a: rotate(a, angles, cfg.rotary_dim)) if cfg.use_rope else (lambda a: a)
    x, keys, values = embed, [], []
    for lw, pk, pv in zip(weights["layers"], prior_k, prior_v):
        u = _rms(x, lw["norm1"], eps)
        q = rope(jnp.einsum("nhd,d->nh", lw["wq"], u) + lw["bq"])
        k = rope(jnp.einsum("khd,d->kh", lw["wk"], u) + lw["bk"])
        v = jnp.einsum("khd,d->kh", lw["wv"], u) + lw["bv"]
        z = jnp.where(weights["valid"], jnp.einsum("nh,nsh->ns", q, lw["kp"][kv]), -jnp.inf)
        z = jnp.concatenate([z, jnp.einsum("nh,ngh->ng", q, pk[kv]),
                             jnp.sum(q * k[kv], -1)[:, None]], 1) / math.sqrt(H)
        a = jax.nn.softmax(z, axis=1)
        S, G = lw["kp"].shape[1], pk.shape[1]
        o = (jnp.einsum("ns,nsh->nh", a[:, :S], lw["vp"][kv])
             + jnp.einsum("ng,ngh->nh", a[:, S:S + G], pv[kv]) + a[:, -1:] * v[kv])
        x = x + jnp.einsum("dnh,nh->d", lw["wo"], o) + lw["bo"]
        y = _rms(x, lw["norm2"], eps)
        g = lw["wg"] @ y
        x = x + lw["wd"] @ (g * jax.nn.sigmoid(g) * (lw["wu"] @ y + lw["bu"])) + lw["bd"]
        keys.append(k)
        values.append(v)
    return jnp.stack(keys), jnp.stack(values)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _points(cfg: ModelConfig, weights, embed, pos, prior_k, prior_v):
    """`_point` of every row of embed [B, D] after its prior_k, prior_v [B, L, K, G, H] at one
    position; the key and value radii [B, L, K] cover the float64 evaluation: F64 (‖k‖ + R_k),
    F64 (‖v‖ + ‖v₀‖ + ‖S‖_F) (as every stage of `bound._enclose`)."""
    keys, values = jax.vmap(lambda *a: _point(cfg, weights, a[0], pos, *a[1:]))(
        embed, prior_k, prior_v)
    rk = jnp.stack([lw["rk"] for lw in weights["layers"]])  # [L, K]
    rv = jnp.stack([jnp.linalg.norm(lw["v0"], axis=-1) + jnp.linalg.norm(lw["vs"], axis=(1, 2))
                    for lw in weights["layers"]])
    return (keys, F64 * (jnp.linalg.norm(keys, axis=-1) + rk),
            values, F64 * (jnp.linalg.norm(values, axis=-1) + rv))


def stage_zero(cfg: ModelConfig, weights, embed, n: int) -> Generated:
    """Stage 0: every token's key and value at position n (points, float64)."""
    V = len(embed)
    empty = np.zeros((V, cfg.num_layers, cfg.num_kv_heads, 0, cfg.head_dim))
    with jax.enable_x64(True):
        k, kr, v, vr = _points(cfg, jax.tree_util.tree_map(jnp.asarray, weights),
                               jnp.asarray(embed), jnp.asarray(n, jnp.int32), empty, empty)
    return Generated(n, *(a[None] for a in _balls(k, kr) + _balls(v, vr)))


def stage_one(cfg: ModelConfig, weights, embed, first: Generated) -> Generated:
    """Stage 1 by enumeration (exact): for every token t the float64 step at position n + 1 after
    every h ∈ V (stage 0's key and value of h, points), V² steps; the ball of token t is about the
    mean of its V keys (values), of radius the farthest one plus the largest float64 slack."""
    V, n = len(embed), first.n
    out = []
    with jax.enable_x64(True):
        w = jax.tree_util.tree_map(jnp.asarray, weights)
        prior_k, prior_v = (jnp.asarray(a[0][:, :, :, None]) for a in (first.keys, first.values))
        pos = jnp.asarray(n + 1, jnp.int32)
        for t in range(V):
            k, kr, v, vr = _points(cfg, w, jnp.broadcast_to(jnp.asarray(embed[t]), embed.shape),
                                   pos, prior_k, prior_v)
            ball = []
            for centre, radius in ((k, kr), (v, vr)):
                mean = centre.mean(0)
                far = jnp.linalg.norm(centre - mean, axis=-1).max(0) * (1 + F64)
                ball += [mean, far + radius.max(0) + F64 * jnp.linalg.norm(mean, axis=-1)]
            out.append([np.asarray(a) for a in ball])
    return first.extend(*(np.stack(a) for a in zip(*out)))


def _balls(centre, radius) -> tuple:
    """(centre, radius) as float64 numpy, with centre 0 and radius +inf where either is not
    finite."""
    centre, radius = np.asarray(centre, np.float64), np.asarray(radius, np.float64)
    ok = np.isfinite(radius) & np.isfinite(centre).all(-1)
    return np.where(ok[..., None], centre, 0.0), np.where(ok, radius, np.inf)
