"""The multi-layer recursion along a trace and the certified horizon.

The constants of the dilution theorems (proofs/) and the certified horizon.

Single head (proofs/single_head.md): with the removed scores ≤ hi and the kept ones ≥ lo,
a(R) ≤ r e^{hi} / (r e^{hi} + (s − r) e^{lo}).

Multi-layer (proofs/multi_layer.md): at step t the real and the reference run differ only in
the r = t−1 generated keys and in the query-position stream; δ_l = ‖x_l − x′_l‖ obeys a
recursion whose constants are operator norms of the weights, norm-layer bounds and quantities
of the reference run (the Markov map's own forward pass, computed exactly). `certify` runs it
along a trace. `uniform_bound` replaces every measured quantity by a weight-only bound, which
gives the explicit n₀ of the degeneration theorem (proofs/degeneration.md).

All bounds hold in exact arithmetic; float32 rounding (≈1e-6 of the logits) is not included.
The margin certificate (dynsys.theory.margin) reuses this recursion's stages but bounds each
margin ℓ_top − ℓ_v through the reference Jacobians instead of max_v |Δℓ_v| with a factor 2."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy.special import expit

from dynsys.nn import Model
from dynsys.nn.cache import Prefix
from dynsys.theory.constants import WeightConstants, weight_constants
from dynsys.theory.exact import F64, check_float32
from dynsys.theory.lemmas import norm_curvature, norm_lipschitz, softmax_box_max
from dynsys.theory.reference import MarkovStats, markov_stats


@dataclasses.dataclass(frozen=True)
class Bound:
    """Upper bounds along a trace: mass [G, L, N] on a_t(R) of the real query; residual [G, L]
    on ‖x_l − x′_l‖ leaving block l; logits [G] on max_v |logits − logits′|."""

    mass: np.ndarray
    residual: np.ndarray
    logits: np.ndarray


@dataclasses.dataclass(frozen=True)
class AttentionBounds:
    """Lemmas 3–4 for one block along a trace (G steps, N heads, earlier steps i < t).

    mass [G, N]: α ≥ a_t(R). low, high [G, N, G]: w_lo ≤ a_{t,i} ≤ w_hi, the real weight of
    generated key i (0 for i ≥ t). query_path [G, N]: e ≥ ‖o_h − o′‖, the real query over the
    prompt and the real current key against the reference output. centre [G, D], radius [G]:
    the attention output's change is J_A c + centre + (a vector of norm ≤ radius)."""

    mass: np.ndarray
    low: np.ndarray
    high: np.ndarray
    query_path: np.ndarray
    centre: np.ndarray
    radius: np.ndarray


