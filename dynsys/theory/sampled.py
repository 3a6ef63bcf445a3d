"""Sampled decoding near a Markov chain (proofs/sampled.md): the per-step total-variation
bound of a logit perturbation at temperature T, the escape bound of the step-by-step maximal
coupling over G steps, the coupling itself, the perturbation that attains the bound, and the
kept-set stability that top-k / top-p need.

Notation: q = softmax(ℓ/T) (the Markov kernel's row), p = softmax((ℓ + Δ)/T) (the real step),
‖Δ‖∞ ≤ β, b = β/T. Everything is float64 numpy on plain arrays."""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from dynsys.config import check_float


def _betas(beta) -> np.ndarray:
    b = np.asarray(beta, np.float64)
    bad = ~np.isfinite(b) | (b < 0)
    if bad.any():
        raise ValueError(f"beta={b[bad].flat[0]!r} must be finite and >= 0")
    return b


def step_tv_bound(beta, temperature: float) -> np.ndarray:
    """ε = tanh(β/(2T)): the largest total variation between softmax((ℓ + Δ)/T) and
    softmax(ℓ/T) over all logits ℓ and all ‖Δ‖∞ ≤ β (Lemma 2; attained, see
    `adversarial_perturbation`). ε ≤ min(β/(2T), 1 − e^{−2β/T}). Elementwise in β."""
    t = check_float("temperature", temperature, above=0)
    return np.tanh(_betas(beta) / (2 * t))


def escape_bound(betas, temperature: float) -> np.ndarray:
    """[G] the bound 1 − Π_{s≤g} (1 − ε_s), ε_s = tanh(β_s/(2T)), on the probability that the
    maximal coupling of the sampled path and the Markov chain has separated within the first
    g steps, g = 1..G (Theorem; ≤ Σ_{s≤g} ε_s). betas [G]: the sup-norm logit bounds per step,
    each valid for every history."""
    eps = step_tv_bound(np.atleast_1d(betas), temperature)
    if eps.ndim != 1:
        raise ValueError(f"betas must be one bound per step (1-D), got shape {eps.shape}")
    return -np.expm1(np.cumsum(np.log1p(-eps)))


def history_tv_bound(margin, lower, upper, temperature: float) -> np.ndarray:
    """[B] ε = tanh(osc/(4T)) ≥ TV(softmax(ℓ/T), softmax(ℓ′/T)) for every history, from the
    history-uniform certificate's margin bounds (`HistoryBound.margin, .lower, .upper` [B, V]:
    m′_v ≤ …, lower_v ≤ ℓ_top − ℓ_v ≤ upper_v for every history; lower = +∞, upper = m′ = 0 at
    top). Shifted by Δ_top, the perturbation Δ_v − Δ_top = m′_v − (ℓ_top − ℓ_v) lies in
    [min(0, min_v(m′_v − upper_v)), max(0, max_v(m′_v − lower_v))], of length osc; only the
    oscillation matters (Lemma 2 with 2β = osc). A vacuous bound (±∞) gives ε = 1."""
    t = check_float("temperature", temperature, above=0)
    m, lo, hi = (np.asarray(a, np.float64) for a in (margin, lower, upper))
    with np.errstate(invalid="ignore"):
        osc = np.maximum(np.max(m - lo, -1), 0.0) + np.maximum(np.max(hi - m, -1), 0.0)
    return np.tanh(np.nan_to_num(osc, nan=np.inf) / (4 * t))


def adversarial_perturbation(logits, beta: float, temperature: float) -> np.ndarray:
    """Δ = β(1_A − 1_{A^c}) with A the best set among the prefixes of the tokens sorted by
    increasing q = softmax(ℓ/T). For any set A, this Δ gives TV = g(q(A)) with
    g(a) = a k/(a k + 1 − a) − a, k = e^{2β/T}, and max_A g(q(A)) is the exact worst case
    over ‖Δ‖∞ ≤ β (Lemma 2); g ≤ tanh(β/(2T)) with equality at q(A) = 1/(e^{β/T} + 1), so the
    bound is attained when some prefix has that mass and nearly attained when the prefix
    sums are dense (many small probabilities). logits [V]."""
    beta = check_float("beta", beta, at_least=0)
    b = beta / check_float("temperature", temperature, above=0)
    ell = np.asarray(logits, np.float64)
    q = softmax(ell / temperature)
    order = np.argsort(q, kind="stable")
    a = np.cumsum(q[order])
    k = np.exp(2 * b)
    best = int(np.argmax(a * k / (a * k + 1 - a) - a))
    sign = np.full(ell.shape, -1.0)
    sign[order[:best + 1]] = 1.0
    return beta * sign


def total_variation(p, q) -> np.ndarray:
    """½ Σ_v |p_v − q_v| = Σ_v (p_v − q_v)₊ over the last axis."""
    return 0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum(-1)


