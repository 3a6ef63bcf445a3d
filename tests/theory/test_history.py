"""The history-uniform certificate (proofs/history_uniform.md): its lower bounds against the
true margins of many histories (random, one token repeated, the tokens most aligned with the
query), its stream enclosure against the model's recorded streams, its relaxations against
sampling, that it bites on small weights, and its refusals."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from theory.test_bounds import LLAMA, model_of

from dynsys.decode import generate, logits, prefill
from dynsys.decode.engine import run
from dynsys.nn.cache import empty_rows
from dynsys.theory.history import domain as dm
from dynsys.theory.history import history_bound, history_horizon
from dynsys.theory.history.bound import _enclose_batch

QWEN2 = dataclasses.replace(LLAMA, family="qwen2", num_kv_heads=2)  # biases on q, k, v
N, XS, RS = 120, np.arange(0, 60, 12), (1, 2, 3)  # one compile per model: n, R = 4, chunk 8
BITES = 100


@functools.cache
def case(cfg, std: float, seed: int = 0):
    model = model_of(cfg, seed, std)
    prompt = np.random.default_rng(seed).integers(0, cfg.vocab_size, N)
    prefix = prefill(model, prompt, capacity=128)
    tokens = np.repeat(XS, len(RS))
    rs = np.tile(RS, len(XS))
    return model, prefix, tokens, rs, history_bound(model, prompt, tokens, rs, prefix)


@functools.partial(jax.jit, static_argnames=("cfg",))
def streams(cfg, params, prefix, tokens, positions):
    """The last position's logits [B, V] and stream entering each block and the final norm
    [B, L + 1, D] (recorded sites)."""
    out = run(cfg, params, tokens, positions, empty_rows(cfg, *tokens.shape),
              jnp.ones(tokens.shape, bool), prefix, record=True)
    rec = out.recorded
    xs = [rec("embed_out")[:, -1]] + [rec("resid_post", i)[:, -1] for i in range(cfg.num_layers)]
    return logits(cfg, params, out.hidden[:, -1]), jnp.stack(xs, 1)


def histories(cfg, r: int, rng) -> np.ndarray:
    """[H, r]: 16 random histories, every token repeated r times (among them the one whose keys
    align most with any query), and the 4 most repeated-aligned tokens in mixed orders."""
    return np.concatenate([rng.integers(0, cfg.vocab_size, (16, r)),
                           np.repeat(np.arange(cfg.vocab_size)[:, None], r, 1)])


def measured(cfg, model, prefix, x: int, r: int, hist: np.ndarray):
    """Margins ℓ_top − ℓ_v [H, V] (float64 of the model's float32 logits) and streams."""
    toks = np.concatenate([hist, np.full((len(hist), 1), x)], 1).astype(np.int32)
    n = int(prefix.length)
    pos = np.broadcast_to(np.arange(n, n + r + 1, dtype=np.int32), toks.shape)
    out, xs = streams(cfg, model.params, prefix, jnp.asarray(toks), jnp.asarray(pos))
    return np.asarray(out, np.float64), np.asarray(xs, np.float64)


def adversarial(cfg, model, prefix, x: int, r: int, logits: np.ndarray, top: int, hist):
    """The histories of the repeated tokens whose margins fell most, recombined."""
    worst = hist[np.argsort((logits[:, top][:, None] - logits).min(1))[:4], 0]
    rng = np.random.default_rng(x)
    return np.stack([rng.permutation(np.resize(worst, r)) for _ in range(8)])


def assert_margins_enclosed(bound, row: int, logits: np.ndarray) -> np.ndarray:
    """Every measured margin logits[top] − logits[v] (rows: histories) of query `row` lies in
    the certified [lower, upper], up to float32 rounding of the logits; returns the margins."""
    top = bound.top[row]
    margins = logits[:, top][:, None] - logits
    tol = 1e-5 * np.abs(logits).max()
    off = np.arange(logits.shape[1]) != top
    assert np.isfinite(bound.lower[row, off]).all()
    assert (margins[:, off] >= bound.lower[row, off] - tol).all()
    assert (margins[:, off] <= bound.upper[row, off] + tol).all()
    return margins


@pytest.mark.parametrize("cfg", [LLAMA, QWEN2], ids=["llama-rope-gqa", "qwen2-bias"])
def test_lower_bounds_hold_for_every_history_tried(cfg):
    """For each query (x, r ∈ {1, 2, 3}) and 100+ histories (random, repeated tokens, the most
    damaging repeated tokens recombined) the true margin ℓ_top − ℓ_v is ≥ the certified lower
    bound (float32 rounding of the model: 1e-5 of the logits), the true margin ≤ the upper
    bound, and the true stream at every layer lies in the enclosure. The bounds are finite and
    not trivial (some margin's bound is within 20x of its measured change)."""
    model, prefix, tokens, rs, bound = case(cfg, 0.05)
    rng = np.random.default_rng(1)
    tight = []
    for row, (x, r) in enumerate(zip(tokens, rs)):
        hist = histories(cfg, r, rng)
        logits, xs = measured(cfg, model, prefix, x, r, hist)
        hist2 = adversarial(cfg, model, prefix, x, r, logits, bound.top[row], hist)
        logits2, xs2 = measured(cfg, model, prefix, x, r, hist2)
        logits, xs = np.concatenate([logits, logits2]), np.concatenate([xs, xs2])
        margins = assert_margins_enclosed(bound, row, logits)
        slack = 1e-5 * np.abs(xs).max(2, keepdims=True)
        assert (np.abs(xs - bound.centre[row]) <= bound.radius[row] + slack).all()
        change = np.abs(margins - bound.margin[row]).max(0)[bound.near[row]]
        tight.append((bound.change[row, bound.near[row]] / change).min())
    assert min(tight) >= 1 and min(tight) < 20


@pytest.mark.parametrize("r", [1, 2])
@pytest.mark.parametrize("cfg", [LLAMA, QWEN2], ids=["llama-rope-gqa", "qwen2-bias"])
def test_lower_bounds_hold_for_every_history_of_length_r(cfg, r):
    """Exhaustively (all V^r histories, 61 and 3721) for each query token at r = 1, 2: 0 true
    margins below the certified lower bound or above the upper one (float32 tolerance as
    above)."""
    model, prefix, tokens, rs, bound = case(cfg, 0.05)
    grid = np.stack(np.meshgrid(*[np.arange(cfg.vocab_size)] * r, indexing="ij"), -1)
    hist = grid.reshape(-1, r)
    for row in np.flatnonzero(rs == r):
        logits, _ = measured(cfg, model, prefix, tokens[row], r, hist)
        top = bound.top[row]
        margins = logits[:, top][:, None] - logits
        tol = 1e-5 * np.abs(logits).max()
        off = np.arange(cfg.vocab_size) != top
        assert (margins[:, off] >= bound.lower[row, off] - tol).all()
        assert (margins[:, off] <= bound.upper[row, off] + tol).all()


def test_certifies_on_small_weights():
    """Weights of std 0.01, n = 120: r ≥ 1 is certified for most start tokens, and the bound on
    the margin change (near tokens) is within BITES of the largest change seen over the
    sampled histories."""
    model, prefix, tokens, rs, bound = case(LLAMA, 0.01)
    assert bound.certified[rs == 1].mean() >= 0.5 and np.isfinite(bound.worst).all()
    rng = np.random.default_rng(2)
    for row, (x, r) in enumerate(zip(tokens, rs)):
        logits, _ = measured(LLAMA, model, prefix, x, r, histories(LLAMA, r, rng))
        margins = logits[:, bound.top[row]][:, None] - logits
        near = bound.near[row]
        seen = np.abs(margins[:, near] - bound.margin[row, near]).max()
        assert bound.change[row, near].max() < BITES * seen
        assert (bound.mass[row] < 5 * r / (N + r + 1)).all()  # near the uniform r/(n + r + 1)


def test_a_prompt_length_within_the_capacity_bucket_does_not_recompile():
    """The prompt's keys fill the prefix's capacity with masked slots beyond n: a shorter prompt
    in the same bucket reuses the compiled certificate, and what the unused slots hold (here
    large random keys and values) changes no bound."""
    model = model_of(LLAMA, 0, 0.01)
    prompt = np.random.default_rng(3).integers(0, LLAMA.vocab_size, N - 20)
    _, _, tokens, rs, _ = case(LLAMA, 0.01)  # n = N at capacity 128: compiled
    compiled = _enclose_batch._cache_size()
    prefix = prefill(model, prompt, capacity=128)
    clean = history_bound(model, prompt, tokens, rs, prefix)
    assert _enclose_batch._cache_size() == compiled
    rng = np.random.default_rng(4)
    unused = ~np.asarray(prefix.valid)
    keys = tuple(jnp.where(unused, 100 * rng.standard_normal(k.shape), k) for k in prefix.k)
    values = tuple(jnp.where(unused[:, None], 100 * rng.standard_normal(v.shape), v)
                   for v in prefix.v)
    noisy = history_bound(model, prompt, tokens, rs, prefix.replace(k=keys, v=values))
    np.testing.assert_array_equal(noisy.lower, clean.lower)
    np.testing.assert_array_equal(noisy.upper, clean.upper)


def test_horizon_is_followed_by_the_greedy_trace():
    """history_horizon along the orbit of the greedy trace's first token: certified ≥ 2 steps on
    small weights, and the greedy trace equals the orbit on every certified step."""
    model = model_of(LLAMA, 0, 0.01)
    prompt = np.random.default_rng(0).integers(0, LLAMA.vocab_size, N)
    prefix = prefill(model, prompt, capacity=128)
    trace = np.asarray(generate(model, prompt[None], 4).tokens)[0]
    h = history_horizon(model, prompt, int(trace[0]), 4, prefix)
    assert h.horizon >= 2
    np.testing.assert_array_equal(trace[:h.horizon], h.orbit[:h.horizon])
    np.testing.assert_array_equal(h.bound.top, h.orbit[1:])


def test_relaxations_against_sampling():
    """Each relaxation φ(t) ∈ λt + [β⁻, β⁺] holds on 2000 points of random intervals, and the
    product and norm transformers enclose sampled points of their input forms."""
    rng = np.random.default_rng(0)
    lo = rng.uniform(-6, 3, 64)
    hi = lo + rng.uniform(0, 4, 64) * rng.uniform(0, 1, 64) ** 3
    t = lo[:, None] + (hi - lo)[:, None] * np.linspace(0, 1, 2000)
    pos_lo, pos_hi = np.exp(lo), np.exp(hi)
    tp = pos_lo[:, None] + (pos_hi - pos_lo)[:, None] * np.linspace(0, 1, 2000)
    with jax.enable_x64(True):
        for relax, fn, a, b, pts in [
                (dm.relax_square, np.square, lo, hi, t),
                (dm.relax_rsqrt, lambda s: s ** -0.5, pos_lo, pos_hi, tp),
                (dm.relax_grid(dm.silu, 0.5), lambda s: s / (1 + np.exp(-s)), lo, hi, t),
                (dm.relax_grid(dm.gelu, 0.8), lambda s: np.asarray(dm.gelu(s)), lo, hi, t)]:
            lam, low, high = (np.asarray(v)[:, None] for v in relax(jnp.asarray(a),
                                                                     jnp.asarray(b)))
            dev = fn(pts) - lam * pts
            assert (dev >= low - 1e-12).all() and (dev <= high + 1e-12).all()
            assert ((high - low) <= np.ptp(dev, 1, keepdims=True) + 0.3 * (b - a)[:, None] ** 2
                    + 1e-9).all()  # not loose: about the deviation's own range
        # forms: random c, G, X; samples β, ε; the product and the norm enclose the images
        d, H = 8, 4
        f = tuple(jnp.asarray(v) for v in (rng.normal(0, 1, d), rng.normal(0, .1, (d, 2, H)),
                                           rng.normal(0, .1, (d, 3))))
        s = tuple(jnp.asarray(v) for v in (rng.normal(0, 1, 1), rng.normal(0, .1, (1, 2, H)),
                                           rng.normal(0, .1, (1, 3))))
        beta = rng.normal(size=(500, 2, H))
        beta /= np.maximum(np.linalg.norm(beta, axis=2, keepdims=True), 1)
        eps = rng.uniform(-1, 1, (500, 3))

        def sample(form):
            c, g, x = (np.asarray(v) for v in form)
            return c + np.einsum("djh,sjh->sd", g, beta) + eps @ x.T[:3]

        for out, want in [(dm.product(f, s), sample(f) * sample(s)),
                          (dm.product(f, s, ball=True), sample(f) * sample(s)),
                          (dm.product(f, f), sample(f) ** 2)]:
            c, r = np.asarray(out[0]), np.asarray(dm.radius(out))
            assert (np.abs(want - c) <= r + 1e-12).all()
            assert np.linalg.norm(want - c, axis=1).max() <= float(dm.norm_radius(out)) + 1e-12


@pytest.mark.parametrize("change, message", [
    (dict(r=-1), "r=-1 must be an integer >= 0"),
    (dict(tokens=[3, 61]), "tokens[1] = 61 is outside the vocabulary [0, 61)"),
    (dict(family="gpt_neox"), "family 'gpt_neox' is not supported")])
def test_bad_input_is_refused(change, message):
    cfg = LLAMA if "family" not in change else dataclasses.replace(
        LLAMA, family="gpt_neox", num_kv_heads=2)
    model = model_of(cfg, 0, 0.02)
    with pytest.raises(ValueError) as error:
        history_bound(model, np.arange(10), change.get("tokens", [1, 2]), change.get("r", 1))
    assert message in str(error.value) and "\n" not in str(error.value)
