"""The weight-only uniform bound: every measured quantity replaced by a bound from the
weights alone, giving the explicit n0 of the degeneration theorem (proofs/degeneration.md)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dynsys.theory.constants import WeightConstants
from dynsys.theory.exact import check_float32
from dynsys.theory.lemmas import mass_bound, norm_lipschitz


@dataclasses.dataclass(frozen=True)
class UniformBound:
    """For every prompt of length n and every step with r generated keys, in exact arithmetic:
    every head's a(R) ≤ α(n, r) = r e^S / (r e^S + n + 1) and max_v |Δlogit| ≤ gain · α(n, r).
    score_range S = max over heads of 2 sup‖q‖ sup‖k‖/√H; gain from the linearised recursion
    (proofs/degeneration.md); rms_floor the assumed floor of the query stream's rms (0: none,
    the norm layers' ε alone bounds them). score_drift [L, N]: ‖W_q,h‖ Λ₁ γ_l sup‖k‖/√H, the
    bound on |z_j − z′_j| (real against reference score of a prompt key) per unit of α, γ_l the
    recursion's δ_l/α entering block l (for `prompt_n0`; None when built by hand)."""

    score_range: float
    gain: float
    rms_floor: float
    score_drift: np.ndarray | None = None

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

    def prompt_n0(self, steps: int, margin: float, prefix_lse, n: int) -> float:
        """The same threshold with the measured prompt partition functions in place of the
        weight-only (n + 1) e^{−S/2} (proofs/prompt_n0.md).
        prefix_lse [..., L, N]: log Z′ = log Σ_{j∈P} e^{z′_j} of the reference run at each step
        (MarkovStats.prefix_lse) for this prompt of length n. With c = margin/(2 gain),
        ω = c · score_drift and the per-key mean m̃ = min over steps, layers and heads of
        max(Z′ e^{−ω}/n, e^{−S/2}):

            n₀(P) = ⌊(X − e^{−S/2})/m̃⌋ + 1,   X = (steps − 1) e^{S/2} (1 − c)/c

        (0 if X ≤ e^{−S/2}), the least n with n m̃ + e^{−S/2} > X. n ≥ n₀(P) implies the
        theorem's conclusion for P, and n₀(P) ≤ n0(steps, margin) since m̃ ≥ e^{−S/2}."""
        c = margin / (2 * self.gain)
        if steps <= 1 or c >= 1:
            return 0.0
        lo = -self.score_range / 2
        omega = c * self.score_drift
        log_mean = float(np.min(np.maximum(np.asarray(prefix_lse) - omega - math.log(n), lo)))
        log_x = math.log(steps - 1) - lo + math.log1p(-c) - math.log(c)
        if log_x <= lo:
            return 0.0
        log_n = log_x + math.log1p(-math.exp(lo - log_x)) - log_mean
        return float(math.floor(math.exp(log_n)) + 1) if log_n < 700 else math.inf


def uniform_bound(w: WeightConstants, rms_floor: float = 0.0) -> UniformBound:
    """Weight-only constants of the degeneration theorem. With α ≤ 1 the recursion is linear:
    δ_l = c_l α with c₀ = 0 and, per block,

        ‖Δh‖/α ≤ ‖W_o‖ (2 ‖(sup‖v_n‖)_n‖₂ + Λ₁ c ‖(a_n)_n‖₂),
        a_n = 8 sup‖v‖ (‖W_q,n‖ sup‖k‖ + sup‖q_n‖ ‖W_k‖)/√H + ‖W_v‖,
        c ← (c + ‖Δh‖/α)(1 + Lip Λ₂)  (parallel residual: c + ‖Δh‖/α + Lip Λ₂ c),

    gain = max_v ‖w_v ⊙ w_f‖ c_L/√(rms_floor² + ε), every Λ = ‖w‖_∞/√(rms_floor² + ε);
    score_drift[l, h] = ‖W_q,h‖ Λ₁ c_l sup‖k‖/√H with c_l the value entering block l."""
    cfg = w.config
    check_float32(cfg, "uniform_bound")
    kv = np.arange(cfg.num_heads) // cfg.heads_per_kv
    root = math.sqrt(cfg.head_dim)
    q_max, k_max, v_max = w.query_max, w.key_max[:, kv], w.value_max[:, kv]
    c, drift = 0.0, []
    for i in range(cfg.num_layers):
        lam1 = norm_lipschitz(w.norm1[i], rms_floor, cfg.norm_eps)
        lam2 = norm_lipschitz(w.norm2[i], rms_floor, cfg.norm_eps)
        drift.append(w.query[i] * lam1 * c * k_max[i] / root)
        a = (8 * v_max[i] * (w.query[i] * k_max[i] + q_max[i] * w.key[i][kv]) / root
             + w.value[i][kv])
        dh = w.out[i] * (2 * np.linalg.norm(v_max[i]) + lam1 * c * np.linalg.norm(a))
        lip = w.mlp_lipschitz(i) * lam2
        c = c + dh + lip * c if cfg.parallel_residual else (c + dh) * (1 + lip)
    gain = w.head * norm_lipschitz(1.0, rms_floor, cfg.norm_eps) * c
    score_range = float(np.max(2 * q_max * k_max / root))
    return UniformBound(score_range, float(gain), rms_floor, np.asarray(drift))
