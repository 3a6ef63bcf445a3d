"""Prompts of period N: the limit map without RoPE, its O(1/n) rate for one layer, and the
skew product on V × Z_N that the time-dependent maps form with RoPE (proofs/periodic.md).

A prompt of period N is x_j = c_{j mod N}, j = 0..n−1, for one period c_0..c_{N−1}.

Without RoPE, as n → ∞ the stream at a prompt position j ≡ i (mod N) converges to a phase
stream X_l(i), and the query's attention over the prompt to the softmax over the N phases with
equal weights (each phase has ⌊n/N⌋ or ⌊n/N⌋ + 1 positions; the query's own key gets a vanishing
share). So logits_n(v) → logits_∞(v), the model run on the phases: at every layer each phase and
the query attend to the N phase keys, one each (a token that occurs k times in the period has
weight k in layer 1), and not to themselves. For one layer the rate is exactly O(1/n) with the
constant of `limit_bound`.

With RoPE the maps f_{P,τ} depend on τ; for one layer the shift by N moves the logits by
O(N/n) (`shift_bound`, with the measured partition function of the common keys); where
f_{P,τ} = f_{P,τ mod N} along an orbit, the orbit is that of the skew product
Φ(v, k) = (f_{P,k}(v), k + 1 mod N) (`skew_orbit`, `skew_cycle`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.nn import Model
from dynsys.nn import params as layout
from dynsys.nn.rope import rope_angles, rotate
from dynsys.theory import exact
from dynsys.theory.constants import WeightConstants, weight_constants
from dynsys.theory.exact import check_float32
from dynsys.theory.lemmas import norm_lipschitz

_norm = exact.on_host(exact.norm)  # float64 numpy streams, as everything here
_spread = exact.on_host(exact.spread)


def _project(dense: dict, u: np.ndarray) -> np.ndarray:
    """u [S, D] → [S, heads, H] through a kernel [heads, H, D] and its bias."""
    return np.einsum("hkD,SD->Shk", dense["kernel"], u) + dense.get("bias", 0.0)


@dataclasses.dataclass(frozen=True)
class Limit:
    """The limit n → ∞ of a period's Markov logits, float64, for B query tokens.

    logits [B, V]: logits_∞(v). first [dict]: layer 0's per query and head (A heads) the
    scores z_k of the N phase keys (phase [B, A, N]) and z_s of the query's own key (own
    [B, A]), the norms ‖v_k − ō‖ of the phase values centred at the limit output (spread
    [B, A, N]) and the own value's ‖v_s − ō‖ (own_spread [B, A]). mid_spread [B]: the spread
    (rms, or std for LayerNorm) of the limit query stream entering the first block's MLP;
    final_spread [B]: entering the final norm."""

    logits: np.ndarray
    first: dict
    mid_spread: np.ndarray
    final_spread: np.ndarray


def limit_logits(model: Model, period, tokens) -> Limit:
    """logits_∞(v) of the periodic prompt with one period `period` [N], for tokens [B], no RoPE.

    Phase streams X_0(i) = E[c_i], query stream x_0 = E[v]; per block, with the block's queries,
    keys and values q(x), k(x), v(x) of the normed streams,

        o(i) = Σ_k softmax_k(⟨q(X(i)), k(X(k))⟩/√H) v(X(k)),   the same for the query,

    over the N phases k (the own key left out), then the block's output projection, residual and
    MLP as in the model; logits = W N_f(x_L). Proof of the limit: proofs/periodic.md."""
    cfg = model.config
    if cfg.use_rope:
        raise ValueError("limit_logits: the limit is for models without RoPE "
                         "(model.with_rope(False))")
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.params)
    w = weight_constants(model)
    period, tokens = np.asarray(period), np.asarray(tokens)
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    root = math.sqrt(cfg.head_dim)
    phases, x = p["embed"]["embedding"][period], p["embed"]["embedding"][tokens]
    first, mid_spread = {}, None
    for i in range(cfg.num_layers):
        block = layout.block(p, i)
        attn = block["attn"]
        u, uq = _norm(cfg, block["norm1"], phases), _norm(cfg, block["norm1"], x)
        k, v = _project(attn["k"], u)[:, kv], _project(attn["v"], u)[:, kv]  # [N_p, heads, H]
        outs = []
        for normed in (u, uq):
            z = np.einsum("Shc,Thc->ShT", _project(attn["q"], normed), k) / root
            a = np.exp(z - z.max(-1, keepdims=True))
            a /= a.sum(-1, keepdims=True)
            outs.append(np.einsum("ShT,Thc->Shc", a, v))
        if i == 0:
            own_k, own_v = _project(attn["k"], uq)[:, kv], _project(attn["v"], uq)[:, kv]
            z_own = np.einsum("Bhc,Bhc->Bh", _project(attn["q"], uq), own_k) / root
            first = dict(phase=z, own=z_own,
                         spread=np.linalg.norm(v.transpose(1, 0, 2)[None] - outs[1][:, :, None],
                                               axis=-1),
                         own_spread=np.linalg.norm(own_v - outs[1], axis=-1))
        h = [np.einsum("Dhc,Shc->SD", attn["o"]["kernel"], o) + attn["o"].get("bias", 0.0)
             for o in outs]
        new = []
        for stream, dh in zip((phases, x), h):
            mid = stream + dh
            new.append(mid + w.mlp_branch(i, stream if cfg.parallel_residual else mid))
        if i == 0:
            mid_spread = _spread(cfg, x if cfg.parallel_residual else x + h[1])
        phases, x = new
    return Limit(w.final_norm(x) @ w.head_rows.T, first, mid_spread, _spread(cfg, x))


@dataclasses.dataclass(frozen=True)
class LimitBound:
    """One layer, no RoPE: max_u |logits_n(v)_u − logits_∞(v)_u| ≤ bound[n, v] for every prompt
    of period N and length n ≥ N, and n·bound → rate as n → ∞: rate [B] is the constant C of
    the O(1/n) (proofs/periodic.md, Proposition 2). lengths [M]; bound [M, B]."""

    lengths: np.ndarray
    bound: np.ndarray
    rate: np.ndarray


def limit_bound(model: Model, period, tokens, lengths, weights: WeightConstants | None = None
                ) -> LimitBound:
    """The explicit O(1/n) bound of a one-layer model without RoPE. Per query token v and head,
    from the limit run: w_k = e^{z_k} (phase scores), s = e^{z_s} (own key), W = Σ_k w_k, ō the
    limit output, and

        ‖o_n − ō‖ ≤ b_h(a) = (Σ_k w_k ‖v_k − ō‖ + s ‖v_s − ō‖) / (a W + s),   a = ⌊n/N⌋,
        δ_n = ‖W_o‖ ‖(b_h(a))_h‖₂,   ρ_n = (1 + Λ₂ L_M) δ_n (parallel residual: δ_n),
        bound = max_u ‖w_u ⊙ w_f‖ ρ_n / √((ς_f − ρ_n/√D)₊² + ε),

    Λ₂ = ‖w₂‖_∞/√((ς_mid − δ_n/√D)₊² + ε), ς_mid, ς_f the limit query stream's spread entering
    the MLP and the final norm, L_M the MLP's weight-only Lipschitz bound (Lemma 5). The rate:
    C = N ‖W_o‖ ‖(lim_a a b_h(a))_h‖ (1 + Λ₂⁰ L_M) max_u ‖w_u ⊙ w_f‖/√(ς_f² + ε) (floors at
    δ = 0)."""
    cfg = model.config
    check_float32(cfg, "limit_bound")
    if cfg.num_layers != 1:
        raise ValueError("limit_bound: the explicit constant is for one layer "
                         f"(got {cfg.num_layers}); deeper models: limit_logits, rate measured")
    w = weight_constants(model) if weights is None else weights
    lim = limit_logits(model, period, tokens)
    f = lim.first
    top = np.maximum(f["phase"].max(-1), f["own"])  # a common shift: the ratios are invariant
    wk, s = np.exp(f["phase"] - top[..., None]), np.exp(f["own"] - top)
    num, total = (wk * f["spread"]).sum(-1) + s * f["own_spread"], wk.sum(-1)  # [B, heads]
    lengths = np.asarray(lengths)
    N, root = len(period), math.sqrt(cfg.hidden_size)
    whole = (lengths // N).astype(np.float64)[:, None, None]  # a = ⌊n/N⌋

    def gain(delta):  # ρ/δ times the final norm's and the head's factor, floors at δ
        if cfg.parallel_residual:
            rho = np.ones_like(delta)
        else:
            lam = norm_lipschitz(w.norm2[0], lim.mid_spread - delta / root, cfg.norm_eps)
            rho = 1 + lam * w.mlp_lipschitz(0)
        return w.head * norm_lipschitz(1.0, lim.final_spread - rho * delta / root,
                                       cfg.norm_eps) * rho

    delta = w.out[0] * np.linalg.norm(num / (whole * total + s), axis=-1)  # [M, B]
    rate = N * gain(np.zeros(len(s))) * w.out[0] * np.linalg.norm(num / total, axis=-1)
    return LimitBound(lengths, gain(delta) * delta, rate)


def _rope(cfg, x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The model's rotary embedding in float64 with exact angles (`rope_angles` in float64):
    x [S, heads, H] at positions [S]. The frame argument of `shift_bound` needs R_a R_b =
    R_{a+b}, which the model's float32 angles (~1e-4 rad off at positions ~2000) break: that
    rounding is not covered (proofs/README.md)."""
    with jax.enable_x64(True):
        angles = rope_angles(jnp.asarray(positions), cfg, jnp.float64)[:, None]
        return np.asarray(rotate(jnp.asarray(x, jnp.float64), angles, cfg.rotary_dim))


