"""The reference run of the Markov map at each step of a trace: the quantities the
multi-layer recursion needs. The model's own float32 forward pass gives the reference streams
(read through its sites) and logits; everything the proofs treat as exact is derived from them
in float64 (dynsys.theory.exact): queries, keys, Jacobians, operator norms, the prompt
attention's covariance and value spread."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig
from dynsys.decode.sampling import margin
from dynsys.nn import Model
from dynsys.nn import params as layout
from dynsys.nn.cache import Prefix, empty_rows
from dynsys.theory import exact
from dynsys.theory.dilution import check_trace, run_recorded, streams
from dynsys.theory.exact import F64, check_float32


@dataclasses.dataclass(frozen=True)
class MarkovStats:
    """What the bound needs from the reference steps (the Markov map's own forward pass: the
    streams and logits as the float32 model computes them, everything else float64 from the
    streams), for G steps, L layers, N query heads (kv-head quantities repeated per
    query head), model dim D. Scores are z = ⟨q, k⟩/√H; a′ the reference attention weights over
    the prompt P and the current token s; o′ = Σ a′_j v_j.

    generated [G]: r = t − 1 generated keys at step t. spread_in, spread_mid [G, L]: rms (std
    for LayerNorm) of the query stream entering block l and after its attention; spread_final
    [G]: entering the final norm. query, self_key [G, L, N]: ‖q′‖, ‖k′_s‖. prefix_key [L, N]:
    max_{j∈P} ‖k_j‖. prefix_lse: log Σ_{j∈P} e^{z′_j}; self_score: z′_s; self_value:
    ‖v′_s − o′‖; value_mean: Σ_{j∈P} a′_j ‖v_j − o′‖; covariance: ‖C‖, C = Σ_{j∈P} a′_j
    (v_j − o′) k_jᵀ. prefix_score, prefix_dist [G, L, N, S] per prompt slot j: z′_j and
    ‖v_j − o′‖ (−∞ and 0 off the prompt). prompt_keys [L, K, S, H]: the prompt's keys k_j (0 off
    the prompt); own_key [G, L, K, H]: each step's own reference key k′_s; query_jacobian
    [G, L, N, H, D]: J_q = ∂q/∂x at the reference stream (norm₁, projection, RoPE).
    prompt_values [L, K, S, H]: the prompt's values (0 off the prompt); prompt_valid [S]: its
    slots; positions [G]: each step's query position; attn_output [G, L, D]: Σ_n W_o,n o′_n, the
    attention branch's reference output without its bias; block_input [G, L, D]: the stream
    entering each block.
    cross_score [G, L, N, G]: ⟨q′_t, k′_i⟩/√H of step t's query and step i's own key (the
    generated key i is step i's current token); source_norm: ‖v′_i − o′_t‖; source
    [G, L, N, G, D]: W_o,nᵀ (v′_i − o′_t). attn_jacobian [G, L, D, D]: J_A = Σ_n W_o,nᵀ C_n J_q,n
    /√H, the attention output's derivative along the query path; block_jacobian: B = I + J_M
    J_N₂, the derivative of x ↦ x + MLP(norm₂ x); step_norm [G, L]: ‖I + J_A‖ (‖B + J_A‖ with a
    parallel residual); attn_norm: ‖J_A‖; block_norm: ‖B‖; mlp_jacobian: ‖J_M‖ at the MLP's
    reference input. final_jacobian [G, D, D]: of the final norm. up [G, L, F]: the MLP's up
    projection (SwiGLU). margin, next [G]: top-1 − top-2 and argmax of the reference logits;
    logits [G, V]: the reference logits themselves (float32, as the model computes them).
    mlp_input [G, L, D]: the MLP branch's reference input stream (x + attention; the block's
    input with a parallel residual); final_input [G, D]: the stream entering the final norm.
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
    prefix_score: np.ndarray
    prefix_dist: np.ndarray
    prompt_keys: np.ndarray
    prompt_values: np.ndarray
    prompt_valid: np.ndarray
    positions: np.ndarray
    own_key: np.ndarray
    query_jacobian: np.ndarray
    attn_output: np.ndarray
    block_input: np.ndarray
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
    logits: np.ndarray
    mlp_input: np.ndarray
    final_input: np.ndarray


def _opnorm(x):
    """Spectral norms of [..., m, n] (float64 SVD), widened by 1 + F64."""
    return jnp.linalg.norm(x, 2, axis=(-2, -1)) * (1 + F64)


