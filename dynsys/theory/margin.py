"""The margin certificate: a bound on the change of each reference margin ℓ_top − ℓ_v, pulled
back through the Jacobians at a propagated centre (proofs/multi_layer.md, "The margin bound").

At step t the real and the reference run differ by x_l − x′_l at the query position. It is
enclosed stage by stage (the attention, then the MLP of every block) as

    x_l − x′_l = c_l + Σ_k Q_k u_k,    ‖u_k‖ ≤ e_k,    Q_k = M_K ⋯ M_{k+1},

with M_k the stage's Jacobian at the centre x̃ = x′ + c (I + J̃_A; B_c = DΦ(x̃); B_c + J̃_A with
a parallel residual). An attention stage maps c ↦ c + [h_P(x̃) − h_P(x′)] + S̃, h_P the
attention over the prompt and the own key and value (evaluated in float64), S̃ the generated
keys' contribution at the midpoint weights, and adds a source bounded by Lemmas 3–4 about x̃
(`_anchored`) with the sources' radius ρ, whose score changes are bounded per key by the
support function of the sources (`_support`). An MLP stage Φ(x) = x + MLP(N₂ x) maps the
centre exactly, c ↦ Φ(x′ + c) − Φ(x′) (evaluated in float64), and the sources through B_c,
adding one of size
½ κ ρ² (Lemma 5.3's κ at the centre, ρ ≥ ‖Σ Q_k u_k‖): linearised at the centre, no cross term
κ ρ ‖c‖ is left. Or, whichever is smaller, the global Lipschitz step (c = 0, one fresh source
Lip·δ), as in `perturbation_bound`. For g_v = w_top − w_v (top the reference argmax) and the
final norm N_f the same way, J_f = DN_f(x′_L + c_L),

    Δ(ℓ_top − ℓ_v) = g_vᵀ (N_f(x′_L + c_L) − N_f(x′_L)) + r_v,
    |r_v| ≤ Σ_k ‖Q_kᵀ J_fᵀ g_v‖ e_k + ½ κ_f ρ_L² ‖g_v‖ + ε_v,

where the pulled-back covector Q_kᵀ J_fᵀ g_v is one vector–Jacobian product per token and
source (exact, no operator norm), and ε_v the float32 slack below. No factor 2: each margin
is compared with its own change, not with max_v |Δℓ_v|. The sizes need δ_l ≥ ‖x_l − x′_l‖
entering each stage: δ_l = ‖c_l‖ + min(ρ_l, Σ_k ‖Q_k‖_F e_k), ρ_l the old recursion's
radius (products of operator norms); both are upper bounds.

Rigorous (`MarginBound.lower`, `.horizon`): in exact arithmetic the real margin is
≥ m′_v + centre_v − radius_v, given the reference run. Estimate (`MarginBound.estimate`,
`.estimated_horizon`): m′_v + centre_v, the margin of the propagated centre with every
remainder dropped (exact through the prompt's attention and the MLPs, the generated keys at
midpoint weights); not a bound.

Rounding: the bound is evaluated in float64 (a relative slack F64 per float64 branch
evaluation) from the reference quantities (float64 from the float32 model's reference
streams and logits, dynsys.theory.reference), and each margin gets an explicit
float32 slack ε_v = 2 γ_D r_f (‖w_top‖ + ‖w_v‖), γ_D = D u/(1 − D u), u = 2⁻²⁴,
r_f = sup ‖N_f(x)‖: the worst-case error of the LM head's length-D dot products
(|fl(wᵀy) − wᵀy| ≤ γ_D ‖w‖ ‖y‖) in both runs. The rounding of the layers before the head is
not bounded a priori; the tests check ε_v against its measured level (the real/reference margin
change at step 1, exactly 0 in exact arithmetic).

Only tokens that the cheap bound (‖J_fᵀ g_v‖ ρ_L in place of the pulled-back sum) cannot
certify, and the NEAR tokens of smallest reference margin, get the pull-back."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig
from dynsys.decode import logits as head_logits
from dynsys.decode import run as run_model
from dynsys.nn import Model
from dynsys.nn.cache import Prefix, empty_rows
from dynsys.theory import exact
from dynsys.theory.certificate import attention_bounds, mlp_constants
from dynsys.theory.constants import WeightConstants, weight_constants
from dynsys.theory.dilution import check_trace
from dynsys.theory.exact import F64, check_float32, on_host
from dynsys.theory.lemmas import norm_curvature
from dynsys.theory.reference import (
    MarkovStats,
    attention_stats,
    markov_stats,
    mlp_jacobians,
    norm_jacobian,
)

UNIT = 2.0 ** -24  # float32 unit roundoff
NEAR = 8  # tokens of smallest reference margin always pulled back (and compared in the ratios)


@dataclasses.dataclass(frozen=True)
class MarginBound:
    """Per step t (G), layer (L) and token v (V).

    top [G]: the reference argmax f_{P,t−1}(x_{n+t}). residual [G, L]: δ_l ≥ ‖x_l − x′_l‖
    leaving block l. margin [G, V]: reference margins m′_v = ℓ′_top − ℓ′_v. centre [G, V]:
    g_vᵀ (N_f(x′_L + c_L) − N_f(x′_L)), the propagated centre's change of m′_v. radius
    [G, V]: the bound on |Δm_v − centre_v|, float32 slack included. pulled [G, V]: where the
    radius comes from the pull-back (elsewhere the cheap bound certifies). near [G, NEAR]: the
    tokens ≠ top of smallest reference margin. Entries at top are 0 (its margin with itself).
    """

    top: np.ndarray
    residual: np.ndarray
    margin: np.ndarray
    centre: np.ndarray
    radius: np.ndarray
    pulled: np.ndarray
    near: np.ndarray

    def _off_top(self, x: np.ndarray) -> np.ndarray:
        out = x.copy()
        out[np.arange(len(x)), self.top] = np.inf
        return out

    @property
    def lower(self) -> np.ndarray:
        """[G, V] rigorous lower bound on the real margin ℓ_top − ℓ_v (+inf at top)."""
        return self._off_top(self.margin + self.centre - self.radius)

    @property
    def estimate(self) -> np.ndarray:
        """[G, V] estimate of the real margin: the centre's, remainders dropped (not a bound)."""
        return self._off_top(self.margin + self.centre)

    @property
    def change(self) -> np.ndarray:
        """[G, V] rigorous bound on |Δ(ℓ_top − ℓ_v)| (0 at top)."""
        return np.abs(self.centre) + self.radius

    @property
    def rigorous(self) -> np.ndarray:
        """[G] bool: every real margin is provably > 0, so the real argmax is top (proved, in
        exact arithmetic given the reference run; with the float32 slack of the LM head)."""
        return (self.lower > 0).all(1)

    @property
    def estimated(self) -> np.ndarray:
        """[G] bool: the estimate keeps every margin > 0 (not proved)."""
        return (self.estimate > 0).all(1)

    @property
    def horizon(self) -> int:
        """Leading rigorously certified steps: the trace provably follows f_{P,t−1} that long."""
        return _leading(self.rigorous)

    @property
    def estimated_horizon(self) -> int:
        """Leading steps where the estimate keeps every margin > 0 (not proved)."""
        return _leading(self.estimated)