def attention_bounds(w: WeightConstants, s: MarkovStats, i: int, delta: np.ndarray,
                     support: np.ndarray | None = None) -> AttentionBounds:
    """Lemmas 3–4 of proofs/multi_layer.md for block i, all steps at once, given δ [G] ≥
    ‖x − x′‖ entering it (every step's, since key i is step i's own stream). support [G, N,
    S + G] bounds |⟨q − q′, k⟩|/√H for the prompt's keys k_j, then every step's own reference
    key k′_i (the margin certificate's directional bounds); by default d_q ‖k‖/√H."""
    cfg = w.config
    D, H, eps = cfg.hidden_size, cfg.head_dim, cfg.norm_eps
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    root = math.sqrt(H)
    q_max, k_max, v_max = w.query_max[i], w.key_max[i][kv], w.value_max[i][kv]
    floor = s.spread_in[:, i] - delta / math.sqrt(D)
    du = (norm_lipschitz(w.norm1[i], floor, eps) * delta)[:, None]
    dq = np.minimum(w.query[i] * du, s.query[:, i] + q_max)
    dk = np.minimum(w.key[i][kv] * du, s.self_key[:, i] + k_max)
    dv = np.minimum(w.value[i][kv] * du, 2 * v_max)
    q_hat = np.minimum(s.query[:, i] + dq, q_max)
    keys = np.concatenate([s.prompt_keys[i][kv], s.own_key[:, i][:, kv].swapaxes(0, 1)], 1)
    lipschitz = dq[..., None] * np.linalg.norm(keys, axis=-1)[None] / root  # [G, N, S + G]
    support = lipschitz if support is None else np.minimum(support, lipschitz)
    S = s.prefix_score.shape[-1]
    zeta, cross = support[..., :S], support[..., S:]  # prompt keys; own keys k′_i [G, N, G]
    # Lemma 3, the prompt and the current token: o_h − o′ = C Δq/√H + (≤ rest), |ζ_j| ≤ zeta_j
    zeta_s = np.einsum("tnt->tn", cross) + q_hat * dk / root
    score, dist = s.prefix_score[:, i], s.prefix_dist[:, i]  # [G, N, S]
    a = np.exp(score - np.logaddexp(s.prefix_lse[:, i], s.self_score[:, i])[..., None])
    with np.errstate(invalid="ignore"):
        grow = np.where(a > 0, a * np.expm1(zeta), 0.0)  # a′_j (e^{ζ_j} − 1)
        curve_p = np.sum(np.where(a > 0, a * (np.expm1(zeta) - zeta), 0.0) * dist, -1)
    p_lo, p_hi = np.sum(a * np.exp(-zeta), -1), np.sum(a, -1) + np.sum(grow, -1)
    lse_lo = np.logaddexp.reduce(score - zeta, axis=-1)  # ≤ log Σ_P e^{z_j}
    lse_hi = np.logaddexp.reduce(score + zeta, axis=-1)
    a_self = expit(s.self_score[:, i] - s.prefix_lse[:, i])
    a_hat = expit(s.self_score[:, i] + zeta_s - lse_lo)
    z_lo = p_lo + a_self * np.exp(-zeta_s)
    z_hi = p_hi + a_self * np.exp(zeta_s)
    z_gap = np.maximum(1 / z_lo - 1, 1 - 1 / z_hi)
    s_gap = np.maximum(np.exp(zeta_s) / z_lo - 1, 1 - np.exp(-zeta_s) / z_hi)
    sv = s.self_value[:, i]
    spread = np.sum(grow * dist, -1)  # Σ_P a′_j (e^{ζ_j} − 1) ‖v_j − o′‖
    rest = curve_p + z_gap * (a_self * sv + spread) + a_self * s_gap * sv + a_hat * dv
    curve_q = (s.covariance[:, i] * w.query[i] / root
               * norm_curvature(w.norm1[i], floor, eps, D)[:, None] * delta[:, None] ** 2 / 2)
    e = s.covariance[:, i] * dq / root + rest  # ≥ ‖o_h − o′‖
    # Lemma 4, the generated keys: key i < t is step i's current token
    earlier = s.generated[None, None, :] < s.generated[:, None, None]  # [G, 1, G]
    shift = cross + q_hat[:, :, None] * dk.T[None] / root
    cap = (q_hat * k_max)[:, :, None] / root
    hi = np.where(earlier, np.minimum(s.cross_score[:, i] + shift, cap), -np.inf)  # [G, N, G]
    lo = np.where(earlier, np.maximum(s.cross_score[:, i] - shift, -cap), -np.inf)
    low = np.logaddexp(lse_lo, s.self_score[:, i] - zeta_s)
    high = np.logaddexp(lse_hi, s.self_score[:, i] + zeta_s)
    with np.errstate(invalid="ignore"):
        removed = np.logaddexp.reduce(hi, axis=-1)
        alpha = expit(removed - low)
        w_hi = expit(hi - low[..., None])  # w_lo ≤ a_i ≤ w_hi; both 0 off the earlier keys
        w_lo = np.exp(lo - np.logaddexp(removed, high)[..., None])
    other = curve_q + rest + alpha * e + np.sum(w_hi * dv.T[None], -1)
    # the generated keys at midpoint weights, each off by ≤ (w_hi − w_lo)/2 ...
    centre = np.einsum("tni,tnid->td", (w_hi + w_lo) / 2, s.source[:, i])
    spread = np.sum((w_hi - w_lo) / 2 * s.source_norm[:, i], -1)
    radius = w.out[i] * np.linalg.norm(other + spread, axis=1)
    # ... or the box of Σ_i a_i W_o,n (v′_i − o′) per coordinate, exact over the score box
    box_lo, box_hi = _generated_box(s.source[:, i], lo, hi, low, high)
    box = (w.out[i] * np.linalg.norm(other, axis=1) + np.linalg.norm(box_hi - box_lo, axis=1) / 2
           + F64 * np.sum(np.linalg.norm(s.source[:, i], axis=-1), (1, 2)))
    pick = box < radius
    return AttentionBounds(alpha, np.where(earlier, w_lo, 0.0), np.where(earlier, w_hi, 0.0), e,
                           np.where(pick[:, None], (box_lo + box_hi) / 2, centre),
                           np.where(pick, box, radius))


