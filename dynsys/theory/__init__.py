"""The theory behind the argument, as code: attention-dilution probes (dilution), the closed
form lemmas (lemmas), weight constants (constants), the exact reference run (reference), the
multi-layer recursion and certificate along a trace (certificate), and the weight-only
uniform bound with its n0 (uniform). Statements and proofs: proofs/."""

from dynsys.theory.certificate import Bound, Certificate, certify, perturbation_bound
from dynsys.theory.constants import WeightConstants, weight_constants
from dynsys.theory.dilution import Drift, Probe, dilute, position_drift, probe_trace
from dynsys.theory.lemmas import (
    GELU_CURVE,
    GELU_SLOPE,
    SILU_CURVE,
    SILU_SLOPE,
    extremal_scores,
    mass_bound,
    norm_curvature,
    norm_lipschitz,
)
from dynsys.theory.reference import MarkovStats, markov_stats
from dynsys.theory.uniform import UniformBound, uniform_bound

__all__ = [
    "GELU_CURVE",
    "GELU_SLOPE",
    "SILU_CURVE",
    "SILU_SLOPE",
    "Bound",
    "Certificate",
    "Drift",
    "MarkovStats",
    "Probe",
    "UniformBound",
    "WeightConstants",
    "certify",
    "dilute",
    "extremal_scores",
    "markov_stats",
    "mass_bound",
    "norm_curvature",
    "norm_lipschitz",
    "perturbation_bound",
    "position_drift",
    "probe_trace",
    "uniform_bound",
    "weight_constants",
]