def _leading(ok: np.ndarray) -> int:
    return int(np.argmax(~ok)) if (~ok).any() else len(ok)


def _frobenius(q: np.ndarray) -> np.ndarray:
    """[K, G] ‖Q_k‖_F of the sources' maps [K, G, D, D] (≥ the spectral norm)."""
    return np.sqrt(np.einsum("ktde,ktde->kt", q, q))


def _enclosure(w: WeightConstants, s: MarkovStats):
    """The stage-by-stage enclosure x_L − x′_L = c_L + Σ_k Q_k u_k, ‖u_k‖ ≤ e_k: returns c_L
    [G, D], the maps Q [K, G, D, D], the sizes e [K, G], δ_L [G] and δ_l per block [G, L]."""
    cfg = w.config
    G, D = len(s.generated), cfg.hidden_size
    eye = np.broadcast_to(np.eye(D), (1, G, D, D))
    c, rho = np.zeros((G, D)), np.zeros(G)
    q, e = np.zeros((0, G, D, D)), np.zeros((0, G))

    def push(m, fresh):  # the sources through the map m [G, D, D], then a fresh one of size fresh
        return np.concatenate([m[None] @ q, eye]), np.concatenate([e, fresh[None]])

    def delta():
        with np.errstate(invalid="ignore"):
            ball = np.sum(np.nan_to_num(_frobenius(q) * e, nan=np.inf), 0)
        return np.linalg.norm(c, axis=1) + np.minimum(rho, ball)

    residual = []
    for i in range(cfg.num_layers):
        d = delta()
        # the attention at the centre: h(x′ + c + u) − h(x′) = [h(x′ + c) − h(x′)] + J̃_A u + S̃ + r
        ball = d - np.linalg.norm(c, axis=1)
        anchor, ja = _anchored(w, s, i, c)
        heads = attention_bounds(w, anchor, i, ball, _support(w, anchor, i, q, e, ball))
        source = anchor.attn_output[:, i] - s.attn_output[:, i] + heads.centre
        radius = heads.radius + _f64(anchor.attn_output[:, i], s.attn_output[:, i])
        if not cfg.parallel_residual:  # the attention stage: M = I + J̃_A
            m = ja + np.eye(D)
            c, rho = c + source, _opnorm(m) * rho + radius
            q, e = push(m, radius)
            d = delta()
        # Φ(x′ + c + u) − Φ(x′) = [Φ(x′ + c) − Φ(x′)] + B_c u + (≤ ½ κ ρ²), B_c = DΦ(x′ + c)
        x = s.mlp_input[:, i]
        jb, jm, _ = _mlp_jacobians(cfg, w.block_params[i], x + c)
        lip, curve = mlp_constants(w, s, i, d, s.spread_in[:, i] if cfg.parallel_residual
                                    else s.spread_mid[:, i], jm)
        ball = d - np.linalg.norm(c, axis=1)
        branch = w.mlp_branch(i, x)
        exact = c + w.mlp_branch(i, x + c) - branch
        fresh = curve * ball * ball / 2 + _f64(x, branch)
        if cfg.parallel_residual:
            m = jb + ja
            centre = exact + source
            fresh = fresh + radius
            crude = lip * d + _opnorm(ja) * ball + radius
            start = source  # the Lipschitz step's centre
        else:
            m, centre, crude = jb, exact, lip * d
            start = np.zeros_like(c)
        kept = _opnorm(m)
        fallback = (np.linalg.norm(centre, axis=1) + kept * rho + fresh
                    > np.linalg.norm(start, axis=1) + crude)
        q, e = push(m, np.where(fallback, crude, fresh))
        c = np.where(fallback[:, None], start, centre)
        rho = np.nan_to_num(np.where(fallback, crude, kept * rho + fresh), nan=np.inf)
        e[:-1, fallback] = 0.0  # the fresh Lipschitz source replaces everything before it
        e = np.nan_to_num(e, nan=np.inf)
        residual.append(delta())
    return c, q, e, residual[-1], np.stack(residual, 1)


