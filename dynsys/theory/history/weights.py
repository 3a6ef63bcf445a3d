"""The float64 constants of the history-uniform certificate (proofs/history_uniform.md,
Constants): per layer the weights, the prompt's keys and values, R_k and the value ellipsoid
b_v + S·ball; the layer-0 keys and values of every token; the LM head and its float32 slack."""

from __future__ import annotations

import math

import jax
import numpy as np

from dynsys.nn import Model
from dynsys.nn import params as layout
from dynsys.nn.cache import Prefix
from dynsys.theory.exact import F64
from dynsys.theory.margin import UNIT


def constants(model: Model, prefix: Prefix, n: int) -> dict:
    """The float64 arrays `_enclose` reads: per layer the weights, the prompt's keys kp and
    values vp [K, S, H] (the prefix's, over its whole capacity S, zero beyond the prompt, whose
    slots valid [S] marks: one compile per capacity bucket, not per prompt length), R_k, R_v
    [K]; the layer-0 keys k0 [V, K, H] (unrotated)
    of every token with their largest norm and the largest value norm; the LM head."""
    cfg = model.config
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), model.params)
    D, N, K, H, F = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                     cfg.intermediate_size)
    zeros = np.zeros
    valid = np.arange(prefix.capacity) < n
    layers = []
    for i in range(cfg.num_layers):
        b = layout.block(p, i)
        at, mlp, gamma = b["attn"], b["mlp"], b["norm1"]["scale"]
        lw = dict(norm1=gamma, norm2=b["norm2"]["scale"],
                  wq=at["q"]["kernel"], bq=at["q"].get("bias", zeros((N, H))),
                  wk=at["k"]["kernel"], bk=at["k"].get("bias", zeros((K, H))),
                  wv=at["v"]["kernel"], bv=at["v"].get("bias", zeros((K, H))),
                  wo=at["o"]["kernel"], bo=at["o"].get("bias", zeros(D)),
                  wg=mlp["gate"]["kernel"], wu=mlp["up"]["kernel"],
                  bu=mlp["up"].get("bias", zeros(F)), wd=mlp["down"]["kernel"],
                  bd=mlp["down"].get("bias", zeros(D)),
                  kp=np.where(valid[:, None], np.asarray(prefix.k[i], np.float64)
                              .transpose(0, 2, 1), 0.0),
                  vp=np.where(valid[:, None], np.asarray(prefix.v[i], np.float64), 0.0))
        # R_k = √D ‖W_k diag γ‖ + ‖b_k‖; values: v ∈ b_v + S·(unit ball), S = (D M Mᵀ)^½,
        # M = W_v diag γ (‖u/γ‖ < √D)
        lw["rk"] = ((math.sqrt(D) * np.linalg.norm(lw["wk"] * gamma, 2, axis=(1, 2))
                     + np.linalg.norm(lw["bk"], axis=1)) * (1 + F64))
        m = lw["wv"] * gamma
        lw["v0"], lw["vs"] = lw["bv"], sqrt_psd(D * m @ m.transpose(0, 2, 1))
        layers.append(lw)
    embed = p["embed"]["embedding"]
    first = layers[0]
    u0 = first["norm1"] * embed / np.sqrt(np.mean(embed * embed, 1, keepdims=True) + cfg.norm_eps)
    k0 = np.einsum("khd,vd->vkh", first["wk"], u0) + first["bk"]
    v0 = np.einsum("khd,vd->vkh", first["wv"], u0) + first["bv"]
    # layer 0: the values are the vocabulary's; a ball about their mean where it is smaller
    mean = v0.mean(0)
    spread = np.linalg.norm(v0 - mean, axis=2).max(0) * (1 + F64) + F64  # [K]
    smaller = spread * math.sqrt(H) < np.linalg.norm(first["vs"], axis=(1, 2))
    first["v0"] = np.where(smaller[:, None], mean, first["v0"])
    first["vs"] = np.where(smaller[:, None, None], spread[:, None, None] * np.eye(H), first["vs"])
    head = embed if cfg.tie_embeddings else p["lm_head"]["kernel"]
    gamma = D * UNIT / (1 - D * UNIT)
    final = p["final_norm"]["scale"]
    return dict(layers=layers, valid=valid, k0=k0,
                k0_max=np.linalg.norm(k0, axis=2).max(0) * (1 + F64),
                head=head,
                final=final, gamma_f32=2 * gamma,
                final_radius=float(np.abs(final).max() * math.sqrt(D))), embed


def sqrt_psd(a: np.ndarray) -> np.ndarray:
    """[..., H, H] the square root of symmetric PSD matrices, inflated by 1 + F64 (so its
    ellipsoid contains the exact one)."""
    lam, vec = np.linalg.eigh(a)
    root = np.sqrt(np.maximum(lam, 0.0) + F64 * lam.max(-1, keepdims=True))
    return (vec * root[..., None, :]) @ np.swapaxes(vec, -1, -2) * (1 + F64)
