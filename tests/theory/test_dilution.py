"""Attention dilution: the single-head identity and bound (proofs/single_head.md), the probes
against a brute-force recomputation, and position drift (proofs/position_drift.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomize
from hypothesis import given, settings
from hypothesis import strategies as st

from dynsys.checks import NonFiniteError
from dynsys.config import ModelConfig
from dynsys.decode import generate, logits, prefill, run
from dynsys.dynamics.compare import compare
from dynsys.nn import Model, init_params
from dynsys.nn.cache import RowCache, empty_rows
from dynsys.nn.rope import apply_rope
from dynsys.theory import extremal_scores, mass_bound
from dynsys.theory.dilution import dilute, position_drift, probe_trace, run_recorded

S_MAX = 256
heads = jax.jit(jax.vmap(dilute))


def exact(z, v, removed, present):
    """float64 reference: a(R), o, o′, ō_R by direct softmaxes."""
    z, v = np.asarray(z, np.float64), np.asarray(v, np.float64)

    def weights(where):
        return np.exp(np.where(where, z, -np.inf) - z[where].max()) if where.any() else 0 * z

    def mean(where):
        p = weights(where)
        return p @ v / max(p.sum(), 1e-300)

    e = weights(present)
    return (e[removed].sum() / e.sum(), mean(present), mean(present & ~removed),
            mean(removed))


@st.composite
def single_heads(draw):
    """One query q [H] against s ≤ S_MAX keys K [s, H] with values V [s, H] (padded to S_MAX),
    r < s keys removed, scores z = Kq/√H in float32. q and K at scales 1e-3..30 (|z| up to
    ~10⁴, far past exp's float32 range); keys i.i.d., all equal, or the removed ones along q
    and the rest against it (removed scores far above the rest), or the reverse; values at
    scales 1e-30..1e30."""
    s = draw(st.integers(2, S_MAX))
    r = draw(st.integers(0, s - 1))
    H = draw(st.sampled_from([1, 4, 16]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    qscale, kscale = (draw(st.sampled_from([1e-3, 1.0, 30.0])) for _ in range(2))
    vscale = draw(st.sampled_from([1e-30, 1e-3, 1.0, 1e4, 1e30]))
    mode = draw(st.sampled_from(["random", "equal", "removed_high", "removed_low"]))
    removed = np.zeros(S_MAX, bool)
    removed[rng.permutation(s)[:r]] = True
    q = qscale * rng.standard_normal(H)
    k = kscale * rng.standard_normal((S_MAX, H))
    if mode == "equal":
        k[:] = k[0]
    elif mode != "random":
        sign = np.where(removed, 1.0, -1.0) * (1 if mode == "removed_high" else -1)
        k = kscale * (sign[:, None] * q / np.linalg.norm(q) * np.sqrt(H)
                      + 0.1 * rng.standard_normal((S_MAX, H)))
    q, k = q.astype(np.float32), k.astype(np.float32)
    z = (k @ q) / np.float32(np.sqrt(H))
    v = (vscale * rng.standard_normal((S_MAX, H))).astype(np.float32)
    present = np.arange(S_MAX) < s
    return z, v, removed, present


@settings(deadline=None, max_examples=120)
@given(single_heads())
def test_single_head_identity_and_bound(problem):
    """`dilute` against float64 softmaxes: Proposition 1 (exactly in float64, to rounding in
    float32), Corollary 1 and Proposition 2 with lo, hi the kept and removed score ranges."""
    z, v, removed, present = problem
    d = jax.tree_util.tree_map(lambda x: np.asarray(x[0]), heads(*(x[None] for x in problem)))
    mass, out, kept, gone = exact(z, v, removed, present)
    vmax = np.abs(v).max()
    # the identity, exactly in float64 and to rounding in float32
    np.testing.assert_allclose(out - kept, mass * (gone - kept), atol=1e-12 * vmax)
    assert np.abs((d.out - d.kept) - d.mass * (d.removed - d.kept)).max() <= 3e-5 * vmax
    np.testing.assert_allclose(d.mass, mass, rtol=2e-4, atol=1e-7)
    np.testing.assert_allclose(d.kept, kept, atol=3e-5 * vmax)
    r, s = removed.sum(), present.sum()
    hi = z[removed].max() if r else 0.0
    bound = mass_bound(r, s, z[present & ~removed].min(), hi)
    assert mass <= bound * (1 + 1e-9) and d.mass <= bound * (1 + 2e-4) + 1e-7
    if r:
        v64 = v.astype(np.float64)  # squares of 1e30 overflow float32
        diam = np.linalg.norm(v64[removed][:, None] - v64[present & ~removed][None],
                              axis=-1).max()
        change = np.linalg.norm(d.out.astype(np.float64) - d.kept)
        assert change <= mass * diam * (1 + 1e-4) + 3e-5 * vmax


def test_extremal_scores_attain_the_bound():
    """Removed scores at hi and the rest at lo give a(R) equal to the bound, and values e₁ on R,
    0 elsewhere give ‖o − o′‖ = a(R) · diam(values)."""
    for r, s, lo, hi in [(1, 2, 0.0, 0.0), (3, 100, -2.0, 5.0), (10, 256, -40.0, 40.0),
                         (1, 256, 3.0, -3.0), (128, 129, 0.0, 80.0)]:
        z = np.zeros(S_MAX, np.float32)
        z[:s] = extremal_scores(r, s, lo, hi)
        v = np.zeros((S_MAX, 4), np.float32)
        v[:r, 0] = 1.0
        removed, present = np.arange(S_MAX) < r, np.arange(S_MAX) < s
        d = heads(z[None], v[None], removed[None], present[None])
        np.testing.assert_allclose(d.mass[0], mass_bound(r, s, lo, hi), rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(d.out[0] - d.kept[0]), d.mass[0], rtol=1e-5)


def test_mass_decreases_with_the_prefix():
    """Nested prefixes: a(R) strictly decreases as keys are appended (deterministic). Independent
    i.i.d. prefixes: the median of a(R) over 200 draws decreases with s, like r/s; and the bound
    with fixed lo, hi decreases in s and tends to 0."""
    S, r = 2048, 4
    rng = np.random.default_rng(0)
    z = rng.standard_normal(S).astype(np.float32)
    v = np.zeros((S, 1), np.float32)
    removed = np.arange(S) < r
    lengths = np.array([8, 16, 64, 256, 1024, 2048])
    present = np.arange(S)[None] < lengths[:, None]
    nested = jax.jit(jax.vmap(dilute, (None, None, None, 0)))(z, v, removed, present).mass
    assert (np.diff(np.asarray(nested)) < 0).all()

    def median_mass(s):
        zs = rng.standard_normal((200, S_MAX)).astype(np.float32)
        ok = np.broadcast_to(np.arange(S_MAX) < s, zs.shape)
        gone = np.broadcast_to(np.arange(S_MAX) < r, zs.shape)
        return float(np.median(heads(zs, np.zeros((200, S_MAX, 1), np.float32), gone, ok).mass))

    medians = np.array([median_mass(s) for s in (16, 64, 256)])
    assert (np.diff(medians) < 0).all()
    np.testing.assert_allclose(medians * np.array([16, 64, 256]) / r, 1.0, rtol=0.5)
    bounds = mass_bound(r, np.array([10, 100, 10**4, 10**8]), -1.0, 1.0)
    assert (np.diff(bounds) < 0).all() and bounds[-1] < 1e-6


# --- the probes -------------------------------------------------------------------------------

def random_model(cfg: ModelConfig, seed: int) -> Model:
    """conftest.random_model without running the initialiser: every leaf is redrawn anyway."""
    shapes = jax.eval_shape(lambda: init_params(cfg, 0))
    return Model(cfg, randomize(shapes, seed, cfg.initializer_range))


PROBED = ModelConfig(family="llama", vocab_size=61, hidden_size=16, intermediate_size=32,
                     num_layers=2, num_heads=2, num_kv_heads=1, head_dim=8,
                     max_position_embeddings=256, initializer_range=0.2)


@jax.jit
def _full(params, tokens, positions):
    """Plain full-sequence run (no prefix, no cache reuse): logits and each block's output."""
    out = run(PROBED, params, tokens, positions, empty_rows(PROBED, *tokens.shape),
              jnp.ones(tokens.shape, bool), None, record=True)
    return (logits(PROBED, params, out.hidden),
            [out.recorded("resid_post", i) for i in range(2)])


def test_probes_agree_with_brute_force():
    """Real step t: the full sequence P + x_{n+1..n+G}, read at position n+t−1. Reference step
    t: P + [x_{n+t}] with x_{n+t} at position n+t−1 (skipping), no cache. Layer 0's a(R): from
    the embeddings, norm, projections and RoPE recomputed in numpy."""
    model = random_model(PROBED, seed=3)
    rng = np.random.default_rng(1)
    n, G = 40, 6
    prompt = rng.integers(0, 61, n)
    trace = np.asarray(generate(model, prompt[None], G).tokens)[0]
    probe = probe_trace(model, prompt, trace)

    full = np.concatenate([prompt, trace])[None]
    real_logits, real = _full(model.params, full, np.arange(n + G)[None])
    real_logits = np.asarray(real_logits)[0, n:]
    rows = np.concatenate([np.broadcast_to(prompt, (G, n)), trace[:, None]], 1)
    positions = np.concatenate([np.broadcast_to(np.arange(n), (G, n)),
                                np.arange(n, n + G)[:, None]], 1)
    ref_logits, ref = _full(model.params, rows, positions)
    ref_logits = np.asarray(ref_logits)[:, -1]
    np.testing.assert_allclose(probe.logit_change, np.abs(real_logits - ref_logits).max(-1),
                               atol=1e-5)
    np.testing.assert_array_equal(probe.real_next[:-1], trace[1:])
    np.testing.assert_array_equal(probe.markov_next, ref_logits.argmax(-1))
    top2 = np.sort(ref_logits, -1)[:, -2:]
    np.testing.assert_allclose(probe.margin, top2[:, 1] - top2[:, 0], atol=1e-5)
    assert probe.logit_change[0] < 1e-5 and probe.agreement >= 1  # step 1: no generated keys

    measured = np.stack([np.linalg.norm(np.asarray(a)[0, n:] - np.asarray(b)[:, -1], axis=-1)
                         for a, b in zip(real, ref)], 1)
    np.testing.assert_allclose(probe.residual, measured, atol=1e-5)

    p = jax.tree_util.tree_map(np.asarray, model.params)
    block = p["blocks_0"]
    x = p["embed"]["embedding"][full[0]]
    u = x / np.sqrt((x * x).mean(-1, keepdims=True) + PROBED.norm_eps) * block["norm1"]["scale"]

    def rotated(name):  # [T, heads, H]
        y = np.einsum("TD,NHD->TNH", u, block["attn"][name]["kernel"])
        return np.asarray(apply_rope(y[None], np.arange(n + G)[None], PROBED))[0]

    z = np.einsum("TNH,SH->NTS", rotated("q")[n:], rotated("k")[:, 0]) / np.sqrt(8)
    for t in range(G):
        a = np.exp(z[:, t, :n + t + 1] - z[:, t, :n + t + 1].max(-1, keepdims=True))
        np.testing.assert_allclose(probe.mass[t, 0], a[:, n:n + t].sum(-1) / a.sum(-1),
                                   rtol=1e-4, atol=1e-7)
    assert np.abs(probe.identity_error).max() < 1e-5


def test_probe_logit_change_is_compare_dilution():
    """The probe's logit change and compare's dilution part are the same quantity,
    ‖logits(real) − logits(P + [x_t] at n+t−1)‖∞, computed by two code paths (compare drops
    the last step, which has no next token to compare): they agree to float32 rounding, and so
    do the position-exact next tokens."""
    model = random_model(PROBED, seed=5)
    prompt = np.random.default_rng(2).integers(0, PROBED.vocab_size, 50)
    trace = np.asarray(generate(model, prompt[None], 12).tokens)[0]
    probe = probe_trace(model, prompt, trace)
    c = compare(model, prompt, trace, memory_ks=(1,))
    assert probe.logit_change[1:].min() > 1e-3  # a real perturbation, not rounding
    np.testing.assert_allclose(c.dilution, probe.logit_change[:-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(c.agree_position, probe.markov_next[:-1] == trace[1:])


def test_probing_leaves_generation_alone():
    """Ordinary generation requests no intermediates: the model call it makes returns only
    (hidden, rows), so the sown and captured values are dead code there and compile away; the
    probes run in their own jitted function, and generation gives the same tokens after it."""
    model = random_model(PROBED, seed=6)
    prompt = np.random.default_rng(3).integers(0, PROBED.vocab_size, (1, 30))
    tokens, positions = jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3), jnp.int32)
    out = jax.eval_shape(lambda p: run(PROBED, p, tokens, positions, empty_rows(PROBED, 2, 3),
                                       tokens >= 0, None), model.params)
    assert out.hidden.shape == (2, 3, PROBED.hidden_size) and isinstance(out.rows, RowCache)
    assert out.recorded is None
    _, _, recorded = jax.eval_shape(lambda p: run_recorded(
        PROBED, p, tokens, positions, empty_rows(PROBED, 2, 3), None), model.params)
    for layer in (0, 1):  # what the probes read
        assert recorded("query", layer).shape == (2, 3, PROBED.num_heads, PROBED.head_dim)
        assert recorded("resid_post", layer).shape == (2, 3, PROBED.hidden_size)
    before = np.asarray(generate(model, prompt, 10).tokens)
    probe_trace(model, prompt[0], before[0])
    np.testing.assert_array_equal(np.asarray(generate(model, prompt, 10).tokens), before)


# --- position drift ---------------------------------------------------------------------------


def test_position_drift_is_periodic_not_diluted():
    """Prompt of period N = 3: f_{P,N} − f_{P,0} exchanges N keys and decays like 1/n;
    f_{P,1} − f_{P,0} moves every key's relative position and decays far more slowly. Without
    RoPE there is no drift at all."""
    cfg = PROBED.replace(hidden_size=32, intermediate_size=64, num_heads=4, num_kv_heads=2,
                         max_position_embeddings=4096)
    model = random_model(cfg, seed=0)
    nope = model.with_rope(False)
    tokens = np.arange(61)
    drift = {}
    for n in (127, 2047):
        prompt = np.resize(np.array([5, 17, 42]), n)
        prefix = prefill(model, prompt, capacity=2048)
        drift[n] = position_drift(model, prompt, tokens, [1, 3], prefix).logit_change.mean(1)
        flat = position_drift(nope, prompt, tokens, [1, 3], prefill(nope, prompt, capacity=2048))
        assert flat.logit_change.max() < 1e-5 and not flat.changed.any()
    assert drift[2047][1] < drift[127][1] / 4
    assert drift[2047][0] > 3 * drift[2047][1]


def test_probes_refuse_a_prefix_of_another_prompt_and_non_finite_models():
    model = random_model(PROBED, seed=3)
    prompt, other = np.arange(20) % 61, (np.arange(20) + 1) % 61
    with pytest.raises(ValueError, match="another model or prompt"):
        probe_trace(model, prompt, [1, 2, 3], prefix=prefill(model, other))
    with pytest.raises(ValueError, match="another model or prompt"):
        position_drift(model, prompt, [1, 2], [1], prefix=prefill(model, other))
    broken = model.copy()
    broken.params["blocks_0"]["attn"]["v"]["kernel"] = (
        broken.params["blocks_0"]["attn"]["v"]["kernel"] * np.inf)
    with pytest.raises(NonFiniteError, match="probe_trace"):
        probe_trace(broken, prompt, [1, 2, 3])
    with pytest.raises(NonFiniteError, match="position_drift"):
        position_drift(broken, prompt, [1, 2], [1])