_attention_at = on_host(jax.jit(attention_stats, static_argnames="cfg"))
_spread = on_host(exact.spread)
ANCHORED = ("query", "self_key", "prefix_lse", "self_score", "self_value", "covariance",
            "prefix_score", "prefix_dist", "own_key", "query_jacobian", "cross_score",
            "source_norm", "source", "attn_output")


def _anchored(w: WeightConstants, s: MarkovStats, i: int, c: np.ndarray):
    """The stats with block i's attention quantities recomputed (float64) at the centres
    x̃ = x′ + c [G, D] instead of the reference streams x′: Lemmas 3–4 about x̃, each step's
    own key and value at its x̃ standing for the generated key's. Returns them and J̃_A [G, D, D],
    the attention output's derivative at x̃ along the query path."""
    x = s.block_input[:, i] + c
    a = _attention_at(w.config, w.block_params[i], s.prompt_keys[i].swapaxes(-1, -2),
                      s.prompt_values[i], s.prompt_valid, x, s.positions)

    def at(name, value):
        out = getattr(s, name).copy()
        out[:, i] = value
        return out

    fields = {name: at(name, a[name]) for name in ANCHORED}
    anchor = dataclasses.replace(s, spread_in=at("spread_in", _spread(w.config, x)), **fields)
    return anchor, a["attn_jacobian"]


