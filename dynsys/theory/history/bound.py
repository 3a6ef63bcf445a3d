"""The history-uniform certificate (proofs/history_uniform.md): for EVERY history h ∈ V^r of
generated tokens, argmax logits(P, h, x) = f_{P,r}(x), the reference step (P followed
directly by x at position n + r).

The query's stream is enclosed in affine forms (dynsys.theory.history.domain) layer by layer,
from the embedding of x (a point). In each attention block, per head:

- the prompt's keys and values are the prefix's (causality: they do not depend on h);
- o_h, the attention over the prompt and the query's own key, is linearised at the form's
  centre (q_c, k_c, v_c) with Lemma 3 of proofs/multi_layer.md in its per-key form (any two
  evaluations, prompt fixed): o_h ∈ o_c + C (q − q_c)/√H + B(T), C = Σ_P a_j (v_j − o_c) k_jᵀ,
  the linear term applied to q's form (exact), T the lemma's remainder from directional score
  bounds (Lemma H5): |⟨q − q_c, k_j⟩| ≤ min(√(k_jᵀQk_j), d_q ‖k_j‖), Q the q form's outer
  ellipsoid (domain.outer_ellipsoid), and the own key's score change from the exact support of
  q_cᵀk + k_cᵀq plus d_q d_k;
- the r generated keys have k = R_p(W_k u + b_k), v = W_v u + b_v with u a norm output,
  ‖u/γ‖ < √D: the score of the key at position p is ≤ [√D ‖γ ⊙ W_kᵀ R_pᵀ q_c‖ +
  ⟨R_pᵀ q_c, b_k⟩ + d_q R_k]/√H (R_k = √D ‖W_k diag γ‖ + ‖b_k‖; at layer 0 the exact maximum
  over the vocabulary), every value lies in the ellipsoid b_v + S·ball, S = (D W_v diag γ²
  W_vᵀ)^½ (at layer 0, where smaller, the ball about the vocabulary's mean value) (Lemma H1);
  at positions n + i, i < S, the score bound is also the largest over t ∈ V of the balls of
  `Generated` (Lemma H4: the key of the query (t, i), a dynamic programme over positions),
  whichever is smaller, and with r ≤ S every value lies in the ball about their values' mean
  where smaller; their total weight is w ≤ w_max = σ(LSE_i s_i − low),
  low ≤ log(Σ_P e^{z_j} + e^{z_s}), and o = o_h + w (v̄ − o_h) lies in o_h + w_max S·ball +
  the segment {w (v₀ − o_c)} + a ball of radius w_max e, e ≥ ‖o_h − o_c‖.

The norms, SiLU and the gate product go through the domain's relaxations. At the end the
margins ℓ_top − ℓ_v = (w_top − w_v)ᵀ N_f(x_L) are bounded by the support function of the final
form in the direction w_top − w_v (exact for the form), less the float32 LM-head slack
2 γ_D r_f (‖w_top‖ + ‖w_v‖) of dynsys.theory.margin. All in float64 (jax x64, scoped), each
stage widened by F64 = 2⁻⁴⁰ relative."""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_int, check_tokens
from dynsys.config import ModelConfig
from dynsys.decode import step
from dynsys.decode.engine import prefix_for
from dynsys.nn import Model
from dynsys.nn.cache import Prefix, bucket
from dynsys.nn.rope import rope_angles, rotate
from dynsys.theory.exact import check_float32
from dynsys.theory.history import domain as dm
from dynsys.theory.history.generated import Generated, stage_one, stage_zero
from dynsys.theory.history.weights import constants
from dynsys.theory.margin import NEAR

FAMILIES = ("llama", "qwen2")  # RMSNorm, SwiGLU, sequential residual
BOXES = 64  # box symbols kept per stream coordinate before they are merged (`_settle`)
CHUNK = 8  # queries enclosed at once (memory: a form is D × (symbols) per query)