def shift_bound(model: Model, period, tokens, n: int, tau: int,
                weights: WeightConstants | None = None) -> np.ndarray:
    """[B]: a bound on max_u |logits_{P,τ+N}(v)_u − logits_{P,τ}(v)_u| for the prompt of period
    N = len(period) and length n ≥ N, one layer with RoPE (proofs/periodic.md, Proposition 3).

    In the frame of the query at n + τ (RoPE scores depend on offsets only), the view from
    n + τ + N is the same query over the keys at −N..n−N−1: common keys K (0..n−N−1 and the
    query's own), A = n−N..n−1 (only at τ) and B = −N..−1 (only at τ + N, the periodic
    continuation). Per head, with Z_K = Σ_K e^{z_j}, o_K the attention over K and
    hi_R = max_R z, D_R = max_R ‖v_j − o_K‖ (R = A, B):

        ‖o_{τ+N} − o_τ‖ ≤ e_h = Σ_{R=A,B} N e^{hi_R}/(N e^{hi_R} + Z_K) · D_R,

    δ = ‖W_o‖ ‖(e_h)_h‖₂, and the MLP block and the final norm as in `limit_bound`, with the
    floors at the τ run's streams. Z_K grows like n: the bound is O(N/n)."""
    cfg = model.config
    check_float32(cfg, "shift_bound")
    if cfg.num_layers != 1:
        raise ValueError(f"shift_bound: one layer only (got {cfg.num_layers}); deeper models: "
                         "measured (dynsys.theory.dilution.position_drift)")
    w = weight_constants(model) if weights is None else weights
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.params)
    block, period, tokens = layout.block(p, 0), np.asarray(period), np.asarray(tokens)
    attn, N, root = block["attn"], len(period), math.sqrt(cfg.head_dim)
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    rope = _rope if cfg.use_rope else (lambda cfg, x, positions: x)
    positions = np.arange(-N, n)
    u = _norm(cfg, block["norm1"], p["embed"]["embedding"][period[positions % N]])
    k = rope(cfg, _project(attn["k"], u), positions)[:, kv]  # [S, heads, H]
    v = _project(attn["v"], u)[:, kv]
    x = p["embed"]["embedding"][tokens]
    uq, here = _norm(cfg, block["norm1"], x), np.full(len(tokens), n + tau)
    q = rope(cfg, _project(attn["q"], uq), here)
    own_k, own_v = rope(cfg, _project(attn["k"], uq), here)[:, kv], _project(attn["v"], uq)[:, kv]
    z = np.einsum("Bhc,Shc->BhS", q, k) / root
    z_own = np.einsum("Bhc,Bhc->Bh", q, own_k) / root
    common, near = (positions >= 0) & (positions < n - N), positions >= n - N
    top = np.maximum(np.where(common, z, -np.inf).max(-1), z_own)
    e, e_own = np.where(common, np.exp(z - top[..., None]), 0.0), np.exp(z_own - top)
    total = e.sum(-1) + e_own
    o_common = (np.einsum("BhS,Shc->Bhc", e, v) + e_own[..., None] * own_v) / total[..., None]
    lse = top + np.log(total)
    spread = np.linalg.norm(v.transpose(1, 0, 2)[None] - o_common[:, :, None], axis=-1)
    heads = 0.0
    for part in (near, positions < 0):
        hi = np.where(part, z, -np.inf).max(-1)
        mass = 1 / (1 + np.exp(lse - hi - math.log(N)))  # N e^hi / (N e^hi + Z_K)
        heads = heads + mass * np.where(part, spread, 0.0).max(-1)
    e_near = np.where(near, np.exp(z - top[..., None]), 0.0)
    o_tau = ((np.einsum("BhS,Shc->Bhc", e + e_near, v) + e_own[..., None] * own_v)
             / (total + e_near.sum(-1))[..., None])
    mid = x + np.einsum("Dhc,Bhc->BD", attn["o"]["kernel"], o_tau) + attn["o"].get("bias", 0.0)
    final = mid + w.mlp_branch(0, x if cfg.parallel_residual else mid)
    delta, dim = w.out[0] * np.linalg.norm(heads, axis=-1), math.sqrt(cfg.hidden_size)
    if cfg.parallel_residual:
        rho = delta
    else:
        lam = norm_lipschitz(w.norm2[0], _spread(cfg, mid) - delta / dim, cfg.norm_eps)
        rho = (1 + lam * w.mlp_lipschitz(0)) * delta
    return w.head * norm_lipschitz(1.0, _spread(cfg, final) - rho / dim, cfg.norm_eps) * rho


