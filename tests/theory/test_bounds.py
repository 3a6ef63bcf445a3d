"""The constants of proofs/multi_layer.md and proofs/degeneration.md: activation and norm-layer
bounds, MLP bounds, and the multi-layer bound against measured perturbations."""

import dataclasses
import functools
import itertools
import math

import jax
import numpy as np
import pytest
from conftest import randomize
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf, expit

from dynsys import theory as bounds
from dynsys.config import ModelConfig
from dynsys.decode import generate, prefill
from dynsys.dynamics.traces import periodicity
from dynsys.nn import MLP, Model, init_params, norm_layer
from dynsys.theory import (
    Bound,
    Certificate,
    UniformBound,
    certify,
    markov_stats,
    norm_curvature,
    norm_lipschitz,
    uniform_bound,
    weight_constants,
)
from dynsys.theory.dilution import probe_trace
from dynsys.theory.lemmas import softmax_box_max

LLAMA = ModelConfig(family="llama", vocab_size=61, hidden_size=16, intermediate_size=32,
                    num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
                    max_position_embeddings=256, initializer_range=0.2)
NEOX = ModelConfig(family="gpt_neox", vocab_size=61, hidden_size=32, intermediate_size=64,
                   num_layers=2, num_heads=4, num_kv_heads=4, head_dim=8, rotary_pct=0.5,
                   max_position_embeddings=256, initializer_range=0.2)


def test_activation_constants():
    x = np.linspace(-40, 40, 800001)
    s = expit(x)
    silu1, silu2 = s * (1 + x * (1 - s)), s * (1 - s) * (2 + x * (1 - 2 * s))
    phi, Phi = np.exp(-x * x / 2) / math.sqrt(2 * math.pi), (1 + erf(x / math.sqrt(2))) / 2
    gelu1, gelu2 = Phi + x * phi, (2 - x * x) * phi
    assert np.abs(silu1).max() <= bounds.SILU_SLOPE and np.abs(silu2).max() <= bounds.SILU_CURVE
    assert np.abs(gelu1).max() <= bounds.GELU_SLOPE and np.abs(gelu2).max() <= bounds.GELU_CURVE


# --- norm layers and MLPs, in float64 -------------------------------------------------------


def norm64(x, w, b, eps, centred):
    """RMSNorm (centred=False) or LayerNorm, its Jacobian and the spread (rms or std) of x."""
    D = x.shape[-1]
    P = np.eye(D) - (np.ones((D, D)) / D if centred else 0)
    c = P @ x
    mu = c @ c / D + eps
    y = w * c / math.sqrt(mu) + b
    J = (w[:, None] * (np.eye(D) - np.outer(c, c) / (D * mu)) @ P) / math.sqrt(mu)
    return y, J, math.sqrt(c @ c / D)


@settings(deadline=None, max_examples=150)
@given(st.integers(0, 2**32 - 1), st.sampled_from([False, True]),
       st.floats(-3, 1), st.floats(-4, 0.5))
def test_norm_lipschitz_and_curvature(seed, centred, log_rms, log_step):
    """Λ = ‖w‖_∞/√((rms x′ − ‖d‖/√D)₊² + ε) bounds the difference quotient and
    ½ κ ‖d‖², κ = 6‖w‖_∞/(√D (floor² + ε)), the first-order remainder."""
    rng = np.random.default_rng(seed)
    D, eps = int(rng.integers(4, 64)), 1e-5
    w, b = 1 + 0.5 * rng.standard_normal(D), 0.3 * rng.standard_normal(D)
    x = 10 ** log_rms * rng.standard_normal(D)
    d = rng.standard_normal(D)
    d *= 10 ** log_step * np.linalg.norm(x) / np.linalg.norm(d)
    y0, J, spread = norm64(x, w, b, eps, centred)
    y1 = norm64(x + d, w, b, eps, centred)[0]
    gain, size = np.abs(w).max(), np.linalg.norm(d)
    floor = spread - size / math.sqrt(D)
    assert np.linalg.norm(y1 - y0) <= norm_lipschitz(gain, floor, eps) * size * (1 + 1e-9)
    assert np.linalg.norm(y1 - y0 - J @ d) <= (norm_curvature(gain, floor, eps, D) * size ** 2
                                               / 2 * (1 + 1e-9) + 1e-12)