def attention_stats(cfg: ModelConfig, block, k, v, valid, x, positions):
    """One layer's reference attention quantities per step and query head, in float64 from the
    stream x [B, D] entering the block at positions [B] and the prompt's keys k [K, H, S] and
    values v [K, S, H] (valid [S] marks the prompt's slots); the fields of `MarkovStats` at
    one layer, and attn_output [B, D] = Σ_n W_o,n o′_n (no bias). The margin certificate calls
    it at its centres x′ + c too, each row's own key and value standing for that step's.

    ‖v_j − o′‖ and C = Σ_P a′_j (v_j − o′) k_jᵀ are computed about the prompt's mean value v̄
    (the same quantities; the cancelling terms shrink with a large value bias), each with an
    absolute float64 slack F64 times the size of its terms."""
    B, K, G, H = x.shape[0], cfg.num_kv_heads, cfg.heads_per_kv, cfg.head_dim
    attn = block["attn"]
    u = exact.norm(cfg, block["norm1"], x)
    q = exact.project(attn["q"], u, cfg, positions).reshape(B, K, G, H) * H ** -0.5
    ks = exact.project(attn["k"], u, cfg, positions)  # [B, K, H]
    vs = exact.project(attn["v"], u)
    k = k.swapaxes(-1, -2)  # [K, S, H]
    count = jnp.maximum(jnp.sum(valid), 1)
    mean = jnp.sum(jnp.where(valid[:, None], v, 0.0), 1) / count  # v̄ [K, H]
    v = jnp.where(valid[:, None], v - mean[:, None], 0.0)
    z = jnp.where(valid, jnp.einsum("BKGH,KSH->BKGS", q, k), -jnp.inf)
    zs = jnp.einsum("BKGH,BKH->BKG", q, ks)
    top = jnp.maximum(jnp.max(z, -1), zs)
    p, ps = jnp.exp(z - top[..., None]), jnp.exp(zs - top)
    total = jnp.sum(p, -1) + ps
    a, a_s = p / total[..., None], ps / total  # a′ over the prompt, a′_s
    vs_c = vs - mean[None]
    o = jnp.einsum("BKGS,KSH->BKGH", a, v) + a_s[..., None] * vs_c[:, :, None]  # o′ − v̄
    vv, oo = jnp.sum(v * v, -1)[None, :, None], jnp.sum(o * o, -1)[..., None]
    dist = vv - 2 * jnp.einsum("BKGH,KSH->BKGS", o, v) + oo + F64 * (vv + oo)
    ak = jnp.einsum("BKGS,KSH->BKGH", a, k)
    cov = jnp.einsum("BKGS,KSH,KSI->BKGHI", a, v, k) - jnp.einsum("BKGH,BKGI->BKGHI", o, ak)
    cov_slack = F64 * (jnp.einsum("BKGS,KS,KS->BKG", a, jnp.sqrt(vv[0, :, 0]),
                                  jnp.linalg.norm(k, axis=-1))
                       + jnp.linalg.norm(o, axis=-1) * jnp.linalg.norm(ak, axis=-1))
    centred = (vs_c.transpose(1, 0, 2)[None, :, None] - o[..., None, :]).reshape(B, -1, B, H)
    stats = {"query": jnp.linalg.norm(q, axis=-1) * H ** 0.5,
             "self_key": jnp.broadcast_to(jnp.linalg.norm(ks, axis=-1)[..., None], zs.shape),
             "prefix_lse": jnp.log(jnp.sum(p, -1)) + top, "self_score": zs,
             "self_value": jnp.linalg.norm(vs_c[:, :, None] - o, axis=-1),
             "value_mean": jnp.sum(a * jnp.sqrt(jnp.maximum(dist, 0.0)), -1),
             "cross_score": jnp.einsum("BKGH,CKH->BKGC", q, ks),
             "covariance": _opnorm(cov) + cov_slack, "prefix_score": z,
             "prefix_dist": jnp.where(valid, jnp.sqrt(jnp.maximum(dist, 0.0)), 0.0)}
    stats = {name: x.reshape(B, -1, *x.shape[3:]) for name, x in stats.items()}
    w_o = attn["o"]["kernel"]  # [D, N, H]
    jq = jax.vmap(jax.jacfwd(lambda x, p: exact.project(
        attn["q"], exact.norm(cfg, block["norm1"], x), cfg, p)))(x, positions)  # [B, N, H, D]
    cov = cov.reshape(B, -1, H, H)
    out = jnp.einsum("DNH,BNH->BD", w_o, (o + mean[None, :, None]).reshape(B, -1, H))
    return dict(stats, source_norm=jnp.linalg.norm(centred, axis=-1), own_key=ks,
                query_jacobian=jq, attn_output=out,
                source=jnp.einsum("DNH,BNCH->BNCD", w_o, centred),
                attn_jacobian=jnp.einsum("DNH,BNHI,BNIE->BDE", w_o, cov, jq) * H ** -0.5)


def mlp_jacobians(cfg: ModelConfig, block, x):
    """At each row of x [B, D] (the MLP branch's reference input, or the margin certificate's
    centre): B = I + J_M J_N₂ [B, D, D] of x ↦ x + MLP(norm₂ x), ‖J_M(y′)‖ and the up
    projection W_u y′ + b_u [B, F] (SwiGLU), by forward-mode differentiation of the float64
    modules; block holds "norm2" and "mlp"."""

    def branch(y):
        return exact.mlp(cfg, block["mlp"], y)

    y = exact.norm(cfg, block["norm2"], x)
    jm = jax.vmap(jax.jacfwd(branch))(y)
    jb = jax.vmap(jax.jacfwd(lambda x: x + branch(exact.norm(cfg, block["norm2"], x))))(x)
    up = y @ block["mlp"]["up"]["kernel"].T + block["mlp"]["up"].get("bias", 0.0)
    return jb, _opnorm(jm), up


