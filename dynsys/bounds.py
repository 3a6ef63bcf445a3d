"""The constants of the dilution theorems (proofs/) and the certified horizon.

Single head (proofs/single_head.md): with the removed scores ≤ hi and the kept ones ≥ lo,
a(R) ≤ r e^{hi} / (r e^{hi} + (s − r) e^{lo}).

Multi-layer (proofs/multi_layer.md): at step t the real and the reference run differ only in
the r = t−1 generated keys and in the query-position stream; δ_l = ‖x_l − x′_l‖ obeys a
recursion whose constants are operator norms of the weights, norm-layer bounds and quantities
of the reference run (the Markov map's own forward pass, computed exactly). `certify` runs it
along a trace. `uniform_bound` replaces every measured quantity by a weight-only bound, which
gives the explicit n₀ of the degeneration theorem (proofs/degeneration.md).

All bounds hold in exact arithmetic; float32 rounding (≈1e-6 of the logits) is not included.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import expit

from dynsys.cache import Prefix, empty_rows
from dynsys.config import ModelConfig
from dynsys.dilution import check_trace, queries, run_recorded, streams
from dynsys.model import MLP, Model, norm_layer
from dynsys.rope import apply_rope
from dynsys.sampling import margin

SILU_SLOPE = 1.1  # sup |silu′| = 1.0998… (at x ≈ 2.3994); inf silu′ = −0.0998…
SILU_CURVE = 0.5  # sup |silu″| = silu″(0) = 1/2
GELU_SLOPE = 1.13  # sup |gelu′| = Φ(√2) + √2 φ(√2) = 1.1289… (exact, erf GELU)
GELU_CURVE = 0.8  # sup |gelu″| = gelu″(0) = 2φ(0) = 0.7979…

# --- one head -----------------------------------------------------------------------------------


def mass_bound(r, s, lo, hi):
    """a(R) ≤ r e^{hi} / (r e^{hi} + (s − r) e^{lo}) = σ(hi − lo + log r − log(s − r)) for r
    removed keys among s, removed scores ≤ hi, kept scores ≥ lo (0 if r = 0, 1 if r = s)."""
    r, s = np.asarray(r, np.float64), np.asarray(s, np.float64)
    with np.errstate(divide="ignore"):
        return expit(np.asarray(hi, np.float64) - lo + np.log(r) - np.log(s - r))


def extremal_scores(r: int, s: int, lo: float, hi: float) -> np.ndarray:
    """Scores [s] attaining `mass_bound`: the first r keys (the removed ones) at hi, the rest
    at lo."""
    return np.where(np.arange(s) < r, hi, lo).astype(np.float64)


# --- norm layers --------------------------------------------------------------------------------


def norm_lipschitz(gain, spread, eps):
    """Lipschitz bound of RMSNorm x ↦ w ⊙ x/√(ms(x) + ε) on {x : rms(x) ≥ spread}: its
    Jacobian has norm ≤ ‖w‖_∞/√(ms(x) + ε). LayerNorm: the same with the standard deviation
    (centring is an orthogonal projection). spread ≤ 0 gives the global bound ‖w‖_∞/√ε."""
    spread = np.maximum(spread, 0.0)
    return gain / np.sqrt(spread * spread + eps)


def norm_curvature(gain, spread, eps, dim: int):
    """Bound on the second derivative of the same norm layer on {rms(x) ≥ spread}:
    ‖D²N(x)‖ ≤ 6 ‖w‖_∞ / (√D (ms(x) + ε))."""
    spread = np.maximum(spread, 0.0)
    return 6 * gain / (math.sqrt(dim) * (spread * spread + eps))


# --- the weights ------------------------------------------------------------------------------


def _spectral(w: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(w, np.float64), 2))


@dataclasses.dataclass(frozen=True)
class WeightConstants:
    """Weight-only constants, float64. Norms of matrices are spectral.

    norm1, norm2 [L]: ‖w‖_∞ of each norm layer's scale; *_radius: sup ‖norm(x)‖ = ‖w‖_∞ √D
    (+ ‖b‖ for LayerNorm). query [L, N], key, value [L, K]: ‖W‖ of each head's projection
    [H, D]; *_bias: their bias norms. out [L]: ‖W_o‖ as a D×(N·H) matrix. SwiGLU: gate, up,
    mlp_in = ‖W_g‖, ‖W_u‖, ‖[W_g W_u]‖; GELU: up = mlp_in = ‖W_up‖. mlp_out [L]: ‖W_down‖.
    gate_cols, up_cols [L, F]: the norms ‖W_g[f, :]‖, ‖W_u[f, :]‖ of each unit's weights (the
    columns of W_g, W_u acting on row vectors; SwiGLU). final: ‖w_f‖_∞ of the final
    norm. head_rows [V, D]: the LM head's rows w_v; head_norm: max_v ‖w_v‖; head: max_v
    ‖w_v ⊙ w_f‖.
    """

    config: ModelConfig
    norm1: np.ndarray
    norm1_radius: np.ndarray
    norm2: np.ndarray
    norm2_radius: np.ndarray
    query: np.ndarray
    query_bias: np.ndarray
    key: np.ndarray
    key_bias: np.ndarray
    value: np.ndarray
    value_bias: np.ndarray
    out: np.ndarray
    gate: np.ndarray | None
    up: np.ndarray
    mlp_in: np.ndarray
    mlp_out: np.ndarray
    gate_cols: np.ndarray | None
    up_cols: np.ndarray | None
    final: float
    head_rows: np.ndarray
    head_norm: float
    head: float

    @property
    def query_max(self) -> np.ndarray:
        """[L, N] sup ‖q‖ = ‖W_q‖ · radius₁ + ‖b_q‖ (RoPE is a rotation)."""
        return self.query * self.norm1_radius[:, None] + self.query_bias

    @property
    def key_max(self) -> np.ndarray:
        """[L, K] sup ‖k‖ over any stream."""
        return self.key * self.norm1_radius[:, None] + self.key_bias

    @property
    def value_max(self) -> np.ndarray:
        """[L, K] sup ‖v‖ over any stream."""
        return self.value * self.norm1_radius[:, None] + self.value_bias

    def mlp_lipschitz(self, layer: int) -> float:
        """Lipschitz bound of the MLP on all its inputs ‖y‖ ≤ radius₂. SwiGLU
        y ↦ W_d(silu(W_g y) ⊙ W_u y): J = W_d [D₁ D₂] [W_g; W_u] with D₁ = diag(silu′(g) u),
        D₂ = diag(silu g), so ‖J‖ ≤ ‖W_d‖ ‖[W_g; W_u]‖ max_i √((1.1 |u_i|)² + g_i²), and
        |g_i| ≤ ‖W_g e_i‖ radius₂, |u_i| ≤ ‖W_u e_i‖ radius₂. GELU: ‖W_d‖ · 1.13 · ‖W_up‖."""
        if self.gate_cols is None:
            return float(self.mlp_out[layer] * GELU_SLOPE * self.mlp_in[layer])
        units = np.hypot(SILU_SLOPE * self.up_cols[layer], self.gate_cols[layer])
        return float(self.mlp_out[layer] * self.mlp_in[layer] * units.max()
                     * self.norm2_radius[layer])

    def mlp_curvature(self, layer: int, up_abs=None):
        """Bound on ‖D²MLP‖. SwiGLU: ‖W_d‖ (½ max_i |u_i| ‖W_g‖² + 2.2 ‖W_g‖ ‖W_u‖), with
        |u_i| ≤ up_abs [..., F] (default: ‖W_u e_i‖ radius₂). GELU: 0.8 ‖W_d‖ ‖W_up‖²."""
        if self.gate is None:
            return self.mlp_out[layer] * GELU_CURVE * self.up[layer] ** 2
        if up_abs is None:
            up_abs = self.up_cols[layer] * self.norm2_radius[layer]
        g, u = self.gate[layer], self.up[layer]
        return self.mlp_out[layer] * (SILU_CURVE * np.max(up_abs, axis=-1) * g * g
                                      + 2 * SILU_SLOPE * g * u)


def weight_constants(model: Model) -> WeightConstants:
    """The operator norms and norm-layer constants of a model (numpy SVD, float64)."""
    cfg = model.config
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), model.params)
    D = cfg.hidden_size

    def norm(tree) -> tuple[float, float]:
        gain = float(np.abs(tree["scale"]).max())
        return gain, gain * math.sqrt(D) + float(np.linalg.norm(tree.get("bias", 0.0)))

    def heads(dense) -> tuple[np.ndarray, np.ndarray]:
        kernel = dense["kernel"]  # [heads, H, D]
        bias = dense.get("bias", np.zeros(kernel.shape[:2]))
        return (np.linalg.norm(kernel, 2, axis=(1, 2)),
                np.linalg.norm(bias, axis=-1))

    rows: dict[str, list] = {k: [] for k in (
        "norm1", "norm1_radius", "norm2", "norm2_radius", "query", "query_bias", "key",
        "key_bias", "value", "value_bias", "out", "gate", "up", "mlp_in", "mlp_out",
        "gate_cols", "up_cols")}
    for i in range(cfg.num_layers):
        block = p[f"blocks_{i}"]
        for name in ("norm1", "norm2"):
            gain, radius = norm(block[name])
            rows[name].append(gain)
            rows[f"{name}_radius"].append(radius)
        for name, dense in (("query", "q"), ("key", "k"), ("value", "v")):
            w, b = heads(block["attn"][dense])
            rows[name].append(w)
            rows[f"{name}_bias"].append(b)
        rows["out"].append(_spectral(block["attn"]["o"]["kernel"].reshape(D, -1)))
        mlp = block["mlp"]
        rows["mlp_out"].append(_spectral(mlp["down"]["kernel"]))
        up = mlp["up"]["kernel"]  # [F, D]
        rows["up"].append(_spectral(up))
        if cfg.mlp == "gelu":
            rows["mlp_in"].append(rows["up"][-1])
        else:
            gate = mlp["gate"]["kernel"]
            rows["gate"].append(_spectral(gate))
            rows["mlp_in"].append(_spectral(np.concatenate([gate, up])))
            rows["gate_cols"].append(np.linalg.norm(gate, axis=1))
            rows["up_cols"].append(np.linalg.norm(up, axis=1))
    head = p["embed"]["embedding"] if cfg.tie_embeddings else p["lm_head"]["kernel"]  # [V, D]
    scale = p["final_norm"]["scale"]
    arrays = {k: np.asarray(v) if v else None for k, v in rows.items()}
    return WeightConstants(
        config=cfg, final=float(np.abs(scale).max()), head_rows=head,
        head_norm=float(np.linalg.norm(head, axis=1).max()),
        head=float(np.linalg.norm(head * scale, axis=1).max()), **arrays)


# --- the reference run --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MarkovStats:
    """What the bound needs from the reference steps (the Markov map's own forward pass,
    computed exactly), for G steps, L layers, N query heads (kv-head quantities repeated per
    query head), model dim D. Scores are z = ⟨q, k⟩/√H; a′ the reference attention weights over
    the prompt P and the current token s; o′ = Σ a′_j v_j.

    generated [G]: r = t − 1 generated keys at step t. spread_in, spread_mid [G, L]: rms (std
    for LayerNorm) of the query stream entering block l and after its attention; spread_final
    [G]: entering the final norm. query, self_key [G, L, N]: ‖q′‖, ‖k′_s‖. prefix_key [L, N]:
    max_{j∈P} ‖k_j‖. prefix_lse: log Σ_{j∈P} e^{z′_j}; self_score: z′_s; self_value:
    ‖v′_s − o′‖; value_mean: Σ_{j∈P} a′_j ‖v_j − o′‖; covariance: ‖C‖, C = Σ_{j∈P} a′_j
    (v_j − o′) k_jᵀ. cross_score [G, L, N, G]: ⟨q′_t, k′_i⟩/√H of step t's query and step i's own
    key (the generated key i is step i's current token); source_norm: ‖v′_i − o′_t‖; source
    [G, L, N, G, D]: W_o,nᵀ (v′_i − o′_t). attn_jacobian [G, L, D, D]: J_A = Σ_n W_o,nᵀ C_n J_q,n
    /√H, the attention output's derivative along the query path; block_jacobian: B = I + J_M
    J_N₂, the derivative of x ↦ x + MLP(norm₂ x); step_norm [G, L]: ‖I + J_A‖ (‖B + J_A‖ with a
    parallel residual); attn_norm: ‖J_A‖; block_norm: ‖B‖; mlp_jacobian: ‖J_M‖ at the MLP's
    reference input. final_jacobian [G, D, D]: of the final norm. up [G, L, F]: the MLP's up
    projection (SwiGLU). margin, next [G]: top-1 − top-2 and argmax of the reference logits.
    """

    generated: np.ndarray
    spread_in: np.ndarray
    spread_mid: np.ndarray
    spread_final: np.ndarray
    query: np.ndarray
    self_key: np.ndarray
    prefix_key: np.ndarray
    prefix_lse: np.ndarray
    self_score: np.ndarray
    self_value: np.ndarray
    value_mean: np.ndarray
    covariance: np.ndarray
    cross_score: np.ndarray
    source_norm: np.ndarray
    source: np.ndarray
    attn_jacobian: np.ndarray
    block_jacobian: np.ndarray
    attn_norm: np.ndarray
    step_norm: np.ndarray
    block_norm: np.ndarray
    mlp_jacobian: np.ndarray
    final_jacobian: np.ndarray
    up: np.ndarray | None
    margin: np.ndarray
    next: np.ndarray


def _spread(cfg: ModelConfig, x):
    """rms(x) for RMSNorm, std(x) for LayerNorm, over the last axis."""
    if cfg.norm == "layer":
        x = x - jnp.mean(x, axis=-1, keepdims=True)
    return jnp.sqrt(jnp.mean(x * x, axis=-1))


def _opnorm(x):
    return jnp.linalg.norm(x, 2, axis=(-2, -1))


def _attention_stats(cfg: ModelConfig, params, prefix: Prefix, layer: int, x, q, ks, vs,
                     positions):
    """One layer's reference attention quantities per step and query head: the stream x [B, D]
    entering the block, q [B, K, G, H] (scaled by H^{-1/2}), the current token's key and value
    ks, vs [B, K, H], its positions [B]."""
    B, N, H = q.shape[0], cfg.num_heads, cfg.head_dim
    block = params[f"blocks_{layer}"]
    valid = prefix.valid
    k = prefix.k[layer].astype(jnp.float32).swapaxes(-1, -2)  # [K, S, H]
    v = prefix.v[layer].astype(jnp.float32)
    z = jnp.where(valid, jnp.einsum("BKGH,KSH->BKGS", q, k), -jnp.inf)
    zs = jnp.einsum("BKGH,BKH->BKG", q, ks)
    top = jnp.maximum(jnp.max(z, -1), zs)
    p, ps = jnp.exp(z - top[..., None]), jnp.exp(zs - top)
    total = jnp.sum(p, -1) + ps
    a, a_s = p / total[..., None], ps / total  # a′ over the prompt, a′_s
    o = jnp.einsum("BKGS,KSH->BKGH", a, v) + a_s[..., None] * vs[:, :, None]
    dist = (jnp.sum(v * v, -1)[None, :, None] - 2 * jnp.einsum("BKGH,KSH->BKGS", o, v)
            + jnp.sum(o * o, -1)[..., None])
    outer = jnp.einsum("KSH,KSI->KSHI", v, k).reshape(*k.shape[:2], H * H)
    cov = (jnp.einsum("BKGS,KSX->BKGX", a, outer).reshape(*a.shape[:3], H, H)
           - jnp.einsum("BKGH,BKGI->BKGHI", o, jnp.einsum("BKGS,KSH->BKGH", a, k)))
    cov = cov.reshape(B, N, H, H)
    centred = (vs.transpose(1, 0, 2)[None, :, None] - o[..., None, :]).reshape(B, N, B, H)
    w_o = block["attn"]["o"]["kernel"].astype(jnp.float32)  # [D, N, H]
    norm = norm_layer(cfg)
    dense = block["attn"]["q"]

    def query(x, position):  # the rotated query [N, H] of a stream x [D]
        u = norm.apply({"params": block["norm1"]}, x)
        y = jnp.einsum("D,NHD->NH", u, dense["kernel"]) + dense.get("bias", 0.0)
        return apply_rope(y[None], position[None], cfg)[0]

    jq = jax.vmap(jax.jacfwd(query))(x, positions)  # [B, N, H, D]
    stats = {"query": jnp.linalg.norm(q, axis=-1) * H ** 0.5,
             "self_key": jnp.broadcast_to(jnp.linalg.norm(ks, axis=-1)[..., None], zs.shape),
             "prefix_lse": jnp.log(jnp.sum(p, -1)) + top, "self_score": zs,
             "self_value": jnp.linalg.norm(vs[:, :, None] - o, axis=-1),
             "value_mean": jnp.sum(a * jnp.sqrt(jnp.maximum(dist, 0.0)), -1),
             "cross_score": jnp.einsum("BKGH,CKH->BKGC", q, ks)}
    stats = {name: x.reshape(B, N, *x.shape[3:]) for name, x in stats.items()}
    return dict(stats, covariance=_opnorm(cov), source_norm=jnp.linalg.norm(centred, axis=-1),
                source=jnp.einsum("DNH,BNCH->BNCD", w_o, centred),
                attn_jacobian=jnp.einsum("DNH,BNHI,BNIE->BDE", w_o, cov, jq) * H ** -0.5)


def _jacobians(cfg: ModelConfig, params, layer: int, x):
    """At each row of x [B, D] (the MLP branch's reference input): B = I + J_M J_N₂ [B, D, D]
    of x ↦ x + MLP(norm₂ x) and ‖J_M(y′)‖, by forward-mode differentiation of the model's own
    modules."""
    block = params[f"blocks_{layer}"]
    norm, mlp = norm_layer(cfg), MLP(cfg)

    def normed(x):
        return norm.apply({"params": block["norm2"]}, x)

    def branch(y):
        return mlp.apply({"params": block["mlp"]}, y)

    jm = jax.vmap(jax.jacfwd(branch))(jax.vmap(normed)(x))
    jb = jax.vmap(jax.jacfwd(lambda x: x + branch(normed(x))))(x)
    return jb, _opnorm(jm)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _markov_stats(cfg: ModelConfig, params, prefix: Prefix, tokens, positions):
    B = tokens.shape[0]
    logits, rows, recorded = run_recorded(cfg, params, tokens[:, None], positions[:, None],
                                          empty_rows(cfg, B, 1), prefix)
    xs = [x[:, 0].astype(jnp.float32) for x in streams(cfg, recorded)]
    parallel = cfg.parallel_residual
    eye = jnp.eye(cfg.hidden_size)
    per: dict[str, list] = {}
    for i in range(cfg.num_layers):
        q = queries(cfg, recorded, i)[:, 0]
        ks, vs = rows.k[i][..., 0].astype(jnp.float32), rows.v[i][:, :, 0].astype(jnp.float32)
        mid = recorded("resid_mid", i)[:, 0].astype(jnp.float32)
        kmax = jnp.sqrt(jnp.max(jnp.where(prefix.valid, jnp.sum(
            prefix.k[i].astype(jnp.float32) ** 2, -2), 0.0), -1))  # [K]
        stats = _attention_stats(cfg, params, prefix, i, xs[i], q, ks, vs, positions)
        jb, mlp_jacobian = _jacobians(cfg, params, i, xs[i] if parallel else mid)
        step = stats["attn_jacobian"] + (jb if parallel else eye)
        stats.update(spread_mid=_spread(cfg, mid), block_jacobian=jb, block_norm=_opnorm(jb),
                     attn_norm=_opnorm(stats["attn_jacobian"]), step_norm=_opnorm(step),
                     mlp_jacobian=mlp_jacobian)
        if cfg.mlp == "swiglu":
            stats["up"] = recorded("mlp_up", i)[:, 0]
        for name, x in stats.items():
            per.setdefault(name, []).append(x)
        per.setdefault("prefix_key", []).append(jnp.repeat(kmax, cfg.heads_per_kv))
    out = {k: jnp.stack(v, 0 if k == "prefix_key" else 1) for k, v in per.items()}
    final = norm_layer(cfg)
    final_jacobian = jax.vmap(jax.jacfwd(
        lambda x: final.apply({"params": params["final_norm"]}, x)))(xs[-1])
    logits = logits[:, 0]
    return dict(out, spread_in=jnp.stack([_spread(cfg, x) for x in xs[:-1]], 1),
                spread_final=_spread(cfg, xs[-1]), final_jacobian=final_jacobian,
                margin=margin(logits), next=jnp.argmax(logits, -1))


def markov_stats(model: Model, prompt, trace, prefix: Prefix | None = None) -> MarkovStats:
    """The reference steps of a trace x_{n+1..n+G}: x_{n+t} at position n+t−1 after the prompt,
    no generated keys. Holds G·L·D² floats of Jacobians: meant for small models."""
    _, trace, prefix, positions = check_trace(model, prompt, trace, prefix)
    out = _markov_stats(model.config, model.params, prefix, jnp.asarray(trace),
                        jnp.asarray(positions))
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    out["next"] = out["next"].astype(np.int64)
    return MarkovStats(generated=np.arange(len(trace)), up=out.pop("up", None), **out)


# --- the multi-layer bound -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Bound:
    """Upper bounds along a trace: mass [G, L, N] on a_t(R) of the real query; residual [G, L]
    on ‖x_l − x′_l‖ leaving block l; logits [G] on max_v |logits − logits′|."""

    mass: np.ndarray
    residual: np.ndarray
    logits: np.ndarray


def _attention(w: WeightConstants, s: MarkovStats, i: int, delta: np.ndarray):
    """Lemmas 3–4 of proofs/multi_layer.md for block i, all steps at once, given δ [G] entering
    it: α [G, N] ≥ a(R); the centre [G, D] and radius [G] of the attention output's change
    beyond the query-path term J_A c."""
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
    # Lemma 3, the prompt and the current token: o_h − o′ = C Δq/√H + (≤ rest)
    zeta_p = dq * s.prefix_key[i] / root
    zeta_s = (dq * s.self_key[:, i] + q_hat * dk) / root
    a_self = expit(s.self_score[:, i] - s.prefix_lse[:, i])
    a_hat = expit(s.self_score[:, i] + zeta_s - s.prefix_lse[:, i] + zeta_p)
    z_lo = (1 - a_self) * np.exp(-zeta_p) + a_self * np.exp(-zeta_s)
    z_hi = (1 - a_self) * np.exp(zeta_p) + a_self * np.exp(zeta_s)
    z_gap = np.maximum(1 / z_lo - 1, 1 - 1 / z_hi)
    s_gap = np.maximum(np.exp(zeta_s) / z_lo - 1, 1 - np.exp(-zeta_s) / z_hi)
    m, sv = s.value_mean[:, i], s.self_value[:, i]
    rest = ((np.expm1(zeta_p) - zeta_p) * m + z_gap * (a_self * sv + np.expm1(zeta_p) * m)
            + a_self * s_gap * sv + a_hat * dv)
    curve_q = (s.covariance[:, i] * w.query[i] / root
               * norm_curvature(w.norm1[i], floor, eps, D)[:, None] * delta[:, None] ** 2 / 2)
    e = s.covariance[:, i] * dq / root + rest  # ≥ ‖o_h − o′‖
    # Lemma 4, the generated keys: key i < t is step i's current token
    earlier = s.generated[None, None, :] < s.generated[:, None, None]  # [G, 1, G]
    shift = (dq[:, :, None] * s.self_key[:, i].T[None] + q_hat[:, :, None] * dk.T[None]) / root
    cap = (q_hat * k_max)[:, :, None] / root
    hi = np.where(earlier, np.minimum(s.cross_score[:, i] + shift, cap), -np.inf)  # [G, N, G]
    lo = np.where(earlier, np.maximum(s.cross_score[:, i] - shift, -cap), -np.inf)
    low = np.logaddexp(s.prefix_lse[:, i] - zeta_p, s.self_score[:, i] - zeta_s)
    high = np.logaddexp(s.prefix_lse[:, i] + zeta_p, s.self_score[:, i] + zeta_s)
    with np.errstate(invalid="ignore"):
        removed = np.logaddexp.reduce(hi, axis=-1)
        alpha = expit(removed - low)
        w_hi = expit(hi - low[..., None])  # w_lo ≤ a_i ≤ w_hi; both 0 off the earlier keys
        w_lo = np.exp(lo - np.logaddexp(removed, high)[..., None])
    centre = np.einsum("tni,tnid->td", (w_hi + w_lo) / 2, s.source[:, i])
    radius = (curve_q + rest + alpha * e
              + np.sum((w_hi - w_lo) / 2 * s.source_norm[:, i] + w_hi * dv.T[None], -1))
    return alpha, centre, w.out[i] * np.linalg.norm(radius, axis=1)


def _mlp_constants(w: WeightConstants, s: MarkovStats, i: int, delta: np.ndarray, spread):
    """Lemma 5 for Φ(x) = x + MLP(norm₂ x) on the ball ‖x − x′‖ ≤ δ [G]: its Lipschitz bound
    1 + Λ₂ Lip(MLP), and κ = κ_M Λ₂² + ‖J_M‖ κ_N with ‖Φ(x′ + d) − Φ(x′) − B d‖ ≤ ½ κ ‖d‖²."""
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
             + s.mlp_jacobian[:, i] * norm_curvature(w.norm2[i], floor, eps, D))
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
        alpha, source, radius = _attention(w, s, i, delta)
        attn = np.einsum("tde,te->td", s.attn_jacobian[:, i], c) + source
        if parallel:
            lip, curve = _mlp_constants(w, s, i, delta, s.spread_in[:, i])
            c, rho = _tighter(
                (np.einsum("tde,te->td", s.block_jacobian[:, i], c) + attn,
                 s.step_norm[:, i] * rho + radius + curve * delta ** 2 / 2),
                (attn, lip * delta + s.attn_norm[:, i] * rho + radius))
        else:
            c, rho = c + attn, s.step_norm[:, i] * rho + radius
            delta = np.linalg.norm(c, axis=1) + rho
            lip, curve = _mlp_constants(w, s, i, delta, s.spread_mid[:, i])
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


@dataclasses.dataclass(frozen=True)
class UniformBound:
    """For every prompt of length n and every step with r generated keys, in exact arithmetic:
    every head's a(R) ≤ α(n, r) = r e^S / (r e^S + n + 1) and max_v |Δlogit| ≤ gain · α(n, r).
    score_range S = max over heads of 2 sup‖q‖ sup‖k‖/√H; gain from the linearised recursion
    (proofs/degeneration.md); rms_floor the assumed floor of the query stream's rms (0: none,
    the norm layers' ε alone bounds them)."""

    score_range: float
    gain: float
    rms_floor: float

    def mass(self, n, r):
        return mass_bound(r, np.asarray(n) + np.asarray(r) + 1, -self.score_range / 2,
                          self.score_range / 2)

    def logits(self, n, r):
        return self.gain * self.mass(n, r)

    def n0(self, steps: int, margin: float) -> float:
        """Least n₀ such that gain · α(n, steps − 1) < margin/2 for all n ≥ n₀: then the
        greedy trace equals the Markov orbit for `steps` steps wherever the margins on the
        visited tokens are ≥ margin. A float: it may exceed any machine integer (inf)."""
        c = margin / (2 * self.gain)
        if steps <= 1 or c >= 1:
            return 0.0
        log_n = math.log(steps - 1) + self.score_range + math.log1p(-c) - math.log(c)
        return float(math.floor(math.exp(log_n))) if log_n < 700 else math.inf


def uniform_bound(w: WeightConstants, rms_floor: float = 0.0) -> UniformBound:
    """Weight-only constants of the degeneration theorem. With α ≤ 1 the recursion is linear:
    δ_l = c_l α with c₀ = 0 and, per block,

        ‖Δh‖/α ≤ ‖W_o‖ (2 ‖(sup‖v_n‖)_n‖₂ + Λ₁ c ‖(a_n)_n‖₂),
        a_n = 8 sup‖v‖ (‖W_q,n‖ sup‖k‖ + sup‖q_n‖ ‖W_k‖)/√H + ‖W_v‖,
        c ← (c + ‖Δh‖/α)(1 + Lip Λ₂)  (parallel residual: c + ‖Δh‖/α + Lip Λ₂ c),

    gain = max_v ‖w_v ⊙ w_f‖ c_L/√(rms_floor² + ε), every Λ = ‖w‖_∞/√(rms_floor² + ε)."""
    cfg = w.config
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    root = math.sqrt(cfg.head_dim)
    q_max, k_max, v_max = w.query_max, w.key_max[:, kv], w.value_max[:, kv]
    c = 0.0
    for i in range(cfg.num_layers):
        lam1 = norm_lipschitz(w.norm1[i], rms_floor, cfg.norm_eps)
        lam2 = norm_lipschitz(w.norm2[i], rms_floor, cfg.norm_eps)
        a = (8 * v_max[i] * (w.query[i] * k_max[i] + q_max[i] * w.key[i][kv]) / root
             + w.value[i][kv])
        dh = w.out[i] * (2 * np.linalg.norm(v_max[i]) + lam1 * c * np.linalg.norm(a))
        lip = w.mlp_lipschitz(i) * lam2
        if cfg.parallel_residual:
            c = c + dh + lip * c
        else:
            c = (c + dh) * (1 + lip)
    gain = w.head * norm_lipschitz(1.0, rms_floor, cfg.norm_eps) * c
    score_range = float(np.max(2 * q_max * k_max / root))
    return UniformBound(score_range, float(gain), rms_floor)
