"""The generated keys' dynamic programme of the history-uniform certificate
(dynsys.theory.history.generated, proofs/history_uniform.md Lemma H4) and its directional score
bounds (Lemma H5): every true key and value at positions n and n + 1, over all V² histories,
inside its stage's ball; the certificate with two stages against every history of length
r ≤ 2; the outer ellipsoid against the support function it bounds."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from theory.test_bounds import LLAMA
from theory.test_history import QWEN2, N, assert_margins_enclosed, case, measured

from dynsys.decode import step
from dynsys.theory.history import domain as dm
from dynsys.theory.history import generated_keys, history_bound

CFGS = pytest.mark.parametrize("cfg", [LLAMA, QWEN2], ids=["llama-rope-gqa", "qwen2-bias"])


@functools.cache
def two_stages(cfg, exhaustive: bool = False):
    model, prefix = case(cfg, 0.05)[:2]
    prompt = np.random.default_rng(0).integers(0, cfg.vocab_size, N)
    return model, prompt, prefix, generated_keys(model, prompt, 2, prefix, exhaustive=exhaustive)


@pytest.mark.parametrize("exhaustive", [False, True], ids=["enclosed", "enumerated"])
@CFGS
def test_every_generated_key_lies_in_its_stage(cfg, exhaustive):
    """For all V² pairs (h, t): the model's key and value of h at position n lie in stage 0's
    ball of h (a point up to float64 slack) and those of t at n + 1 after h in stage 1's ball of
    t (enclosed: from the enclosures of (t, 1); enumerated: the V float64 steps of (h, t)), at
    every layer and kv head (float32 rounding of the model: 1e-5 of the largest key); the
    enumerated radius is at most twice the enclosed one (every key lies within R of the
    enclosure's centre, so within 2R of the keys' mean)."""
    model, _, prefix, g = two_stages(cfg, exhaustive)
    V, n = cfg.vocab_size, int(prefix.length)
    pairs = np.stack(np.meshgrid(np.arange(V), np.arange(V), indexing="ij"), -1).reshape(-1, 2)
    rows = step(model, prefix, pairs, np.broadcast_to(np.arange(n, n + 2), pairs.shape))[1]
    keys = np.stack([np.asarray(k, np.float64) for k in rows.k], 1)  # [B, L, K, H, 2]
    values = np.stack([np.asarray(v, np.float64) for v in rows.v], 1)  # [B, L, K, 2, H]
    for slot in (0, 1):
        token = pairs[:, slot]
        for got, centre, radius in [(keys[..., slot], g.keys, g.key_radius),
                                    (values[..., slot, :], g.values, g.value_radius)]:
            tol = 1e-5 * np.abs(got).max()
            far = np.linalg.norm(got - centre[slot, token], axis=-1)
            assert np.isfinite(radius[slot]).all()
            assert (far <= radius[slot, token] + tol).all()
            if slot == 0:
                assert far.max() <= tol  # stage 0 is the exact step
    if exhaustive:
        enclosed = two_stages(cfg)[3]
        assert (g.key_radius[1] <= 2 * enclosed.key_radius[1] + 1e-9).all()  # + float64 slack
        assert (g.value_radius[1] <= 2 * enclosed.value_radius[1] + 1e-9).all()


@pytest.mark.parametrize("exhaustive", [False, True], ids=["enclosed", "enumerated"])
@CFGS
def test_two_stages_hold_for_every_history_of_length_r(cfg, exhaustive):
    """With the generated keys of two stages (stage 1 enclosed or enumerated), exhaustively
    (all V^r histories, 61 and 3721) for each query token at r = 1, 2: 0 true margins below the
    certified lower bound or above the upper one (float32 tolerance as in test_history), and
    the bounds are finite."""
    model, prompt, prefix, g = two_stages(cfg, exhaustive)
    xs, rs = np.repeat(np.arange(0, 60, 12), 2), np.tile([1, 2], 5)
    bound = history_bound(model, prompt, xs, rs, prefix, generated=g)
    for row, (x, r) in enumerate(zip(xs, rs)):
        grid = np.stack(np.meshgrid(*[np.arange(cfg.vocab_size)] * r, indexing="ij"), -1)
        logits, _ = measured(cfg, model, prefix, x, r, grid.reshape(-1, r))
        assert_margins_enclosed(bound, row, logits)


def test_generated_keys_refuse_a_prompt_of_another_length():
    model, prompt, _, g = two_stages(LLAMA)
    with pytest.raises(ValueError, match=f"generated keys of a prompt of length {N}, not n=10"):
        history_bound(model, prompt[:10], [1], 1, generated=g)


def test_outer_ellipsoid_bounds_the_support_function():
    """For random forms (ℓ2 blocks and box symbols) and 500 random directions k: the support
    Σ_j ‖G_jᵀk‖ + Σ_k |X_kᵀk| is ≤ √(kᵀQk), which is ≤ (Σ_j ‖G_j‖_F + Σ_k ‖X_k‖) ‖k‖ (no worse
    than Cauchy–Schwarz on each symbol)."""
    rng = np.random.default_rng(0)
    d, H = 8, 4
    with jax.enable_x64(True):
        for b, m in [(3, 5), (0, 4), (6, 0)]:
            g, x = rng.normal(0, 1, (d, b, H)), rng.normal(0, 1, (d, m)) * rng.uniform(0, 1, m)
            q = np.asarray(dm.outer_ellipsoid(tuple(jnp.asarray(a) for a in
                                                    (np.zeros(d), g, x))))
            k = rng.normal(size=(500, d))
            support = (np.linalg.norm(np.einsum("djh,sd->sjh", g, k), axis=-1).sum(-1)
                       + np.abs(k @ x).sum(-1))
            bound = np.sqrt(np.einsum("sd,de,se->s", k, q, k))
            assert (support <= bound * (1 + 1e-12)).all()
            frobenius = np.linalg.norm(g, axis=(0, 2)).sum() + np.linalg.norm(x, axis=0).sum()
            assert (bound <= frobenius * np.linalg.norm(k, axis=1) * (1 + 1e-12)).all()
