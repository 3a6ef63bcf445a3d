"""Sparse kernel analysis against quantecon, networkx and dense linear algebra on small V."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import quantecon as qe
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsys.kernels as kn
from dynsys.kernels import (
    absorption_probabilities,
    absorption_times,
    check_kernel,
    kernel_classes,
    stationary_distributions,
)

FAST = settings(max_examples=100, deadline=None)


def random_kernel(v: int, density: float, seed: int) -> sp.csr_array:
    rng = np.random.default_rng(seed)
    mask = rng.random((v, v)) < density
    mask[np.arange(v), rng.integers(0, v, v)] = True
    w = np.where(mask, rng.random((v, v)) + 0.05, 0.0)
    return sp.csr_array(w / w.sum(axis=1, keepdims=True))


@st.composite
def kernels(draw) -> sp.csr_array:
    v = draw(st.integers(1, 12))
    density = draw(st.sampled_from([0.0, 0.1, 0.2, 0.4]))
    return random_kernel(v, density, draw(st.integers(0, 2**32 - 1)))


def dense_reference(P: np.ndarray):
    """(classes, closed classes, per-class periods, stationary laws, times, absorption) densely."""
    v = P.shape[0]
    mc = qe.MarkovChain(P)
    graph = nx.DiGraph(zip(*np.nonzero(P), strict=True))
    graph.add_nodes_from(range(v))
    classes = sorted(sorted(c) for c in nx.strongly_connected_components(graph))
    closed = sorted(sorted(c) for c in nx.attracting_components(graph))
    assert closed == sorted(sorted(c.tolist()) for c in mc.recurrent_classes)
    periods = {}
    for c in closed:
        periods[c[0]] = qe.MarkovChain(P[np.ix_(c, c)]).period
    transient = sorted(set(range(v)) - {x for c in closed for x in c})
    Q = P[np.ix_(transient, transient)]
    times = np.linalg.solve(np.eye(len(transient)) - Q, np.ones(len(transient)))
    R = np.stack([P[np.ix_(transient, c)].sum(axis=1) for c in closed], axis=1)
    absorb = np.linalg.solve(np.eye(len(transient)) - Q, R)
    return classes, closed, periods, mc.stationary_distributions, transient, times, absorb


@FAST
@given(kernels())
def test_against_quantecon_and_networkx(P):
    dense = P.toarray()
    classes, closed, periods, laws, transient, times, absorb = dense_reference(dense)
    cls = kernel_classes(P)
    ours = [np.flatnonzero(cls.labels == c).tolist() for c in range(cls.n_classes)]
    assert ours == classes  # numbered by smallest member
    assert [ours[c] for c in cls.closed_ids] == closed
    assert [int(cls.period[c]) for c in cls.closed_ids] == [periods[c[0]] for c in closed]
    assert cls.size.tolist() == [len(c) for c in classes]

    pi = stationary_distributions(P, cls)
    np.testing.assert_allclose(pi @ dense, pi, atol=1e-12)
    by_support = {tuple(np.flatnonzero(law > 1e-14)): law for law in laws}
    for c in cls.closed_ids:
        members = cls.labels == c
        assert pi[members].sum() == pytest.approx(1.0)
        expected = next(
            law for s, law in by_support.items() if set(s) <= set(np.flatnonzero(members))
        )
        np.testing.assert_allclose(pi[members], expected[members], atol=1e-10)
    assert np.all(pi[transient] == 0)

    t = absorption_times(P, cls)
    np.testing.assert_allclose(t[transient], times, rtol=1e-9)
    assert np.all(t[cls.recurrent] == 0)
    B = absorption_probabilities(P, cls)
    np.testing.assert_allclose(B[transient], absorb, atol=1e-10)
    np.testing.assert_allclose(B.sum(axis=1), 1.0)


def from_edges(edges, v: int) -> sp.csr_array:
    u, w, p = zip(*edges, strict=True)
    return sp.csr_array((p, (u, w)), shape=(v, v))


def test_planted_periodic_classes():
    # states 0-2: a 3-cycle; 3-6: bipartite (period 2); 7: fixed point; 8 -> {0, 7}; 9 -> {8, 3}
    edges = [(0, 1, 1.0), (1, 2, 1.0), (2, 0, 1.0)]
    edges += [(3, 5, 0.5), (3, 6, 0.5), (4, 5, 1.0), (5, 3, 0.3), (5, 4, 0.7), (6, 4, 1.0)]
    edges += [(7, 7, 1.0), (8, 0, 0.25), (8, 7, 0.75), (9, 8, 0.5), (9, 3, 0.5)]
    P = from_edges(edges, 10)
    cls = kernel_classes(P)
    assert cls.n_classes == 5 and cls.closed_ids.tolist() == [0, 1, 2]
    assert cls.period.tolist() == [3, 2, 1, 0, 0]
    pi = stationary_distributions(P)
    np.testing.assert_allclose(pi[:3], 1 / 3)
    np.testing.assert_allclose(pi @ P.toarray(), pi, atol=1e-14)
    assert pi[3:7].sum() == pytest.approx(1) and pi[7] == 1 and pi[8] == pi[9] == 0
    t = absorption_times(P)
    assert t[8] == 1 and t[9] == pytest.approx(1.5)
    B = absorption_probabilities(P)
    np.testing.assert_allclose(B[8], [0.25, 0, 0.75])
    np.testing.assert_allclose(B[9], [0.125, 0.5, 0.375])


@pytest.mark.parametrize("periodic", [False, True])
def test_iterative_paths(monkeypatch, periodic):
    """Power iteration (lazy when periodic) and GMRES, forced on a few hundred states."""
    monkeypatch.setattr(kn, "_DIRECT_MAX", 4)
    monkeypatch.setattr(kn, "_ENVELOPE_PER_NNZ", 0)
    calls = []
    gmres = kn.spla.gmres
    monkeypatch.setattr(kn.spla, "gmres", lambda *a, **kw: calls.append(1) or gmres(*a, **kw))
    rng = np.random.default_rng(3)
    v, k = 400, 6
    cols = rng.integers(40, v, (v, k))
    if periodic:  # bipartite: even -> odd -> even
        cols = 2 * (cols // 2) + (1 - np.arange(v)[:, None] % 2)
    # a transient funnel: states 0..39 leak slowly into the rest
    cols[:40] = rng.integers(0, 40, (40, k))
    cols[:40, 0] = rng.integers(40, v, 40)
    w = rng.random((v, k)) + 0.1
    w[:40, 0] = 0.02
    w /= w.sum(axis=1, keepdims=True)
    P = sp.csr_array((w.ravel(), cols.ravel(), np.arange(0, v * k + 1, k)), shape=(v, v))
    dense = P.toarray()
    _, _, _, laws, transient, times, _ = dense_reference(dense)
    cls = kernel_classes(P)
    assert cls.period[cls.closed_ids].tolist() == [2 if periodic else 1]
    pi = stationary_distributions(P, cls)
    np.testing.assert_allclose(pi, laws[0], atol=1e-12)
    np.testing.assert_allclose(absorption_times(P, cls)[transient], times, rtol=1e-8)
    assert calls


def test_gmres_failure_falls_back_to_lu(monkeypatch):
    monkeypatch.setattr(kn, "_DIRECT_MAX", 4)
    monkeypatch.setattr(kn, "_ENVELOPE_PER_NNZ", 0)
    calls = []
    monkeypatch.setattr(kn.spla, "gmres", lambda A, b, **kw: calls.append(1) or (0 * b, 1))
    P = random_kernel(60, 0.3, seed=5).toarray()
    P[0] = 0
    P[0, 0] = 1  # 0 absorbs; the other 59 states are transient, with ~18 entries a row
    expected = np.linalg.solve(np.eye(59) - P[1:, 1:], np.ones(59))
    np.testing.assert_allclose(absorption_times(P)[1:], expected, rtol=1e-10)
    assert calls


@pytest.mark.parametrize("maxiter, solves", [(0, 2), (1000, 1)])
def test_badly_scaled_stationary_law(monkeypatch, maxiter, solves):
    """Masses spanning 1e-30: a light root makes the system numerically singular.

    Without power iterations the first root (state 0, the largest in-weight,
    a tiny mass) fails and the solve is repeated from the heavy end; with them
    the heavy end is the root from the start. Tiny masses stay accurate.
    """
    v = 60
    P = np.zeros((v, v))
    for i in range(v):
        P[i, min(i + 1, v - 1)] += 0.8
        P[i, max(i - 1, 0)] += 0.2
    P[: v // 2, 0] += 0.5
    P /= P.sum(axis=1, keepdims=True)
    calls = []
    solve = kn._solve_m_matrix
    monkeypatch.setattr(kn, "_solve_m_matrix", lambda Q, b: calls.append(1) or solve(Q, b))
    pi = stationary_distributions(P, maxiter=maxiter)
    assert len(calls) == solves and pi[0] < 1e-11 and pi[29] < 1e-17
    np.testing.assert_allclose(pi, qe.MarkovChain(P).stationary_distributions[0], rtol=1e-7)


def test_large_chain_uses_no_dense_memory():
    v = 50_000
    nxt = (np.arange(v) + 1) % v
    P = sp.csr_array((np.ones(v), nxt, np.arange(v + 1)), shape=(v, v))
    cls = kernel_classes(P)
    assert cls.n_classes == 1 and cls.period[0] == v
    np.testing.assert_allclose(stationary_distributions(P, cls), 1 / v)


def test_bad_kernels():
    good = np.array([[0.5, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match=r"row 1 has a negative entry -0.5 in column 0"):
        check_kernel(np.array([[1.0, 0.0], [-0.5, 1.5]]))
    with pytest.raises(ValueError, match=r"row 0 has a non-finite entry nan in column 1"):
        kernel_classes(np.array([[0.5, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"row 1 sums to 0.9, not 1"):
        stationary_distributions(np.array([[0.5, 0.5], [0.0, 0.9]]))
    with pytest.raises(ValueError, match=r"row 2 sums to 0.0"):
        absorption_times(sp.csr_array(np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 0]])))
    with pytest.raises(ValueError, match="square"):
        absorption_probabilities(np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="classes cover 3 states"):
        stationary_distributions(good, kernel_classes(np.eye(3)))
    assert check_kernel(good * (1 + 1e-9)).sum(axis=1).tolist() == [1.0, 1.0]


def test_lu_only_where_fill_is_bounded():
    rng = np.random.default_rng(0)
    m = 10_000

    def rows(k: int, cols: np.ndarray) -> sp.csr_array:
        return sp.csr_array(
            (np.full(k * m, 0.5 / k), cols.ravel(), np.arange(0, k * m + 1, k)), shape=(m, m)
        )

    banded = rows(8, (np.arange(m)[:, None] + np.arange(-4, 4)) % m)
    expander = rows(8, rng.integers(0, m, (m, 8)))
    tree = rows(1, rng.integers(0, m, m))
    for Q, cheap in ((banded, True), (expander, False), (tree, True)):
        assert kn._lu_is_cheap((sp.identity(m, format="csr") - Q).tocsr()) is cheap