def _generated_box(source, lo, hi, low, high):
    """Per coordinate, the least and greatest Σ_{n, i} a_{n,i} y_{n,i} [G, D] for y = source
    [G, N, G, D] (W_o,n (v′_i − o′) of the generated keys), over every score of key i in
    [lo_i, hi_i] [G, N, G] (−∞ off the earlier keys) and every kept log-mass in [low, high]
    [G, N] (the prompt and the current token, value 0 against o_h): `softmax_box_max` per head
    and coordinate, summed over heads."""
    G, N, _, D = source.shape
    y = np.concatenate([np.moveaxis(source, -1, -2), np.zeros((G, N, D, 1))], -1)
    z_lo = np.concatenate([np.broadcast_to(lo[:, :, None], (*y.shape[:-1], G)),
                           np.broadcast_to(low[:, :, None, None], (G, N, D, 1))], -1)
    z_hi = np.concatenate([np.broadcast_to(hi[:, :, None], (*y.shape[:-1], G)),
                           np.broadcast_to(high[:, :, None, None], (G, N, D, 1))], -1)
    return -softmax_box_max(-y, z_lo, z_hi).sum(1), softmax_box_max(y, z_lo, z_hi).sum(1)


def mlp_constants(w: WeightConstants, s: MarkovStats, i: int, delta: np.ndarray, spread,
                  jacobian: np.ndarray | None = None):
    """Lemma 5 for Φ(x) = x + MLP(norm₂ x) on the ball ‖x − x′‖ ≤ δ [G]: its Lipschitz bound
    1 + Λ₂ Lip(MLP), and κ = κ_M Λ₂² + ‖J_M(norm₂ y₀)‖ κ_N with ‖DΦ(y) − DΦ(y₀)‖ ≤ κ ‖y − y₀‖
    for y in the ball, so ‖Φ(y₀ + d) − Φ(y₀) − DΦ(y₀) d‖ ≤ ½ κ ‖d‖². y₀ is the reference
    stream x′, or any point of the ball whose ‖J_M‖ [G] is given as `jacobian`."""
    cfg = w.config
    D, eps = cfg.hidden_size, cfg.norm_eps
    floor = spread - delta / math.sqrt(D)
    lam2 = norm_lipschitz(w.norm2[i], floor, eps)
    up_abs = None
    if s.up is not None:
        ball = (lam2 * delta)[:, None]
        up_abs = np.minimum(np.abs(s.up[:, i]) + w.up_cols[i] * ball,
                            w.up_cols[i] * w.norm2_radius[i])
    curve = (w.mlp_curvature(i, up_abs) * lam2 ** 2
             + (s.mlp_jacobian[:, i] if jacobian is None else jacobian)
             * norm_curvature(w.norm2[i], floor, eps, D))
    return 1 + lam2 * w.mlp_lipschitz(i), curve


def _tighter(first, second):
    """Of two enclosures (c, ρ) [G, D], [G] of the same vector, the smaller ‖c‖ + ρ per row."""
    size = [np.linalg.norm(c, axis=1) + rho for c, rho in (first, second)]
    pick = size[0] <= size[1]
    return np.where(pick[:, None], first[0], second[0]), np.where(pick, first[1], second[1])