def _draw(weights: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF index of u under unnormalised weights [..., V] (u < Σ weights); an index
    with positive weight even where rounding puts u past the last cumulative sum."""
    cum = np.cumsum(weights, axis=-1)
    idx = (cum <= u[..., None]).sum(-1)
    last = weights.shape[-1] - 1 - np.argmax(weights[..., ::-1] > 0, axis=-1)
    return np.minimum(idx, last)


def maximal_coupling(p, q, u) -> tuple[np.ndarray, np.ndarray]:
    """A pair (x, y) with x ~ p, y ~ q and P(x ≠ y) = TV(p, q), from one uniform u ∈ [0, 1).
    With m = min(p, q) and M = Σ m = 1 − TV: if u < M, x = y = the inverse-CDF draw of u
    under m; otherwise x and y are the draws of u − M under the residuals (p − m) and
    (q − m), whose supports are disjoint, so x ≠ y. Marginal of x: m_v + (p_v − m_v) = p_v.
    p, q [..., V] distributions (non-negative, summing to 1); u [...]."""
    p, q, u = (np.asarray(a, np.float64) for a in (p, q, u))
    if p.shape != q.shape or p.shape[:-1] != u.shape:
        raise ValueError(f"p {p.shape} and q {q.shape} must match, u {u.shape} their batch")
    for name, d in (("p", p), ("q", q)):
        if not (np.isfinite(d).all() and (d >= 0).all()
                and np.allclose(d.sum(-1), 1.0, rtol=0, atol=1e-9)):
            raise ValueError(f"{name} must be distributions over its last axis")
    if not ((u >= 0) & (u < 1)).all():
        raise ValueError(f"u must lie in [0, 1), got {u[~((u >= 0) & (u < 1))].flat[0]!r}")
    m = np.minimum(p, q)
    mass = m.sum(-1)
    together = u < mass
    common = _draw(m, u)
    rest = np.where(together, 0.0, u - mass)
    px, qy = p - m, q - m
    alone = ~together & (px.sum(-1) > 0) & (qy.sum(-1) > 0)  # else u ≥ M by rounding only
    x = np.where(alone, _draw(np.where(alone[..., None], px, 1.0), rest), common)
    y = np.where(alone, _draw(np.where(alone[..., None], qy, 1.0), rest), common)
    return x, y


def kept_tokens(logits, temperature: float, top_k: int = 0, top_p: float = 1.0) -> np.ndarray:
    """[V] bool: the tokens top-k then top-p keep at temperature T, with the semantics of
    dynsys.decode.sampling.select (exact arithmetic): top-k drops scores below the k-th
    largest; top-p drops, in ascending order, the tokens whose cumulative probability is
    ≤ 1 − p (the top token stays), i.e. keeps rank j iff Q_{j−1} < p, with Q_j the mass of
    the j most likely kept tokens."""
    s = np.asarray(logits, np.float64) / check_float("temperature", temperature, above=0)
    keep = np.ones(s.shape, bool)
    if top_k > 0:
        keep = s >= np.sort(s)[-min(top_k, s.size)]
    if top_p < 1:
        asc = np.sort(np.where(keep, s, -np.inf))
        drop = np.cumsum(softmax(asc)) <= 1 - top_p
        drop[-1] = False
        if drop.any():
            keep &= s > asc[drop].max()
    return keep


def truncation_is_stable(logits, beta: float, temperature: float, top_k: int = 0,
                         top_p: float = 1.0) -> bool:
    """A sufficient condition (Proposition 3) for kept_tokens(ℓ + Δ) = kept_tokens(ℓ) for
    every ‖Δ‖∞ ≤ β, so that Lemma 2 applies to the truncated distributions. Top-k: the k-th
    and (k+1)-th largest logits differ by more than 2β. Top-p, on the m tokens it keeps out
    of the top-k set (renormalised masses Q_j of the j most likely): a logit gap > 2β between
    the m-th and the (m+1)-th, and h₊(Q_{m−1}) < p ≤ h₋(Q_m) (only the first when m is the
    whole set) with
    h±(a) = a e^{±2b}/(a e^{±2b} + 1 − a), b = β/T (the extreme masses a set of prior mass a
    can take under the perturbation)."""
    beta = check_float("beta", beta, at_least=0)
    ell = np.asarray(logits, np.float64)
    desc = np.sort(ell)[::-1]
    if 0 < top_k < ell.size:
        if desc[top_k - 1] - desc[top_k] <= 2 * beta:
            return False
        desc = desc[:top_k]
    if top_p >= 1:
        return True
    m = int(kept_tokens(ell, temperature, top_k, top_p).sum())
    Q = np.cumsum(softmax(desc / temperature))
    k = np.exp(2 * beta / temperature)
    if m >= 2 and Q[m - 2] * k / (Q[m - 2] * k + 1 - Q[m - 2]) >= top_p:
        return False
    if m == desc.size:
        return True
    return bool(desc[m - 1] - desc[m] > 2 * beta
                and top_p <= Q[m - 1] / k / (Q[m - 1] / k + 1 - Q[m - 1]))
