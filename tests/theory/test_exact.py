"""dynsys.theory.exact: every certificate entry point refuses a model that does not compute in
float32 (its rounding slack is float32's), and the reference quantities the proofs treat as
exact are float64, checked against an independent numpy float64 recomputation on a qwen2 model
with large value biases (where float32 cancellation put value_mean 1e-4 off)."""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from theory.test_bounds import LLAMA, model_of

from dynsys.decode import prefill
from dynsys.nn import Model
from dynsys.nn.cache import empty_rows
from dynsys.nn.rope import inverse_frequencies
from dynsys.theory import certify, markov_stats, perturbation_bound, uniform_bound, weight_constants
from dynsys.theory.dilution import run_recorded, streams
from dynsys.theory.history import history_bound, history_horizon
from dynsys.theory.margin import certify_margin, margin_bound
from dynsys.theory.periodic import limit_bound, shift_bound

N, G = 40, 4
QWEN2 = dataclasses.replace(LLAMA, family="qwen2", num_kv_heads=2)  # biases on q, k, v


@functools.cache
def float32_case():
    model = model_of(LLAMA, 0, 0.05)
    prompt = np.random.default_rng(0).integers(0, LLAMA.vocab_size, N)
    trace = np.arange(1, G + 1)
    return model, prompt, trace, weight_constants(model), markov_stats(model, prompt, trace)


@pytest.mark.parametrize("change", [dict(dtype="bfloat16"), dict(cache_dtype="bfloat16")],
                         ids=["activations", "cache"])
def test_every_entry_point_refuses_bfloat16(change):
    model, prompt, trace, w, s = float32_case()
    cfg = dataclasses.replace(LLAMA, **change)
    bf16 = Model(cfg, model.params)
    wb = dataclasses.replace(w, config=cfg)
    calls = {
        "weight_constants": lambda: weight_constants(bf16),
        "markov_stats": lambda: markov_stats(bf16, prompt, trace),
        "certify": lambda: certify(bf16, prompt, trace, weights=w),
        "certify_margin": lambda: certify_margin(bf16, prompt, trace, weights=w),
        "perturbation_bound": lambda: perturbation_bound(wb, s),
        "margin_bound": lambda: margin_bound(wb, s),
        "uniform_bound": lambda: uniform_bound(wb),
        "history_bound": lambda: history_bound(bf16, prompt, trace, 1),
        "history_horizon": lambda: history_horizon(bf16, prompt, 1, 2),
        "limit_bound": lambda: limit_bound(bf16, [1, 2], [3], [8], weights=w),
        "shift_bound": lambda: shift_bound(bf16, [1, 2], [3], 8, 0, weights=w),
    }
    name = next(iter(change))
    for call in calls.values():
        with pytest.raises(ValueError, match=rf"{name}='bfloat16'"):
            call()


# --- the float64 reference quantities ----------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("cfg",))
def reference_streams(cfg, params, prefix, tokens, positions):
    """[B, L + 1, D]: the reference steps' streams entering each block and the final norm."""
    B = tokens.shape[0]
    _, _, rec = run_recorded(cfg, params, tokens[:, None], positions[:, None],
                             empty_rows(cfg, B, 1), prefix)
    return jnp.stack([x[:, 0] for x in streams(cfg, rec)], 1)


def rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def rope(cfg, y, position):
    """y [heads, H] at one position: float32 angles as the model forms them, float64 cos/sin."""
    angles = (np.float32(position) * inverse_frequencies(cfg)).astype(np.float64)
    d = cfg.rotary_dim
    cos, sin = np.cos(angles), np.sin(angles)
    x1, x2 = y[:, : d // 2], y[:, d // 2:d]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, y[:, d:]], 1)


def brute(cfg, params, prefix, xs, positions):
    """value_mean, ‖C‖, self_value [G, L, N] by the direct (non-cancelling) formulas, numpy
    float64, from the streams entering each block."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    H, kv = cfg.head_dim, np.arange(cfg.num_heads) // cfg.heads_per_kv
    n = int(prefix.length)
    out = np.zeros((3, len(positions), cfg.num_layers, cfg.num_heads))
    for i in range(cfg.num_layers):
        b = p[f"blocks_{i}"]
        pk = np.asarray(prefix.k[i], np.float64)[:, :, :n]  # [K, H, n]
        pv = np.asarray(prefix.v[i], np.float64)[:, :n]  # [K, n, H]
        for t, pos in enumerate(positions):
            u = rms(xs[t, i], b["norm1"]["scale"], cfg.norm_eps)
            proj = {name: np.einsum("hkD,D->hk", b["attn"][name]["kernel"], u)
                    + b["attn"][name]["bias"] for name in "qkv"}
            q, k = rope(cfg, proj["q"], pos), rope(cfg, proj["k"], pos)
            for h in range(cfg.num_heads):
                keys = np.concatenate([pk[kv[h]].T, k[kv[h]][None]])
                values = np.concatenate([pv[kv[h]], proj["v"][kv[h]][None]])
                z = keys @ q[h] / math.sqrt(H)
                a = np.exp(z - z.max())
                a /= a.sum()
                o = a @ values
                dev = values[:n] - o
                out[0, t, i, h] = a[:n] @ np.linalg.norm(dev, axis=1)
                out[1, t, i, h] = np.linalg.norm((a[:n, None] * dev).T @ keys[:n], 2)
                out[2, t, i, h] = np.linalg.norm(values[n] - o)
    return out


def test_reference_quantities_are_float64():
    """On a qwen2 model whose value biases (±40) dwarf the values' spread, value_mean, ‖C‖ and
    ‖v′_s − o′‖ agree with the direct float64 formulas to 1e-9 relative (float32 cancelling
    formulas were 1e-4 off), and the block and final-norm Jacobians with float64 central
    differences to 1e-7."""
    model = model_of(QWEN2, 3, 0.05)
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 40.0 * np.sign(np.asarray(a)) if path[-2].key == "v"
        and path[-1].key == "bias" else a, model.params)
    model = Model(QWEN2, params)
    prompt = np.random.default_rng(3).integers(0, QWEN2.vocab_size, N)
    trace = np.random.default_rng(4).integers(0, QWEN2.vocab_size, G)
    prefix = prefill(model, prompt, capacity=64)
    s = markov_stats(model, prompt, trace, prefix)
    positions = np.arange(N, N + G)
    xs = np.asarray(reference_streams(QWEN2, params, prefix, jnp.asarray(trace),
                                      jnp.asarray(positions)), np.float64)
    want = brute(QWEN2, params, prefix, xs, positions)
    for got, exact in zip((s.value_mean, s.covariance, s.self_value), want):
        np.testing.assert_allclose(got, exact, rtol=1e-9)
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    eye, h = np.eye(QWEN2.hidden_size), 1e-4

    def central(f, x):  # [G, D, D] by central differences, column e
        return np.stack([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in eye], -1)

    final = p["final_norm"]["scale"]
    jf = central(lambda x: rms(x, final, QWEN2.norm_eps), s.final_input)
    np.testing.assert_allclose(s.final_jacobian, jf, rtol=1e-7, atol=1e-7 * np.abs(jf).max())
    w = weight_constants(model)
    for i in range(QWEN2.num_layers):
        jb = central(lambda x, i=i: x + w.mlp_branch(i, x), s.mlp_input[:, i])
        np.testing.assert_allclose(s.block_jacobian[:, i], jb, atol=1e-7 * np.abs(jb).max())