@dataclasses.dataclass(frozen=True)
class HistoryBound:
    """The certificate for B queries (token x at position n + r after r arbitrary generated
    tokens), L layers, N heads, model dim D, vocabulary V; float64 numpy.

    tokens, r, top [B]: the query token, its number of generated keys and the reference
    argmax f_{P,r}(x) (the model's float32 step). margin [B, V]: reference margins
    ℓ′_top − ℓ′_v. lower, upper [B, V]: bounds on ℓ_top − ℓ_v valid for every history (the
    float32 LM-head slack included); lower is +inf and upper 0 at top. centre, radius
    [B, L + 1, D]: the enclosure of the query's stream entering block l (l < L) and the final
    norm (l = L): every history's stream lies in centre ± radius coordinatewise. mass [B, L, N]:
    w_max ≥ the generated keys' total attention weight."""

    tokens: np.ndarray
    r: np.ndarray
    top: np.ndarray
    margin: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    centre: np.ndarray
    radius: np.ndarray
    mass: np.ndarray

    @property
    def certified(self) -> np.ndarray:
        """[B] bool: every margin's lower bound is > 0, so for every history the argmax is top."""
        return (self.lower > 0).all(1)

    @property
    def worst(self) -> np.ndarray:
        """[B] the least certified margin lower bound, min_v lower (≤ the reference margin)."""
        return self.lower.min(1)

    @property
    def change(self) -> np.ndarray:
        """[B, V] a bound on |Δ(ℓ_top − ℓ_v)| against the reference over every history."""
        out = np.maximum(self.margin - self.lower, self.upper - self.margin)
        out[np.arange(len(self.top)), self.top] = 0.0
        return out

    @property
    def near(self) -> np.ndarray:
        """[B, NEAR] the tokens ≠ top of smallest reference margin."""
        m = self.margin.copy()
        m[np.arange(len(self.top)), self.top] = np.inf
        return np.argsort(m, 1)[:, :NEAR]


@dataclasses.dataclass(frozen=True)
class HistoryHorizon:
    """The Markov orbit x_1 = start, x_{t+1} = f_{P,t−1}(x_t) [steps + 1], the certificate of
    each (x_t, r = t − 1) (`bound`, rows t = 1..steps) and the certified history-uniform
    horizon: the leading certified steps (then the greedy trace from x_1 is the orbit there)."""

    orbit: np.ndarray
    bound: HistoryBound
    horizon: int


def _rope(cfg: ModelConfig, a, pos):
    """R_pos applied along axis 0 of a (the head dimension), float64 cos/sin of the model's
    float32 angles (the exact-arithmetic model's rotation)."""
    if not cfg.use_rope:
        return a
    angles = rope_angles(pos, cfg).astype(jnp.float64)
    return jnp.moveaxis(rotate(jnp.moveaxis(a, 0, -1), angles, cfg.rotary_dim), -1, 0)


def _rope_form(cfg, f, pos):
    return tuple(_rope(cfg, a, pos) for a in f)


def _norm(f, gamma, eps):
    """RMSNorm γ ⊙ y (‖y‖²/D + ε)^(−1/2) on a form y = c + δ, ‖δ‖ ≤ ρ: ‖y‖² = ‖c‖² + 2cᵀδ + q,
    q ∈ [0, ρ²] (a new symbol), so t = ‖y‖²/D + ε is a form whose range is also clipped to
    [(‖c‖ − ρ)₊²/D + ε, (‖c‖ + ρ)²/D + ε]; then rsqrt relaxed on that range, and the product
    y · s with its quadratic term δ δs in a ball of radius ρ rad_s."""
    c = f[0]
    D = c.shape[0]
    rho, size = dm.norm_radius(f), jnp.linalg.norm(c)
    quad = rho * rho / (2 * D)
    t = dm.linear(f, (2 * c / D)[None], eps - size * size / D + quad)
    t = dm.widen(t, jnp.reshape(quad + dm.F64 * (size * size / D + quad), (1,)))
    r = dm.radius(t)
    lo = jnp.maximum(jnp.maximum(t[0] - r, jnp.maximum(size - rho, 0.0) ** 2 / D + eps), eps)
    hi = jnp.maximum(jnp.minimum(t[0] + r, (size + rho) ** 2 / D + eps), lo)
    s = dm.relaxed(t, *dm.relax_rsqrt(lo, hi))
    return dm.scale(dm.product(f, s, ball=True), gamma)


