"""Sparse kernel analysis against quantecon, networkx and dense linear algebra on small V;
stationary laws of nearly decomposable chains against exact ones (rationals, detailed balance)."""

from __future__ import annotations

import math
from fractions import Fraction

import networkx as nx
import numpy as np
import pytest
import quantecon as qe
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsys as ds
import dynsys.dynamics.kernels as kn
import dynsys.dynamics.stationary as stationary
from dynsys.dynamics.kernels import (
    absorption_probabilities,
    absorption_times,
    check_kernel,
    kernel_classes,
)
from dynsys.dynamics.stationary import stationary_distributions

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


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


def exact_law(P: np.ndarray) -> np.ndarray:
    """Stationary law of an irreducible chain by GTH in exact rational arithmetic."""
    m = len(P)
    a = [[Fraction(float(p)) for p in row] for row in P]
    for k in range(m - 1, 0, -1):
        rate = sum(a[k][:k])
        for i in range(k):
            if a[i][k]:
                a[i][k] /= rate
                for j in range(k):
                    if a[k][j]:
                        a[i][j] += a[i][k] * a[k][j]
    x = [Fraction(1)]
    for k in range(1, m):
        x.append(sum(x[i] * a[i][k] for i in range(k) if a[i][k]))
    return np.array([float(xk / sum(x)) for xk in x])


def kmr_matrix(n_players: int, p: float, epsilon: float) -> np.ndarray:
    """KMR model with sequential moves (as in quantecon's tests): action 1 is p-dominant, mutation
    rate epsilon; state n = players playing action 1. A birth-death chain with nearly all its mass
    at n = N and masses down to 1.7e-35 (N = 27, epsilon = 1e-2) or 7.5e-29 (N = 3, 1e-14)."""
    P = np.zeros((n_players + 1, n_players + 1))
    P[0, 0], P[0, 1] = 1 - epsilon / 2, epsilon / 2
    for n in range(1, n_players):
        down = ((n - 1) / (n_players - 1) < p) + ((n - 1) / (n_players - 1) == p) / 2
        up = (n / (n_players - 1) > p) + (n / (n_players - 1) == p) / 2
        P[n, n - 1] = n / n_players * (epsilon / 2 + (1 - epsilon) * down)
        P[n, n + 1] = (n_players - n) / n_players * (epsilon / 2 + (1 - epsilon) * up)
        P[n, n] = 1 - P[n, n - 1] - P[n, n + 1]
    P[n_players, n_players - 1], P[n_players, n_players] = epsilon / 2, 1 - epsilon / 2
    return P


def birth_death(potential: np.ndarray) -> sp.csr_array:
    """Metropolis chain on a path in base 2: i -> i +- 1 with probability 2^-max(dV, 0) / 2.

    Detailed balance gives the law exactly: proportional to 2^-potential.
    """
    step = np.diff(potential)
    up, down = np.ldexp(0.5, -np.maximum(step, 0)), np.ldexp(0.5, -np.maximum(-step, 0))
    m = potential.size
    i = np.arange(m - 1)
    P = sp.csr_array((np.r_[up, down], (np.r_[i, i + 1], np.r_[i + 1, i])), shape=(m, m))
    return (P + sp.diags_array(1.0 - P.sum(axis=1))).tocsr()


def double_well(m: int, barrier: float, tilt: float = 0.0) -> np.ndarray:
    """Integer potential on m points of [-1, 1]: 4 barrier (x^2 - 1/2)^2 + tilt x, wells at
    +-1/sqrt(2) under a barrier of about barrier doublings."""
    x = np.linspace(-1, 1, m)
    return np.round(4 * barrier * (x**2 - 0.5) ** 2 + tilt * x).astype(np.int64)


def potential_law(potential: np.ndarray) -> np.ndarray:
    """The law proportional to 2^-potential (masses under 2^-1074 of the largest are 0)."""
    w = np.ldexp(1.0, -(potential - potential.min()))
    return w / math.fsum(w)


def weakly_linked_cliques(sizes: tuple[int, int], links: tuple[float, float]) -> np.ndarray:
    """Two random dense cliques; clique 0's first state moves to clique 1 with probability
    links[0], clique 1's last state back to clique 0 with probability links[1]."""
    a, b = sizes
    rng = np.random.default_rng(a * 100 + b)
    P = np.zeros((a + b, a + b))
    P[:a, :a] = rng.random((a, a)) + 0.1
    P[a:, a:] = rng.random((b, b)) + 0.1
    P /= P.sum(axis=1, keepdims=True)
    for src, dst, w in ((0, a, links[0]), (a + b - 1, 1 % a, links[1])):
        P[src, dst] = w
        P[src, src] -= w
    return P


