"""A family of tested claims corrected for multiplicity: Holm's step-down procedure.

With m p-values sorted p_(1) ≤ … ≤ p_(m), Holm's adjusted p-values are
    p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)),
and rejecting every claim with p̃ ≤ α controls the family-wise error rate at α under any
dependence. A claim's adjusted verdict is its raw verdict (holds or fails: the direction of
the rejection) when p̃ ≤ α, else inconclusive.
"""

from __future__ import annotations

import numpy as np

from dynsys.stats.verdict import INCONCLUSIVE, Verdict

ALPHA = 0.05  # the family-wise error rate of each experiment's family of tested claims


def holm(p_values) -> np.ndarray:
    """Holm's adjusted p-values, in the order given."""
    p = np.asarray(p_values, np.float64)
    if p.ndim != 1 or not np.all((p >= 0) & (p <= 1)):
        raise ValueError(f"p-values must be a 1-D array in [0, 1], got {p}")
    order = np.argsort(p, kind="stable")
    m = p.size
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def adjusted_verdict(raw: Verdict, adjusted_p: float, alpha: float = ALPHA) -> Verdict:
    """The raw verdict if it is decided and survives the correction, else inconclusive."""
    return raw if adjusted_p <= alpha and raw != INCONCLUSIVE else INCONCLUSIVE