def skew_orbit(maps, start: int, steps: int) -> np.ndarray:
    """The orbit y_1 = start, y_{t+1} = F_{(t−1) mod N}(y_t), t = 1..steps, of the skew product
    Φ(v, k) = (F_k(v), k + 1 mod N) on V × Z_N started at (start, 0), projected to V; maps
    [N, V] holds F_0..F_{N−1} (the Markov maps f_{P,0..N−1})."""
    maps = np.asarray(maps)
    orbit = [int(start)]
    for t in range(steps):
        orbit.append(int(maps[t % len(maps), orbit[-1]]))
    return np.asarray(orbit)


def skew_cycle(maps, start: int) -> tuple[int, int]:
    """(tail T, cycle p) of Φ's orbit from (start, 0): the states (y_t, t−1 mod N) are distinct
    for t ≤ T + p and (y_{t+p}, ·) = (y_t, ·) for t > T. N divides p, and the token sequence
    y has onset T and minimal eventual period q with lcm(q, N) = p (proofs/periodic.md)."""
    maps = np.asarray(maps)
    N, seen, state, t = len(maps), {}, (int(start), 0), 0
    while state not in seen:
        seen[state] = t
        state, t = (int(maps[state[1], state[0]]), (state[1] + 1) % N), t + 1
    return seen[state], t - seen[state]