def _settle(f, slack):
    """A residual sum's form with the stage's float64 slack [D] as a new box symbol per
    coordinate; its box symbols are merged into one per coordinate (`domain.reduce`) only once
    they number more than BOXES × D: merging loses the cancellations of the next dense maps
    (|W_g W_d| against |W_g| |W_d|), keeping them costs memory."""
    if f[2].shape[1] + f[0].shape[0] > BOXES * f[0].shape[0]:
        return dm.reduce(f, slack)
    return dm.widen(f, slack)


def _slack(a, b):
    """[D] the float64 slack of one stage from stream form a to b, relative F64."""
    size = sum(jnp.linalg.norm(f[0]) + jnp.linalg.norm(dm.radius(f)) for f in (a, b))
    return jnp.full(a[0].shape, dm.F64 * size)


def _directional(keys, ellipsoid, dq):
    """[...] bounds on |⟨q − q_c, k⟩| for keys [..., H]: the smaller of √(kᵀQk) (Q the query
    form's outer ellipsoid, `domain.outer_ellipsoid`) and d_q ‖k‖ (Cauchy–Schwarz)."""
    quad = jnp.einsum("...h,hk,...k->...", keys, ellipsoid, keys)
    return jnp.minimum(jnp.sqrt(jnp.maximum(quad, 0.0)), dq * jnp.linalg.norm(keys, axis=-1))


