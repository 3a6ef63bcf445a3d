"""Closed-form lemmas: the attention-mass bound of one head and the Lipschitz and
curvature bounds of the norm layers and activations (proofs/single_head.md,
proofs/multi_layer.md)."""

from __future__ import annotations

import math

import numpy as np
from scipy.special import expit

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


def softmax_box_max(values, lo, hi):
    """max over scores z ∈ Π_i [lo_i, hi_i] of Σ_i softmax(z)_i y_i, for values y, lo, hi
    [..., m] (lo ≤ hi; lo = hi = −∞ drops a key), exactly.

    ∂/∂z_i of the objective f is softmax(z)_i (y_i − f): at a maximum every key with y_i > f
    sits at hi_i and every key with y_i < f at lo_i, so, the keys sorted by y descending, the
    maximum is at one of the m + 1 vertices "the first k at hi, the rest at lo" (the threshold
    structure of Vertex-Softmax, arXiv 2605.10974; Wei et al. 2023, arXiv 2303.01713), each
    evaluated in float64 through log-sum-exps of the positive and negative parts of y. The
    minimum is −softmax_box_max(−y, lo, hi)."""
    y, lo, hi = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (values, lo, hi)))
    order = np.argsort(-y, axis=-1)
    y, lo, hi = (np.take_along_axis(a, order, -1) for a in (y, lo, hi))

    def prefix(z):  # log Σ_{j<k} e^{z_j}, k = 0..m
        first = np.full((*z.shape[:-1], 1), -np.inf)
        return np.concatenate([first, np.logaddexp.accumulate(z, axis=-1)], -1)

    def suffix(z):  # log Σ_{j≥k} e^{z_j}, k = 0..m
        return prefix(z[..., ::-1])[..., ::-1]

    with np.errstate(divide="ignore", invalid="ignore"):
        pos, neg = np.log(np.maximum(y, 0.0)), np.log(np.maximum(-y, 0.0))
        total = np.logaddexp(prefix(hi), suffix(lo))  # [..., m + 1]
        plus = np.logaddexp(prefix(hi + pos), suffix(lo + pos))
        minus = np.logaddexp(prefix(hi + neg), suffix(lo + neg))
        f = np.exp(plus - total) - np.exp(minus - total)
    return np.max(np.nan_to_num(f, nan=-np.inf), -1)


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