def _support(w: WeightConstants, s: MarkovStats, i: int, q, e, d) -> np.ndarray:
    """[G, N, S + G] directional score bounds at block i about the centre x̃ (s anchored
    there, `_anchored`): for the prompt's keys k_j and every step's own key k̃_i, with J̃_q the
    query's Jacobian at x̃ and ½ κ₁ ρ² Lemma 1.2's remainder of the norm,

        |⟨q − q̃, k⟩| ≤ Σ_k ‖Q_kᵀ J̃_qᵀ k‖ e_k + ½ ‖W_q‖ κ₁ ρ² ‖k‖      (over √H),

    the support function of the sources Σ_k Q_k u_k, ‖u_k‖ ≤ e_k, of the enclosure entering the
    block (ρ = d ≥ their norm). ‖Q_kᵀ J̃_qᵀ k‖ is read from the Gram matrix A Aᵀ, A = J̃_q Q_k
    [H, D] per source, head and step, with a float64 slack F64 ‖k‖² ‖A‖_F² under the root."""
    cfg = w.config
    D, H = cfg.hidden_size, cfg.head_dim
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    keys = np.concatenate([s.prompt_keys[i][kv], s.own_key[:, i][:, kv].swapaxes(0, 1)], 1)
    size = np.linalg.norm(keys, axis=-1)  # [N, S + G]
    jq = s.query_jacobian[:, i] / math.sqrt(H)  # [G, N, H, D]
    sources = np.empty((len(jq), *size.shape))
    with np.errstate(invalid="ignore"):
        for t in range(len(jq)):
            a = jq[t][None] @ q[:, t][:, None]  # [K, N, H, D]
            gram = a @ a.swapaxes(-1, -2)  # [K, N, H, H]
            quad = np.sum((keys[None] @ gram) * keys[None], -1)  # [K, N, S + G]
            frob = np.einsum("knhd,knhd->kn", a, a)[..., None]
            norm = np.sqrt(np.maximum(quad, 0.0) + F64 * frob * size ** 2)
            sources[t] = np.nan_to_num(np.sum(norm * e[:, t, None, None], 0), nan=np.inf)
    floor = s.spread_in[:, i] - d / math.sqrt(D)
    curve = (w.query[i] * (norm_curvature(w.norm1[i], floor, cfg.norm_eps, D) * d * d / 2)[:, None]
             / math.sqrt(H))[..., None] * size[None]
    return sources + curve


_mlp_jacobians = on_host(jax.jit(mlp_jacobians, static_argnames="cfg"))
_norm_jacobian = on_host(jax.jit(norm_jacobian, static_argnames="cfg"))


def _opnorm(m: np.ndarray) -> np.ndarray:
    """[G] spectral norms of [G, D, D] (float64 SVD), widened by 1 + F64."""
    return np.linalg.norm(m, 2, axis=(1, 2)) * (1 + F64)


def _f64(*streams: np.ndarray) -> np.ndarray:
    """[G] slack for evaluating a branch in float64 and differencing it, F64 times the norms of
    its input and output streams [G, D]."""
    return F64 * sum(np.linalg.norm(x, axis=-1) for x in streams)


def margin_bound(w: WeightConstants, s: MarkovStats) -> MarginBound:
    """The margin bound of the module docstring along a trace, all steps at once (float64).
    An overflow gives ∞ (a vacuous but valid radius); a 0 · ∞ is read as ∞."""
    check_float32(w.config, "margin_bound")
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _margin_bound(w, s)