def _head(cfg, u, pos, gen_pos, gen_mask, valid, w, first):
    """One query head: its output form o_h's linearisation plus the generated keys' segment
    (its own box symbol), the two fresh ℓ2 blocks [H, 2, H] (w_max S for the values, and the
    remainder T + w_max e as a ball) and w_max. w: this head's weights and constants; the
    prompt's keys and values fill the prefix's capacity S, valid [S] marks the prompt's slots
    (the rest have score −∞, so weight exactly 0, and zero keys and values). Also the query's
    own key (rotated) and value as balls: centres [H] and ℓ2 radii, for `Generated`."""
    H, D = cfg.head_dim, cfg.hidden_size
    root = math.sqrt(H)
    q = _rope_form(cfg, dm.linear(u, w["wq"], w["bq"]), pos)
    k = _rope_form(cfg, dm.linear(u, w["wk"], w["bk"]), pos)
    v = dm.linear(u, w["wv"], w["bv"])
    qc, kc, vc = q[0], k[0], v[0]
    dq, dk, dv = dm.norm_radius(q), dm.norm_radius(k), dm.norm_radius(v)
    kp, vp = w["kp"], w["vp"]  # [n, H]
    zp, zs = jnp.where(valid, kp @ qc / root, -jnp.inf), qc @ kc / root
    a = jax.nn.softmax(jnp.append(zp, zs))
    ap, a_s = a[:-1], a[-1]
    o = ap @ vp + a_s * vc
    dev = vp - o
    cov = (ap[:, None] * dev).T @ kp  # C = Σ_P a_j (v_j − o) k_jᵀ
    d = jnp.linalg.norm(dev, axis=1)
    sv = jnp.linalg.norm(vc - o)
    # Lemma 3 (proofs/multi_layer.md) with the centre as the reference point and directional
    # score bounds (Lemma H5): b_j ≥ |⟨q − q_c, k_j⟩|/√H from the query's outer ellipsoid Q,
    # ζ_s ≥ |z_s − z_s^c| from the exact support of q_cᵀδk + k_cᵀδq (shared symbols) + d_q d_k
    ellipsoid = dm.outer_ellipsoid(q)
    b = _directional(kp, ellipsoid, dq) / root
    own_score = dm.add(dm.linear(k, qc[None]), dm.linear(q, kc[None]))
    zeta_s = jnp.minimum(dm.radius(own_score)[0] + dq * dk,
                         dq * jnp.linalg.norm(kc) + (jnp.linalg.norm(qc) + dq) * dk) / root
    zeta_s = zeta_s * (1 + dm.F64)
    eb = jnp.expm1(b)
    m1, m2 = ap @ ((eb - b) * d), ap @ (eb * d)
    z_lo = ap @ jnp.exp(-b) + a_s * jnp.exp(-zeta_s)
    z_hi = ap @ jnp.exp(b) + a_s * jnp.exp(zeta_s)
    zt = jnp.maximum(1 / z_lo - 1, 1 - 1 / z_hi)
    zts = jnp.maximum(jnp.exp(zeta_s) / z_lo - 1, 1 - jnp.exp(-zeta_s) / z_hi)
    lse_lo = jax.nn.logsumexp(zp - b)
    a_hat = jax.nn.sigmoid(zs + zeta_s - lse_lo)
    rest = m1 + zt * (a_s * sv + m2) + a_s * zts * sv + a_hat * dv
    lin = dm.linear((jnp.zeros_like(qc), q[1], q[2]), cov / root)
    e = dm.norm_radius(lin) + rest
    # the generated keys: a score bound per position (Lemma H1, and Lemma H4 for the stages
    # of `Generated`, whichever is smaller), their total weight w ≤ w_max (Lemma H2)
    back = jax.vmap(lambda p: _rope(cfg, qc, -p))(gen_pos)  # [R, H]: R_pᵀ q_c
    if first:  # exact over the vocabulary's layer-0 keys k0 [V, H]
        best = (w["k0"] @ back.T).max(0) + dq * w["k0_max"]
    else:
        best = (math.sqrt(D) * jnp.linalg.norm((back @ w["wk"]) * w["gamma"], axis=1)
                + back @ w["bk"] + dq * w["rk"])
    keys = w["dk"]  # [S, V, H], rotated at n + i
    stages = (keys @ qc + (jnp.linalg.norm(qc) + dq) * w["dkr"]
              + _directional(keys, ellipsoid, dq)).max(1)
    S = min(keys.shape[0], best.shape[0])
    best = best.at[:S].min(stages[:S])
    s = jnp.where(gen_mask, jnp.minimum(best / root, 1e300), -jnp.inf)
    s = s + dm.F64 * (jnp.abs(jnp.where(gen_mask, s, 0.0)) + 1)
    low = jnp.logaddexp(lse_lo, zs - zeta_s)
    w_max = jax.nn.sigmoid(jax.nn.logsumexp(s) - low)
    # the values: with r ≤ S the ball of every value of stages < r where it is smaller
    r = gen_mask.sum()
    j = jnp.clip(r - 1, 0, w["dvm"].shape[0] - 1)
    ball_dp = w["dvr"][j]
    use = (r <= w["dvm"].shape[0]) & (ball_dp * math.sqrt(H) < jnp.linalg.norm(w["vs"]))
    v0 = jnp.where(use, w["dvm"][j], w["v0"])
    vs = jnp.where(use, ball_dp * jnp.eye(H), w["vs"])
    # o − o_h = w (v̄ − o_h), v̄ ∈ v₀ + S·(unit ball): = w S β + w (v₀ − o_c) − w (o_h − o_c)
    half = w_max / 2 * (v0 - o)
    segment = jax.nn.one_hot(w["index"], cfg.num_heads) * half[:, None]  # [H, N], own symbol
    ball = rest + w_max * e + dm.F64 * (jnp.linalg.norm(o) + e + jnp.linalg.norm(v0))
    blocks = jnp.stack([w_max * vs, ball * jnp.eye(H)], 1)  # [H, 2, H]
    own = (kc, dk + dm.F64 * (jnp.linalg.norm(kc) + dk), vc,
           dv + dm.F64 * (jnp.linalg.norm(vc) + dv))
    return (o + half, lin[1], jnp.concatenate([lin[2], segment], 1)), blocks, w_max, own