def norm_jacobian(cfg: ModelConfig, tree: dict, x):
    """The norm layer's Jacobians [B, D, D] at the rows of x [B, D] (float64, forward mode)."""
    return jax.vmap(jax.jacfwd(lambda x: exact.norm(cfg, tree, x)))(x)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _reference_run(cfg: ModelConfig, params, prefix: Prefix, tokens, positions):
    """The reference steps as the model computes them (float32): logits [B, V], the streams
    entering each block and the final norm [B, L + 1, D] and after each attention [B, L, D]."""
    B = tokens.shape[0]
    logits, _, recorded = run_recorded(cfg, params, tokens[:, None], positions[:, None],
                                       empty_rows(cfg, B, 1), prefix)
    xs = jnp.stack([x[:, 0] for x in streams(cfg, recorded)], 1)
    mids = jnp.stack([recorded("resid_mid", i)[:, 0] for i in range(cfg.num_layers)], 1)
    return logits[:, 0], xs.astype(jnp.float32), mids.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _exact_stats(cfg: ModelConfig, params, keys, values, valid, xs, mids, positions):
    """Everything else in float64 (call under jax.enable_x64): params the blocks' and the final
    norm's float64 trees, keys and values the prefix's per layer, xs and mids `_reference_run`'s
    streams."""
    parallel = cfg.parallel_residual
    eye = jnp.eye(cfg.hidden_size)
    per: dict[str, list] = {}
    for i in range(cfg.num_layers):
        block, x, mid = params["blocks"][i], xs[:, i], mids[:, i]
        kmax = jnp.sqrt(jnp.max(jnp.where(valid, jnp.sum(keys[i] ** 2, -2), 0.0), -1))  # [K]
        stats = attention_stats(cfg, block, keys[i], values[i], valid, x, positions)
        jb, mlp_jacobian, up = mlp_jacobians(cfg, block, x if parallel else mid)
        step = stats["attn_jacobian"] + (jb if parallel else eye)
        stats.update(spread_mid=exact.spread(cfg, mid), block_jacobian=jb, block_input=x,
                     block_norm=_opnorm(jb), attn_norm=_opnorm(stats["attn_jacobian"]),
                     step_norm=_opnorm(step), mlp_jacobian=mlp_jacobian,
                     mlp_input=x if parallel else mid)
        if cfg.mlp == "swiglu":
            stats["up"] = up
        for name, value in stats.items():
            per.setdefault(name, []).append(value)
        per.setdefault("prefix_key", []).append(jnp.repeat(kmax, cfg.heads_per_kv))
        per.setdefault("prompt_keys", []).append(
            jnp.where(valid[:, None], keys[i].swapaxes(-1, -2), 0.0))
        per.setdefault("prompt_values", []).append(jnp.where(valid[:, None], values[i], 0.0))
    out = {k: jnp.stack(v, 0 if k in ("prefix_key", "prompt_keys", "prompt_values") else 1)
           for k, v in per.items()}
    final = xs[:, -1]
    final_jacobian = norm_jacobian(cfg, params["final_norm"], final)
    return dict(out, spread_in=exact.spread(cfg, xs[:, :-1]), spread_final=exact.spread(cfg, final),
                final_jacobian=final_jacobian, final_input=final)


def markov_stats(model: Model, prompt, trace, prefix: Prefix | None = None) -> MarkovStats:
    """The reference steps of a trace x_{n+1..n+G}: x_{n+t} at position n+t−1 after the prompt,
    no generated keys. Holds G·L·D² floats of Jacobians: meant for small models."""
    cfg = model.config
    check_float32(cfg, "markov_stats")
    _, trace, prefix, positions = check_trace(model, prompt, trace, prefix)
    logits, xs, mids = (np.asarray(a) for a in _reference_run(
        cfg, model.params, prefix, jnp.asarray(trace), jnp.asarray(positions)))
    p = exact.float64(model.params)
    params = {"blocks": [layout.block(p, i) for i in range(cfg.num_layers)],
              "final_norm": p["final_norm"]}
    with jax.enable_x64(True):
        out = _exact_stats(cfg, params, exact.float64(prefix.k), exact.float64(prefix.v),
                           np.asarray(prefix.valid), *(np.asarray(a, np.float64) for a in
                                                       (xs, mids)), positions)
        out = {k: np.asarray(v) for k, v in out.items()}
    logits = np.asarray(logits, np.float64)
    return MarkovStats(generated=np.arange(len(trace)), up=out.pop("up", None),
                       positions=np.asarray(positions), prompt_valid=np.asarray(prefix.valid),
                       margin=np.asarray(margin(jnp.asarray(logits, jnp.float32)), np.float64),
                       next=logits.argmax(-1).astype(np.int64), logits=logits, **out)


# --- the multi-layer bound -------------------------------------------------------------------
