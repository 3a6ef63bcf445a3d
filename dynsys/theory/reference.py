"""The reference run of the Markov map at each step of a trace: the quantities the
multi-layer recursion needs, computed exactly (jitted), read through the model's sites."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig
from dynsys.decode.sampling import margin
from dynsys.nn import MLP, Model, norm_layer
from dynsys.nn.cache import Prefix, empty_rows
from dynsys.nn.rope import apply_rope
from dynsys.theory.dilution import check_trace, queries, run_recorded, streams


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
                     mlp_jacobian=mlp_jacobian, mlp_input=xs[i] if parallel else mid)
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
                margin=margin(logits), next=jnp.argmax(logits, -1), logits=logits,
                final_input=xs[-1])


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