def _enclose(cfg: ModelConfig, weights, embed, pos, gen_pos, gen_mask, top):
    """One query: the lower and upper margin bounds [V], the stream enclosure [L + 1, D] (centre,
    radius), w_max [L, N] and its own keys and values (`_head`) [L, N, H] with their radii
    [L, N]. `weights`: float64 arrays (see `weights.constants`)."""
    valid = weights["valid"]
    H, eps = cfg.head_dim, cfg.norm_eps
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    x = dm.point(embed, H)
    centres, radii, masses, owns = [], [], [], []
    for i, lw in enumerate(weights["layers"]):
        centres.append(x[0])
        radii.append(dm.radius(x))
        u = _norm(x, lw["norm1"], eps)
        per_head = {key: lw[key] for key in ("wq", "bq")}
        per_head.update({key: lw[key][kv] for key in ("wk", "bk", "wv", "bv", "kp", "vp", "rk",
                                                      "v0", "vs", "dk", "dkr", "dvm",
                                                      "dvr")})
        if i == 0:
            per_head.update(k0=weights["k0"][:, kv].transpose(1, 0, 2),
                            k0_max=weights["k0_max"][kv])
        per_head["gamma"] = jnp.broadcast_to(lw["norm1"], (cfg.num_heads, cfg.hidden_size))
        per_head["index"] = jnp.arange(cfg.num_heads)
        heads, blocks, w_max, own = jax.vmap(functools.partial(
            _head, cfg, u, pos, gen_pos, gen_mask, valid, first=i == 0))(per_head)
        wo = lw["wo"]  # [D, N, H]
        attn = (jnp.einsum("dnh,nh->d", wo, heads[0]) + lw["bo"],
                jnp.einsum("dnh,nhjk->djk", wo, heads[1]), jnp.einsum("dnh,nhm->dm", wo, heads[2]))
        attn = dm.add_blocks(attn, jnp.einsum("dnh,nhjk->dnjk", wo, blocks).reshape(
            cfg.hidden_size, -1, H))
        mid = dm.add(x, attn)
        mid = _settle(mid, _slack(x, mid))
        y = _norm(mid, lw["norm2"], eps)
        gate = dm.elementwise(dm.linear(y, lw["wg"]), dm.relax_grid(dm.silu, 0.5))
        hidden = dm.product(gate, dm.linear(y, lw["wu"], lw["bu"]))
        out = dm.add(mid, dm.linear(hidden, lw["wd"], lw["bd"]))
        x = _settle(out, _slack(mid, out))
        masses.append(w_max)
        owns.append(own)
    centres.append(x[0])
    radii.append(dm.radius(x))
    y = _norm(x, weights["final"], eps)
    head = weights["head"]  # [V, D]
    c = head @ y[0] - head[top] @ y[0]  # (w_v − w_top)ᵀ c: minus the centre's margin
    g = jnp.einsum("vd,djh->vjh", head, y[1])
    g = g[top][None] - g
    xs = head @ y[2]
    xs = xs[top][None] - xs
    support = jnp.sqrt(jnp.sum(g * g, -1)).sum(-1) + jnp.abs(xs).sum(-1)
    rows = jnp.linalg.norm(head, axis=1)
    gd = jnp.linalg.norm(head[top][None] - head, axis=1)
    size = jnp.linalg.norm(y[0]) + jnp.linalg.norm(dm.radius(y))
    slack = weights["gamma_f32"] * weights["final_radius"] * (rows[top] + rows) + dm.F64 * gd * size
    lower, upper = -c - support - slack, -c + support + slack
    lower = jnp.where(jnp.isnan(lower), -jnp.inf, lower)  # a vacuous enclosure: ±∞, not NaN
    upper = jnp.where(jnp.isnan(upper), jnp.inf, upper)
    radii = jnp.where(jnp.isnan(jnp.stack(radii)), jnp.inf, jnp.stack(radii))
    own = tuple(jnp.stack(a) for a in zip(*owns))
    return lower, upper, jnp.stack(centres), radii, jnp.stack(masses), own