def perturbation_bound(w: WeightConstants, s: MarkovStats) -> Bound:
    """The recursion of proofs/multi_layer.md, all steps at once. The query stream's change is
    enclosed in a ball x − x′ ∈ c + B(ρ), from c = 0, ρ = 0 (same token, same position); with
    δ = ‖c‖ + ρ, per block (sequential residual)

        c_mid = (I + J_A) c + S,   ρ_mid = ‖I + J_A‖ ρ + ρ_A                      (Lemmas 3–4)
        c_out = B c_mid,           ρ_out = ‖B‖ ρ_mid + ½ κ δ_mid²,
                     or c_out = 0, ρ_out = Lip(Φ) δ_mid, whichever is smaller        (Lemma 5)

    (parallel residual: c_out = (B + J_A) c + S, ρ_out = ‖B + J_A‖ ρ + ρ_A + ½ κ δ², or
    c_out = J_A c + S, ρ_out = Lip(Φ) δ + ‖J_A‖ ρ + ρ_A). Logits (Lemma 6): max_v |Δ_v| ≤
    max_v |(W J_f c)_v| + max_v ‖w_v ⊙ w_f‖ ρ/rms′ + ½ κ_f δ² max_v ‖w_v‖.
    """
    check_float32(w.config, "perturbation_bound")
    with np.errstate(over="ignore", invalid="ignore"):
        return _recursion(w, s)


def _recursion(w: WeightConstants, s: MarkovStats) -> Bound:
    """perturbation_bound's body; an overflow gives ∞ and a 0 · ∞ (NaN) radius is read as ∞:
    a vacuous but valid bound."""
    cfg = w.config
    D, eps = cfg.hidden_size, cfg.norm_eps
    parallel = cfg.parallel_residual
    c, rho = np.zeros((len(s.generated), D)), np.zeros(len(s.generated))
    masses, residual = [], []
    for i in range(cfg.num_layers):
        delta = np.linalg.norm(c, axis=1) + rho
        heads = attention_bounds(w, s, i, delta)
        alpha, radius = heads.mass, heads.radius
        attn = np.einsum("tde,te->td", s.attn_jacobian[:, i], c) + heads.centre
        if parallel:
            lip, curve = mlp_constants(w, s, i, delta, s.spread_in[:, i])
            c, rho = _tighter(
                (np.einsum("tde,te->td", s.block_jacobian[:, i], c) + attn,
                 s.step_norm[:, i] * rho + radius + curve * delta ** 2 / 2),
                (attn, lip * delta + s.attn_norm[:, i] * rho + radius))
        else:
            c, rho = c + attn, s.step_norm[:, i] * rho + radius
            delta = np.linalg.norm(c, axis=1) + rho
            lip, curve = mlp_constants(w, s, i, delta, s.spread_mid[:, i])
            c, rho = _tighter(
                (np.einsum("tde,te->td", s.block_jacobian[:, i], c),
                 s.block_norm[:, i] * rho + curve * delta ** 2 / 2),
                (np.zeros_like(c), lip * delta))
        rho = np.nan_to_num(rho, nan=np.inf)
        masses.append(alpha)
        residual.append(np.linalg.norm(c, axis=1) + rho)
    delta = residual[-1]
    centre = np.einsum("td,vd->tv", np.einsum("tde,te->td", s.final_jacobian, c), w.head_rows)
    floor = s.spread_final - delta / math.sqrt(D)
    logits = (np.abs(centre).max(1) + w.head * rho / np.sqrt(s.spread_final ** 2 + eps)
              + norm_curvature(w.final, floor, eps, D) * delta ** 2 / 2 * w.head_norm)
    return Bound(np.stack(masses, 1), np.stack(residual, 1), np.nan_to_num(logits, nan=np.inf))


@dataclasses.dataclass(frozen=True)
class Certificate:
    """The bound along a trace against the reference margins: step t is certified when
    bound.logits < margin/2, which forces the real argmax to equal f_{P,t−1}(x_{n+t})."""

    bound: Bound
    margin: np.ndarray
    markov_next: np.ndarray

    @property
    def certified(self) -> np.ndarray:
        return self.bound.logits < self.margin / 2

    @property
    def horizon(self) -> int:
        """Leading certified steps: the trace provably equals the Markov orbit that long."""
        bad = ~self.certified
        return int(np.argmax(bad)) if bad.any() else len(bad)


def certify(model: Model, prompt, trace, prefix: Prefix | None = None,
            weights: WeightConstants | None = None) -> Certificate:
    """The multi-layer bound along a trace (proofs/multi_layer.md) and its certified horizon."""
    stats = markov_stats(model, prompt, trace, prefix)
    bound = perturbation_bound(weights or weight_constants(model), stats)
    return Certificate(bound, stats.margin, stats.next)


# --- the weight-only bound: n₀ of the degeneration theorem ---------------------------------------