def two_banded_halves(m: int, link: float, seed: int) -> sp.csr_array:
    """Two random banded chains on the halves of m states (8 entries within 8 of the diagonal
    and a step to the next state, cyclically), joined by links of probability link, link / 10."""
    rng = np.random.default_rng(seed)
    half = m // 2
    i = np.repeat(np.arange(m), 9)
    step = rng.integers(-8, 9, (m, 9))
    step[:, 0] = 1
    j = (i % half + step.ravel()) % half + i // half * half
    P = sp.csr_array((rng.random(i.size) ** 3 + np.tile([0.1] + [0] * 8, m), (i, j)), (m, m))
    P = sp.csr_array(P.multiply(1.0 / P.sum(axis=1)[:, None]))
    # state 0 diverts link of its step (to state 1) to the other half, m - 1 diverts link / 10
    bridge = [(0, half, link), (0, 1, -link), (m - 1, 1, link / 10), (m - 1, half, -link / 10)]
    rows, cols, vals = zip(*bridge, strict=True)
    return (P + sp.csr_array((vals, (rows, cols)), shape=(m, m))).tocsr()


def random_class(m: int, k: int, seed: int) -> sp.csr_array:
    """k random successors a row (an expander), plus a cycle through all states."""
    rng = np.random.default_rng(seed)
    cols = np.c_[(np.arange(m) + 1) % m, rng.integers(0, m, (m, k - 1))]
    w = rng.random((m, k)) + 0.1
    w /= w.sum(axis=1, keepdims=True)
    return sp.csr_array((w.ravel(), cols.ravel(), np.arange(0, m * k + 1, k)), shape=(m, m))


def record_power_iterations(monkeypatch) -> list:
    """Record, call by call, which blocks _certified_power_iteration certified."""
    certified = []
    iterate = stationary._certified_power_iteration

    def record(*args):
        laws, ok = iterate(*args)
        certified.append(ok.tolist())
        return laws, ok

    monkeypatch.setattr(stationary, "_certified_power_iteration", record)
    return certified


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
    """Certified power iteration (lazy when periodic) and GMRES, forced on a few hundred states."""
    monkeypatch.setattr(stationary, "_GTH_DENSE_MAX", 64)
    monkeypatch.setattr(kn, "_DIRECT_MAX", 4)
    monkeypatch.setattr(kn, "_ENVELOPE_PER_NNZ", 0)
    certified = record_power_iterations(monkeypatch)
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
    assert certified == [[True]] and tv(pi, laws[0]) <= 1e-10
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