@functools.partial(jax.jit, static_argnames=("cfg",))
def _enclose_batch(cfg, weights, embed, pos, gen_pos, gen_mask, top):
    return jax.vmap(lambda *a: _enclose(cfg, weights, *a[:2], gen_pos, *a[2:]))(
        embed, pos, gen_mask, top)


def check_family(cfg: ModelConfig) -> None:
    check_float32(cfg, "history_bound")
    if cfg.family not in FAMILIES or cfg.parallel_residual or cfg.norm != "rms":
        raise ValueError(f"history_bound: family {cfg.family!r} is not supported (RMSNorm, "
                         f"SwiGLU, sequential residual only: {', '.join(FAMILIES)})")


def history_bound(model: Model, prompt, tokens, r, prefix: Prefix | None = None,
                  chunk: int = CHUNK, generated: Generated | None = None) -> HistoryBound:
    """The history-uniform certificate of each query token in `tokens` [B] at position n + r
    after r arbitrary generated tokens (r an int ≥ 0, or one per token). One compile per
    (prefix capacity bucket, bucket of max(r, stages), chunk, stages); `prefix` as
    `dynsys.decode.prefill(model, prompt)`. `generated`: the generated keys' stages
    (`generated_keys`), by default stage 0 alone (every token's key at position n, exact)."""
    cfg = model.config
    check_family(cfg)
    tokens = check_tokens(tokens, cfg.vocab_size, "tokens", ndim=1)
    rs = np.broadcast_to(np.asarray(r), tokens.shape)
    for value in np.unique(rs):
        check_int("r", value.item(), 0)
    prefix = prefix_for(model, prompt, prefix)
    n = int(prefix.length)
    pos = (n + rs).astype(np.int32)
    if pos.max() >= cfg.max_position_embeddings:
        raise ValueError(f"r={int(rs.max())} puts the query at position {int(pos.max())}, "
                         f"beyond max_position_embeddings={cfg.max_position_embeddings}")
    if generated is not None and generated.n != n:
        raise ValueError(f"generated keys of a prompt of length {generated.n}, not n={n}")
    ref = np.asarray(step(model, prefix, tokens[:, None], pos[:, None])[0][:, 0], np.float64)
    top = ref.argmax(1)
    margin = ref[np.arange(len(top)), top][:, None] - ref
    weights, embed = constants(model, prefix, n)
    if generated is None:
        generated = stage_zero(cfg, weights, embed, n)
    lower, upper, centre, radius, mass, _ = _run(cfg, weights, generated, generated.stages,
                                                 embed[tokens], n, rs, top, chunk)
    rows = np.arange(len(tokens))
    lower[rows, top], upper[rows, top], margin[rows, top] = np.inf, 0.0, 0.0
    return HistoryBound(tokens=tokens.astype(np.int64), r=rs.astype(np.int64), top=top,
                        margin=margin, lower=lower, upper=upper, centre=centre, radius=radius,
                        mass=mass)