def mlp64(y, p, family):
    """The MLP and its Jacobian in float64 (w: the kernels as [in, out] matrices, [D, F] and
    [F, D])."""
    w = {name: p[name]["kernel"].T for name in p}
    if family == "gpt_neox":
        h = y @ w["up"] + p["up"]["bias"]
        phi = np.exp(-h * h / 2) / math.sqrt(2 * math.pi)
        g, g1 = h * (1 + erf(h / math.sqrt(2))) / 2, (1 + erf(h / math.sqrt(2))) / 2 + h * phi
        out = g @ w["down"] + p["down"]["bias"]
        return out, (w["up"] * g1) @ w["down"]
    g, u = y @ w["gate"], y @ w["up"]
    s = expit(g)
    silu, silu1 = g * s, s * (1 + g * (1 - s))
    jac = (w["gate"] * silu1 * u + w["up"] * silu) @ w["down"]
    return (silu * u) @ w["down"], jac


@functools.cache
def base_params(cfg: ModelConfig):
    """The parameter tree's shapes (randomize redraws every leaf)."""
    return jax.eval_shape(lambda: init_params(cfg, 0))


def model_of(cfg: ModelConfig, seed: int, std: float) -> Model:
    return Model(cfg, randomize(base_params(cfg), seed, std))


@settings(deadline=None, max_examples=30)
@given(st.sampled_from([LLAMA, NEOX]), st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.5]),
       st.floats(-4, 0))
def test_mlp_lipschitz_and_curvature(cfg, seed, std, log_step):
    """On outputs y, y′ of the norm layer: ‖M(y) − M(y′)‖ ≤ Lip ‖y − y′‖ (weights only) and
    ‖J_M(y) − J_M(y′)‖ ≤ κ_M ‖y − y′‖ with |u_i| bounded on the segment."""
    model = model_of(cfg, seed % 1000, std)
    w = weight_constants(model)
    p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()}
         for k, v in model.params["blocks_0"]["mlp"].items()}
    scale = np.asarray(model.params["blocks_0"]["norm2"]["scale"], np.float64)
    shift = np.asarray(model.params["blocks_0"]["norm2"].get("bias", 0 * scale), np.float64)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(cfg.hidden_size)
    x2 = x + 10 ** log_step * np.linalg.norm(x) * rng.standard_normal(cfg.hidden_size)
    centred = cfg.family == "gpt_neox"
    y, y2 = (norm64(v, scale, shift, cfg.norm_eps, centred)[0] for v in (x, x2))
    (m, jm), (m2, jm2) = mlp64(y, p, cfg.family), mlp64(y2, p, cfg.family)
    size = np.linalg.norm(y2 - y)
    assert np.linalg.norm(m2 - m) <= w.mlp_lipschitz(0) * size * (1 + 1e-9)
    up_abs = None
    if w.up_cols is not None:
        up_abs = np.abs(p["up"]["kernel"] @ y) + w.up_cols[0] * size
    assert np.linalg.norm(jm2 - jm, 2) <= w.mlp_curvature(0, up_abs) * size * (1 + 1e-9)


def test_float64_layers_match_the_model():
    """The float64 norm and MLP above are the model's (so the checks above are about it)."""
    for cfg in (LLAMA, NEOX):
        model = model_of(cfg, 1, 0.3)
        block = model.params["blocks_0"]
        x = np.random.default_rng(2).standard_normal((3, cfg.hidden_size)).astype(np.float32)
        y = np.asarray(norm_layer(cfg).apply({"params": block["norm2"]}, x))
        scale = np.asarray(block["norm2"]["scale"], np.float64)
        shift = np.asarray(block["norm2"].get("bias", 0 * scale), np.float64)
        ours = np.stack([norm64(r.astype(np.float64), scale, shift, cfg.norm_eps,
                                cfg.family == "gpt_neox")[0] for r in x])
        np.testing.assert_allclose(y, ours, atol=1e-4)
        p = {k: {n: np.asarray(a, np.float64) for n, a in v.items()}
             for k, v in block["mlp"].items()}
        np.testing.assert_allclose(np.asarray(MLP(cfg).apply({"params": block["mlp"]}, y)),
                                   np.stack([mlp64(r, p, cfg.family)[0] for r in y]), atol=1e-4)


# --- the multi-layer bound --------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(st.sampled_from([LLAMA, NEOX]), st.integers(0, 2**32 - 1),
       st.sampled_from([0.05, 0.2, 0.5]), st.integers(4, 58))