def test_badly_scaled_stationary_law():
    """Masses spanning 1e-30, each to full relative precision (GTH has no cancellation)."""
    v = 60
    P = np.zeros((v, v))
    for i in range(v):
        P[i, min(i + 1, v - 1)] += 0.8
        P[i, max(i - 1, 0)] += 0.2
    P[: v // 2, 0] += 0.5
    P /= P.sum(axis=1, keepdims=True)
    pi = stationary_distributions(P)
    assert pi[0] < 1e-11 and pi[29] < 1e-17
    np.testing.assert_allclose(pi, exact_law(P), rtol=1e-13)


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


@pytest.mark.parametrize(
    "P, expected",
    [
        (kmr_matrix(27, 1 / 3, 1e-2), None),
        (kmr_matrix(3, 1 / 3, 1e-14), None),
        # quantecon's gth_solve test matrices (a generator matrix uniformised)
        (np.array([[0.4, 0.6], [0.2, 0.8]]), [0.25, 0.75]),
        (np.eye(2), [1.0, 1.0]),  # two closed classes: each its own law
        (np.eye(2) + np.array([[-3.0, 3.0], [4.0, -4.0]]) / 4, [4 / 7, 3 / 7]),
        (np.array([[0.5, 0.5], [0.0, 1.0]]), [0.0, 1.0]),
        (np.asfortranarray([[0.5, 0.5], [0.0, 1.0]]), [0.0, 1.0]),
        (np.array([[0.0, 1.0], [0.0, 1.0]]), [0.0, 1.0]),
        (np.array([[1.0]]), [1.0]),
    ],
    ids=["kmr27", "kmr3", "2x2", "identity", "generator", "absorbing", "fortran", "to-1", "1x1"],
)
def test_quantecon_matrices(P, expected):
    """KMR chains (state 0 weighs 1.8e-21 at N = 27, 5e-15 at N = 3) against exact rationals,
    quantecon's GTH and MarkovChain; quantecon's own gth_solve test matrices."""
    pi = stationary_distributions(P)
    if expected is None:
        expected = exact_law(P)
        np.testing.assert_allclose(pi, expected, rtol=1e-13)
        assert tv(pi, qe.markov.gth_solve(P)) <= 1e-13
        assert tv(pi, qe.MarkovChain(P).stationary_distributions[0]) <= 1e-13
    assert tv(pi, np.asarray(expected)) <= 1e-13


@pytest.mark.parametrize(
    "potential",
    [
        # 60 states, steps of up to 60 doublings: probabilities from 2^-61 to 1/2
        np.cumsum(np.random.default_rng(0).integers(-60, 61, 60)),
        # two wells 2^14 apart behind a barrier of 2^3000: masses span beyond the float range
        double_well(200, 3000, tilt=10),
        # 20,000 states, a rugged double well (barrier 2^600, steps up to 2^40): sparse elimination
        double_well(20_000, 600) + np.random.default_rng(1).integers(0, 41, 20_000),
    ],
    ids=["rates-2^-61", "barrier-2^3000", "20k-double-well"],
)
def test_birth_death_detailed_balance(potential):
    P = birth_death(potential)
    pi = stationary_distributions(P)
    assert tv(pi, potential_law(potential)) <= 1e-13


@pytest.mark.parametrize("sizes", [(5, 5), (3, 7), (2, 12)])
@pytest.mark.parametrize("links", [(1e-15, 1e-13), (1e-15, 1e-15), (1e-12, 1e-15)])
def test_weakly_linked_cliques(sizes, links):
    P = weakly_linked_cliques(sizes, links)
    pi = stationary_distributions(P)
    expected = exact_law(P)
    np.testing.assert_allclose(pi, expected, rtol=1e-13)
    assert tv(pi, expected) <= 1e-13


@pytest.fixture(scope="module")
def tiny_model():
    return ds.load("tiny", seed=0)


@pytest.mark.parametrize(
    "n, seed, temperature",
    [(2, 1, 0.05), (2, 11, 0.002), (1, 0, 0.001)],
    ids=["T=0.05", "T=0.002", "T=0.001"],
)
def test_low_temperature_kernel_of_tiny_model(tiny_model, n, seed, temperature):
    """Near-greedy kernels: closed classes holding several greedy loops, linked only rarely."""
    prompt = ds.prompts.repeated_ngram(tiny_model.config.vocab_size, n=n, length=64, seed=seed)
    fmap = ds.markov_map(tiny_model, prompt, kernel_k=8, temperature=temperature, progress=False)
    P = check_kernel(fmap.kernel)
    cls = kernel_classes(P)
    pi = stationary_distributions(P, cls)
    for c in cls.closed_ids:
        members = np.flatnonzero(cls.labels == c)
        assert tv(pi[members], qe.markov.gth_solve(P[members][:, members].toarray())) <= 1e-13
    assert np.all(pi[~cls.recurrent] == 0)


def test_nearly_decomposable_banded_chain():
    """1,000 states, sparse elimination to a dense core; against dense GTH."""
    P = two_banded_halves(1000, 1e-13, seed=0)
    pi = stationary_distributions(P)
    expected = qe.markov.gth_solve(P.toarray())
    assert 1e-3 < pi[:500].sum() < 1 - 1e-3  # both halves carry mass
    assert tv(pi, expected) <= 1e-13


def test_large_sparse_class_is_not_densified(monkeypatch):
    """20,000 states in one nearly decomposable banded class: sparse elimination leaves a dense
    core of a few hundred states; the flow across the cut balances, the halves match their own
    laws."""
    widths = []
    dense = stationary._gth_dense

    def record(X, size):
        widths.append(X.shape[1])
        return dense(X, size)

    monkeypatch.setattr(stationary, "_gth_dense", record)
    m = 20_000
    P = two_banded_halves(m, 1e-13, seed=1)
    pi = stationary_distributions(P)
    assert max(widths) <= 1024
    assert np.abs(P.T @ pi - pi).sum() <= 1e-15
    flow = P[: m // 2][:, m // 2 :].T @ pi[: m // 2]
    back = P[m // 2 :][:, : m // 2].T @ pi[m // 2 :]
    assert flow.sum() == pytest.approx(back.sum(), rel=1e-10)
    apart = stationary_distributions(two_banded_halves(m, 0.0, seed=1))  # the halves' own laws
    for half in (slice(0, m // 2), slice(m // 2, m)):
        assert tv(pi[half] / pi[half].sum(), apart[half]) <= 1e-10


def test_many_closed_classes_of_assorted_sizes():
    """Classes of 1 to 300 states (dense batches, padded; sparse rounds), periodic ones too."""
    rng = np.random.default_rng(7)
    sizes = [1, 1, 2, 3, 5, 8, 9, 10, 13, 17, 30, 31, 64, 65, 100, 300]
    blocks = []
    for s in sizes:
        B = (rng.random((s, s)) < min(1.0, 6 / s)) * rng.random((s, s)) ** 4
        B[np.arange(s), (np.arange(s) + 1) % s] += 0.05  # a cycle keeps it irreducible
        if s in (10, 64):  # bipartite: period 2
            B[np.arange(s)[:, None] % 2 == np.arange(s) % 2] = 0
            B[np.arange(s), (np.arange(s) + 1) % s] += 0.05
        blocks.append(B / B.sum(axis=1, keepdims=True))
    P = sp.block_diag(blocks, format="csr")
    cls = kernel_classes(P)
    assert cls.closed.sum() == len(sizes) and set(cls.period[cls.closed]) == {1, 2}
    pi = stationary_distributions(P, cls)
    for c in cls.closed_ids:
        members = np.flatnonzero(cls.labels == c)
        assert tv(pi[members], qe.markov.gth_solve(P[members][:, members].toarray())) <= 1e-13


def test_power_iteration_only_where_elimination_fills_in(monkeypatch):
    """Classes over _GTH_DENSE_MAX states: an expander fills in under elimination and is
    power-iterated (certified); a double well (barrier 2^-100) reduces and goes dense."""
    monkeypatch.setattr(stationary, "_GTH_DENSE_MAX", 64)
    monkeypatch.setattr(stationary, "_GTH_SPARSE_MIN", 16)
    certified = record_power_iterations(monkeypatch)
    expander = random_class(300, 4, seed=0)
    potential = double_well(300, 100)
    P = sp.block_diag([expander, birth_death(potential)], format="csr")
    pi = stationary_distributions(P)
    assert certified == [[True]]
    assert tv(pi[:300], qe.markov.gth_solve(expander.toarray())) <= 1e-10
    assert tv(pi[300:], potential_law(potential)) <= 1e-13


def test_uncertified_power_iteration_raises(monkeypatch):
    """Two expanders linked by 1e-14: elimination fills in, power iteration cannot certify."""
    monkeypatch.setattr(stationary, "_GTH_DENSE_MAX", 64)
    certified = record_power_iterations(monkeypatch)
    P = sp.block_diag([random_class(150, 6, seed) for seed in (3, 4)], format="lil")
    for src, dst in ((0, 150), (299, 1)):
        P[src, dst] = 1e-14
        P[src, (src + 1) % 150 + src // 150 * 150] -= 1e-14  # from its cycle step
    with pytest.raises(RuntimeError, match="did not certify"):
        stationary_distributions(P.tocsr())
    assert certified == [[False]]


def test_censored_rates_below_float_range_raise():
    """a -> b -> c -> a with b <-> c linked by 1e-200: eliminating c leaves b -> a at 1e-400."""
    P = np.array([[0.0, 1.0, 0.0], [0.0, 1 - 1e-200, 1e-200], [1e-200, 1 - 1e-200, 0.0]])
    with pytest.raises(RuntimeError, match="below the float range"):
        stationary_distributions(P)


@pytest.mark.parametrize("eps", [1e-13, 3e-15])
def test_nearly_absorbing_states_keep_their_escape_rate(eps):
    """State 0 stays with probability 1 − ε and leaves to the closed states 2 (ε/3) and 3
    (2ε/3) directly or through state 1: the mean time 1/ε and the split 1/3 : 2/3 are exact;
    forming 1 − P_00 in floating point would lose ~1e-3 of them."""
    P = np.zeros((4, 4))
    P[0, 0], P[0, 2], P[0, 3] = 1 - eps, eps / 3, 2 * eps / 3
    P[1, 0], P[1, 1] = 0.5, 0.5
    P[2, 2] = P[3, 3] = 1.0
    times = absorption_times(sp.csr_array(P))
    np.testing.assert_allclose(times[:2], [1 / eps, 1 / eps + 2], rtol=1e-12)
    probs = absorption_probabilities(sp.csr_array(P))
    np.testing.assert_allclose(probs[:2], [[1 / 3, 2 / 3]] * 2, rtol=1e-12)