def _run(cfg: ModelConfig, weights: dict, generated: Generated, stages: int, embed, n: int, rs,
         top, chunk: int) -> list:
    """`_enclose` of the queries embed [B, D] at positions n + rs [B] (top [B] their reference
    argmax) with the generated keys' stages padded to `stages` rows (a stage never read by a
    query with r ≤ its index) and at least `stages` generated positions (masked): one compile
    for every stage of `generated_keys` and the queries with r ≤ stages after it; in chunks,
    numpy outputs."""
    tables = generated.tables(stages)
    weights = dict(weights, layers=[dict(lw, **t) for lw, t in zip(weights["layers"], tables)])
    R = bucket(max(int(rs.max()), stages), 1)
    gen_pos = n + np.arange(R)
    mask = np.arange(R)[None] < rs[:, None]
    B = len(embed)
    pad = -(-B // chunk) * chunk - B
    args = [np.concatenate([a, np.repeat(a[:1], pad, 0)]) for a in
            (embed, (n + rs).astype(np.int32), mask, top)]
    parts = []
    with jax.enable_x64(True):
        w = jax.tree_util.tree_map(jnp.asarray, weights)
        for s in range(0, B + pad, chunk):
            out = _enclose_batch(cfg, w, *(jnp.asarray(a[s:s + chunk]) for a in args[:2]),
                                 jnp.asarray(gen_pos), *(jnp.asarray(a[s:s + chunk])
                                                         for a in args[2:]))
            parts.append(jax.tree_util.tree_map(np.asarray, out))
    return jax.tree_util.tree_map(lambda *x: np.concatenate(x)[:B], *parts)


def generated_keys(model: Model, prompt, stages: int, prefix: Prefix | None = None,
                   chunk: int = CHUNK, exhaustive: bool = False) -> Generated:
    """The dynamic programme of Lemma H4: stage 0 (every token at position n, exact), then for
    i = 1..stages − 1 the enclosures of all V queries (t, i) with the stages before it, their
    own keys and values per kv head: (stages − 1) V enclosures. With `exhaustive`, stage 1 is
    exact instead: every pair (h, t) ∈ V² as a float64 step (`generated.stage_one`)."""
    cfg = model.config
    check_family(cfg)
    stages = check_int("stages", stages, 1)
    prefix = prefix_for(model, prompt, prefix)
    n = int(prefix.length)
    if n + stages > cfg.max_position_embeddings:
        raise ValueError(f"stages={stages} reach position {n + stages - 1}, beyond "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    weights, embed = constants(model, prefix, n)
    generated = stage_zero(cfg, weights, embed, n)
    if exhaustive and stages > 1:
        generated = stage_one(cfg, weights, embed, generated)
    V = cfg.vocab_size
    for i in range(generated.stages, stages):
        own = _run(cfg, weights, generated, stages, embed, n, np.full(V, i),
                   np.zeros(V, np.int64), chunk)[5]
        generated = generated.extend(*(a[:, :, ::cfg.heads_per_kv] for a in own))
    return generated


def history_horizon(model: Model, prompt, start: int, steps: int,
                    prefix: Prefix | None = None, chunk: int = CHUNK,
                    generated: Generated | None = None) -> HistoryHorizon:
    """The certified history-uniform horizon of a start token: the orbit x_{t+1} = f_{P,t−1}(x_t)
    (reference steps, the model's argmax) and the certificate of every (x_t, t − 1), t ≤ steps
    (`generated` as in `history_bound`)."""
    check_family(model.config)
    steps = check_int("steps", steps, 1)
    prefix = prefix_for(model, prompt, prefix)
    n = int(prefix.length)
    orbit = [int(check_int("start", start, 0))]
    if orbit[0] >= model.config.vocab_size:
        raise ValueError(f"start={start} is outside the vocabulary [0, {model.config.vocab_size})")
    for t in range(steps):
        logits = step(model, prefix, np.array([[orbit[-1]]]), np.array([[n + t]]))[0]
        orbit.append(int(np.asarray(logits)[0, 0].argmax()))
    bound = history_bound(model, prompt, np.array(orbit[:steps]), np.arange(steps), prefix, chunk,
                          generated)
    ok = bound.certified
    return HistoryHorizon(orbit=np.array(orbit), bound=bound,
                          horizon=int(np.argmax(~ok)) if (~ok).any() else steps)