def test_multi_layer_bound_holds(cfg, seed, std, n):
    """On random models and random traces (any tokens), the bound of proofs/multi_layer.md is
    above the measured a(R), residual-stream and logit perturbations at every step and layer
    (up to float32 rounding, ~1e-6), certified steps do not flip, and the weight-only bound of
    proofs/degeneration.md is above them too."""
    model = model_of(cfg, seed % 1000, std)
    rng = np.random.default_rng(seed)
    prompt, trace = rng.integers(0, cfg.vocab_size, n), rng.integers(0, cfg.vocab_size, 6)
    prefix = prefill(model, prompt, capacity=64)
    probe = probe_trace(model, prompt, trace, prefix)
    w = weight_constants(model)
    cert = certify(model, prompt, trace, prefix, w)
    tol = 1e-5 * (1 + probe.residual.max())
    assert (cert.bound.mass >= probe.mass - 1e-6).all()
    assert (cert.bound.residual >= probe.residual - tol).all()
    assert (cert.bound.logits >= probe.logit_change - 2e-5).all()
    assert not (cert.certified & probe.flipped).any() and cert.horizon <= probe.agreement
    np.testing.assert_array_equal(cert.markov_next, probe.markov_next)
    uniform = uniform_bound(w)
    generated = np.arange(6)
    assert (uniform.mass(n, generated)[:, None, None] >= probe.mass - 1e-6).all()
    assert (uniform.logits(n, generated) >= probe.logit_change - 2e-5).all()


def test_reference_quantities_within_weight_bounds():
    """The measured query and key norms never exceed the weight-only sup bounds."""
    model = model_of(NEOX, 4, 0.5)
    w = weight_constants(model)
    rng = np.random.default_rng(0)
    prompt = rng.integers(0, 61, 50)
    s = markov_stats(model, prompt, rng.integers(0, 61, 6), prefill(model, prompt, capacity=64))
    kv = np.arange(NEOX.num_heads) // NEOX.heads_per_kv
    assert (s.query <= w.query_max[None] * (1 + 1e-5)).all()
    assert (s.self_key <= w.key_max[None][..., kv] * (1 + 1e-5)).all()
    assert (s.prefix_key <= w.key_max[..., kv] * (1 + 1e-5)).all()


def test_certificate_counts_leading_certified_steps():
    logits = np.array([0.0, 0.01, 0.3, 0.01])
    cert = Certificate(Bound(None, None, logits), np.array([0.1, 0.1, 0.1, 0.5]), None)
    np.testing.assert_array_equal(cert.certified, [True, True, False, True])
    assert cert.horizon == 2
    assert Certificate(Bound(None, None, logits[:2]), np.ones(2), None).horizon == 2


def test_n0_is_the_threshold():
    """gain · α(n, G − 1) < margin/2 exactly from n₀ on."""
    u = UniformBound(score_range=3.0, gain=40.0, rms_floor=0.0)
    for steps, margin in [(2, 0.5), (16, 0.1), (64, 0.01)]:
        n0 = int(u.n0(steps, margin))
        assert u.logits(n0, steps - 1) < margin / 2 <= u.logits(n0 - 1, steps - 1)
    assert u.n0(1, 0.1) == 0 and u.n0(10, 100.0) == 0
    assert UniformBound(800.0, 1.0, 0.0).n0(10, 0.1) == math.inf


@pytest.mark.parametrize("cfg", [LLAMA, NEOX])
def test_uniform_bound_shrinks_with_a_floor(cfg):
    """A floor on the query stream's rms only lowers the weight-only constants."""
    w = weight_constants(model_of(cfg, 0, 0.2))
    loose, tight = uniform_bound(w), uniform_bound(w, rms_floor=0.5)
    assert tight.gain < loose.gain and tight.n0(8, 0.1) <= loose.n0(8, 0.1)


@settings(deadline=None, max_examples=200)
@given(st.integers(1, 40), st.integers(0, 2**32 - 1), st.integers(0, 30))
def test_orbit_periodicity_is_tail_and_cycle(size, seed, extra):
    """The corollary's combinatorial half: an orbit of a map on a finite set, long enough for
    3 copies of its cycle, has period = cycle length and onset = tail (proofs/degeneration.md)."""
    rng = np.random.default_rng(seed)
    f = rng.integers(0, size, size)
    orbit, first = [int(rng.integers(0, size))], {}
    while orbit[-1] not in first:
        first[orbit[-1]] = len(orbit) - 1
        orbit.append(int(f[orbit[-1]]))
    tail = first[orbit[-1]]
    cycle = len(orbit) - 1 - tail
    while len(orbit) < tail + 3 * cycle + extra:
        orbit.append(int(f[orbit[-1]]))
    found = periodicity(np.asarray(orbit), k=3)
    assert (found.period, found.onset) == (cycle, tail) and found.repeats >= 3


# --- the prompt-dependent n₀ (proofs/degeneration.md) ------------------------------------------