def _margin_bound(w: WeightConstants, s: MarkovStats) -> MarginBound:
    cfg = w.config
    D, eps = cfg.hidden_size, cfg.norm_eps
    c, q, e, delta, residual = _enclosure(w, s)
    G, V = s.logits.shape
    rows = np.arange(G)
    top = s.next
    logits = np.asarray(s.logits, np.float64)
    margin = logits[rows, top][:, None] - logits  # [G, V]
    head = np.asarray(w.head_rows, np.float64)  # [V, D]
    g = head[top][:, None, :] - head[None]  # [G, V, D]: g_v = w_top − w_v
    x = s.final_input
    normed = w.final_norm(x + c) - w.final_norm(x)  # the centre through N_f, float64
    centre = np.einsum("tvd,td->tv", g, normed)
    pulled_back = g @ _norm_jacobian(cfg, w.final_params, x + c)  # rows (J_f(x′ + c)ᵀ g_v)ᵀ
    g_norm = np.linalg.norm(g, axis=-1)
    ball = delta - np.linalg.norm(c, axis=1)  # ‖u‖ ≤ ball
    floor = s.spread_final - delta / math.sqrt(D)
    # |g_vᵀ (N_f(x′+c+u) − N_f(x′+c) − J_f(x′+c) u)| ≤ ½ κ_f ρ² ‖g_v‖
    curve = (norm_curvature(w.final, floor, eps, D) * ball * ball / 2
             + _f64(x, x + c) * w.final / np.sqrt(eps))[:, None] * g_norm
    gamma = D * UNIT / (1 - D * UNIT)
    row_norm = np.linalg.norm(head, axis=1)
    rounding = 2 * gamma * w.final_radius * (row_norm[top][:, None] + row_norm[None])
    radius = np.linalg.norm(pulled_back, axis=-1) * ball[:, None] + curve + rounding
    order = np.argsort(np.where(np.arange(V)[None] == top[:, None], np.inf, margin), axis=1)
    near = order[:, :NEAR]
    pulled = margin + centre - radius <= 0
    pulled[rows[:, None], near] = True
    pulled[rows, top] = False
    for t in range(G):  # one pull-back per source and pulled token
        tokens = np.flatnonzero(pulled[t])
        y = pulled_back[t, tokens]  # [C, D]
        exact = np.sum(np.linalg.norm(y[None] @ q[:, t], axis=-1) * e[:, t, None], 0)
        exact = np.nan_to_num(exact, nan=np.inf)
        radius[t, tokens] = np.minimum(radius[t, tokens],
                                       exact + curve[t, tokens] + rounding[t, tokens])
    radius[rows, top] = 0.0
    centre[rows, top] = 0.0
    return MarginBound(top=top, residual=residual, margin=margin, centre=centre,
                       radius=np.nan_to_num(radius, nan=np.inf), pulled=pulled, near=near)


def certify_margin(model: Model, prompt, trace, prefix: Prefix | None = None,
                   weights: WeightConstants | None = None) -> MarginBound:
    """The margin bound along a trace (any tokens): its `horizon` is the rigorous certified
    horizon, `estimated_horizon` the centre estimate's (not proved)."""
    stats = markov_stats(model, prompt, trace, prefix)
    return margin_bound(weights or weight_constants(model), stats)


# --- the measured margin change -----------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def _both_logits(cfg: ModelConfig, params, prefix: Prefix, trace, positions):
    G = trace.shape[0]
    real = run_model(cfg, params, trace[None], positions[None], empty_rows(cfg, 1, G),
                     jnp.ones((1, G), bool), prefix)
    ref = run_model(cfg, params, trace[:, None], positions[:, None], empty_rows(cfg, G, 1),
                    jnp.ones((G, 1), bool), prefix)
    return (head_logits(cfg, params, real.hidden)[0],
            head_logits(cfg, params, ref.hidden)[:, 0])


def margin_change(model: Model, prompt, trace, prefix: Prefix | None = None) -> np.ndarray:
    """[G, V] measured Δ(ℓ_top − ℓ_v), real minus reference step, top the reference argmax
    (float32 model, differences in float64): what `MarginBound.centre` ± `radius` encloses."""
    _, trace, prefix, positions = check_trace(model, prompt, trace, prefix)
    real, ref = (np.asarray(x, np.float64) for x in _both_logits(
        model.config, model.params, prefix, jnp.asarray(trace), jnp.asarray(positions)))
    diff = real - ref
    top = ref.argmax(1)
    return diff[np.arange(len(top)), top][:, None] - diff
