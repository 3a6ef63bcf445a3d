import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsys.nn.attention
from dynsys.nn.attention import Segment, attend


def segment(k, v, mask, bias=None):
    """A Segment from keys and values [S, K, H] (shared) or [B, S, K, H] (per row): keys go
    to [.., K, H, S], values to [.., K, S, H], the layouts `Segment` takes."""
    return Segment(jnp.asarray(np.moveaxis(k, -3, -1)), jnp.asarray(np.swapaxes(v, -3, -2)),
                   jnp.asarray(mask), None if bias is None else jnp.asarray(bias))


def dense_reference(q, segments, with_weights=False):
    """softmax over the concatenation of all segments' keys ([S, K, H] shared or
    [B, S, K, H] per row; a per-row segment's optional 4th entry is a score bias
    [1, T, S]), in float64 numpy.
    Returns the output [B, T, K, G, H] (0 for a query with no key) and each segment's mass
    [n, B, T, K, G] (with_weights: and every key's weight [B, T, K, G, S_1 + … + S_n])."""
    B, T, _, _, H = q.shape
    keys, values, masks, biases, owner = [], [], [], [], []
    for i, (k, v, mask, *bias) in enumerate(segments):
        if k.ndim == 3:  # shared: the same keys for every row
            k, v = np.broadcast_to(k, (B, *k.shape)), np.broadcast_to(v, (B, *v.shape))
        keys.append(k)
        values.append(v)
        masks.append(np.broadcast_to(mask, (B, T, k.shape[1])))
        biases.append(np.broadcast_to(bias[0] if bias else 0.0, (B, T, k.shape[1])))
        owner += [i] * k.shape[1]
    k, v = np.concatenate(keys, 1).astype(np.float64), np.concatenate(values, 1).astype(np.float64)
    mask, owner = np.concatenate(masks, 2), np.asarray(owner)
    z = np.einsum("btkgh,bskh->bkgts", q.astype(np.float64), k) / np.sqrt(H)
    z = z + np.concatenate(biases, 2)[:, None, None]
    z = np.where(mask[:, None, None], z, -np.inf)
    top = np.max(z, -1, keepdims=True)
    p = np.exp(z - np.where(np.isfinite(top), top, 0))
    total = p.sum(-1, keepdims=True)
    a = np.where(total > 0, p / np.where(total > 0, total, 1), 0)
    out = np.einsum("bkgts,bskh->btkgh", a, v)
    masses = np.stack([a[..., owner == i].sum(-1) for i in range(len(segments))])
    if with_weights:
        return out, masses.transpose(0, 1, 4, 2, 3), a.transpose(0, 3, 1, 2, 4)
    return out, masses.transpose(0, 1, 4, 2, 3)


SHAPES = [(1, 1, 1, 1, 4, 1, 1), (3, 2, 2, 1, 8, 7, 3), (2, 3, 1, 4, 4, 5, 6)]
fast_attend = jax.jit(attend, static_argnames="weights")


@st.composite
def problems(draw):
    # a few shapes (each compiles once); contents, masks and scales vary freely
    B, T, K, G, H, S1, S2 = draw(st.sampled_from(SHAPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.3, 1.0, 10.0]))  # 10: scores far apart, tests the merge
    q = (scale * rng.standard_normal((B, T, K, G, H))).astype(np.float32)
    shared = [rng.standard_normal((S1, K, H)).astype(np.float32) for _ in range(2)]
    rows = [rng.standard_normal((B, S2, K, H)).astype(np.float32) for _ in range(2)]
    density = draw(st.floats(0.1, 1.0))
    m1 = (rng.random(S1) < density) & (rng.random() > 0.3)  # shared: one mask for all rows
    m2 = rng.random((B, T, S2)) < density
    m2[rng.random(B) < 0.4] = False  # rows that see nothing of their own segment
    # a score bias on the row segment: none, or a value (−inf: hidden) on some keys
    b = draw(st.sampled_from([None, 0.0, -1.5, 2.0, -np.inf]))
    bias = () if b is None else (np.where(rng.random((1, T, S2)) < 0.5, b, 0.0).astype(np.float32),)
    return q, [(*shared, m1), (*rows, m2, *bias)]


@settings(deadline=None, max_examples=60)
@given(problems())
def test_two_segments_equal_dense_softmax(problem):
    q, segments = problem
    out, masses, weights = fast_attend(jnp.asarray(q), [segment(*s) for s in segments],
                                       weights=True)
    expected, expected_masses, expected_weights = dense_reference(q, segments, True)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(masses), expected_masses, atol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), expected_weights, atol=1e-6)
    assert fast_attend(jnp.asarray(q), [segment(*s) for s in segments]).weights is None
    bias = segments[1][3] if len(segments[1]) > 3 else 0.0
    visible = segments[1][2] & (bias > -np.inf)  # a −inf bias hides a key
    has_key = segments[0][2].any() | visible.any(-1)  # [B, T]
    total = np.asarray(masses).sum(0)  # [B, T, K, G]
    np.testing.assert_allclose(total[has_key], 1.0, atol=1e-5)
    assert (total[~has_key] == 0).all()
    assert (np.asarray(out)[~has_key] == 0).all()


def test_fully_masked_segment_gets_no_mass():
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((2, 1, 1, 2, 4)), jnp.float32)
    k, v = (rng.standard_normal((5, 1, 4)).astype(np.float32) for _ in range(2))
    kr, vr = (rng.standard_normal((2, 3, 1, 4)).astype(np.float32) for _ in range(2))
    own = segment(kr, vr, np.ones((2, 1, 3), bool))
    out, masses, _ = attend(q, [segment(k, v, np.zeros(5, bool)), own])
    alone = attend(q, [own]).output
    np.testing.assert_allclose(np.asarray(out), np.asarray(alone), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(masses[0]), 0)
    np.testing.assert_allclose(np.asarray(masses[1]), 1, atol=1e-6)


@pytest.mark.parametrize("rows_per_block", [1, 2])
def test_shared_segment_in_row_blocks_equals_dense_softmax(monkeypatch, rows_per_block):
    """Rows taken in blocks over the shared segment (3 rows: blocks of 2 leave a padded row)
    give the dense softmax, and the same as in one block."""
    B, T, K, G, H, S1, S2 = SHAPES[1]
    rng = np.random.default_rng(rows_per_block)
    q = rng.standard_normal((B, T, K, G, H)).astype(np.float32)
    segments = [(*(rng.standard_normal((S1, K, H)).astype(np.float32) for _ in range(2)),
                 rng.random(S1) < 0.7),
                (*(rng.standard_normal((B, S2, K, H)).astype(np.float32) for _ in range(2)),
                 rng.random((B, T, S2)) < 0.7)]
    whole = attend(jnp.asarray(q), [segment(*s) for s in segments])
    monkeypatch.setattr(dynsys.nn.attention, "SCORE_BLOCK", rows_per_block * T * K * G * S1)
    out, masses, weights = attend(jnp.asarray(q), [segment(*s) for s in segments], weights=True)
    expected, expected_masses, expected_weights = dense_reference(q, segments, True)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(masses), expected_masses, atol=1e-5)
    np.testing.assert_allclose(np.asarray(weights), expected_weights, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out), np.asarray(whole.output), atol=1e-6)