@pytest.mark.parametrize("cfg", [LLAMA, NEOX])
def test_prompt_n0_never_above_weight_only_and_is_the_threshold(cfg):
    """n₀(P) ≤ n₀ whatever the measured log Z′ (below the floor e^{−S/2} per key too), and it is
    the least n with (G−1) e^{S/2} / ((G−1) e^{S/2} + n m̃ + e^{−S/2}) < c, m̃ the floored
    per-key mean of the docstring."""
    u = uniform_bound(weight_constants(model_of(cfg, 0, 0.02)))
    rng = np.random.default_rng(0)
    half = u.score_range / 2
    for steps, c in [(2, 0.5), (8, 0.1), (32, 0.01), (8, 0.9)]:
        margin = 2 * u.gain * c
        for n in (16, 1000):
            lse = math.log(n) + rng.uniform(-1.5 * half, 1.5 * half, (steps, cfg.num_layers,
                                                                     cfg.num_heads))
            n0p, n0 = u.prompt_n0(steps, margin, lse, n), u.n0(steps, margin)
            assert n0p <= n0
            mean = np.exp(np.maximum(lse - c * u.score_drift - math.log(n), -half)).min()

            def alpha(m, steps=steps, mean=mean):
                return (steps - 1) * math.exp(half) / ((steps - 1) * math.exp(half) + m * mean
                                                        + math.exp(-half))
            assert alpha(n0p) < c * (1 + 1e-12) and (n0p == 0 or alpha(n0p - 1) >= c * (1 - 1e-12))


def test_prompt_n0_theorem_end_to_end():
    """A model whose attention scores spread (q, k weights of std 0.07: S ≈ 4.4) but whose values,
    outputs and MLPs are small (std 5e-4), no RoPE, G = 8, n = 120: the weight-only n₀ (460) is
    above n, the prompt-dependent n₀(P) from the reference run's Z′_P is below it, and the
    greedy trace is the Markov orbit for all G steps, as the theorem with n₀(P) says. Inside the
    proof: every head's measured a(R) ≤ r e^{S/2}/(r e^{S/2} + max(Z′ e^{−ω}, n e^{−S/2})
    + e^{−S/2})."""
    cfg = dataclasses.replace(LLAMA, use_rope=False)
    model = model_of(cfg, 0, 5e-4)
    params = jax.tree_util.tree_map(np.asarray, model.params)
    rng = np.random.default_rng(1)
    for i in range(cfg.num_layers):
        for name in ("q", "k"):
            dense = params[f"blocks_{i}"]["attn"][name]
            dense["kernel"] = 0.07 * rng.standard_normal(dense["kernel"].shape)
    params["embed"]["embedding"] = 0.2 * rng.standard_normal(params["embed"]["embedding"].shape)
    params["lm_head"]["kernel"] = 0.2 * rng.standard_normal(params["lm_head"]["kernel"].shape)
    model = Model(cfg, jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), params))
    steps, n = 8, 120
    u = uniform_bound(weight_constants(model))
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, n)
    prefix = prefill(model, prompt, capacity=128)
    trace = np.asarray(generate(model, prompt[None], steps + 1).tokens)[0]
    stats = markov_stats(model, prompt, trace[:steps], prefix)
    mu = stats.margin.min()
    n0, n0p = u.n0(steps, mu), u.prompt_n0(steps, mu, stats.prefix_lse, n)
    assert n < n0 and 10 < n0p <= n
    np.testing.assert_array_equal(trace[1:], stats.next)  # trace = orbit of f_P, G steps
    half, c = u.score_range / 2, mu / (2 * u.gain)
    r = np.arange(steps)[:, None, None] * math.exp(half)
    kept = np.maximum(np.exp(stats.prefix_lse - c * u.score_drift), n * math.exp(-half))
    mass = probe_trace(model, prompt, trace[:steps], prefix).mass
    assert (mass <= r / (r + kept + math.exp(-half)) * (1 + 1e-5)).all()


def test_softmax_box_max_against_vertices():
    """The exact maximum of Σ softmax(z)_i y_i over a box of scores equals the brute-force
    maximum over all 2^m vertices (m ≤ 6), and no random interior point exceeds it; scales from
    1e-2 to 1e2, degenerate boxes (lo = hi) and far-apart scores (underflow) included."""
    rng = np.random.default_rng(0)
    for _ in range(150):
        m = int(rng.integers(1, 7))
        y = rng.normal(size=m) * rng.choice([0.01, 1.0, 100.0])
        lo = rng.normal(size=m) * 3 - rng.choice([0.0, 50.0])
        hi = lo + rng.exponential(2.0, size=m) * rng.choice([0.0, 1.0, 10.0])
        got = softmax_box_max(y, lo, hi)

        def value(z, y=y):
            a = np.exp(z - z.max())
            return a @ y / a.sum()

        vertices = max(value(np.where(np.array(v, bool), hi, lo))
                       for v in itertools.product([0, 1], repeat=m))
        assert abs(got - vertices) <= 1e-12 * (1 + abs(vertices))
        inside = [value(lo + (hi - lo) * rng.random(m)) for _ in range(100)]
        assert max(inside) <= got + 1e-12 * (1 + abs(got))
