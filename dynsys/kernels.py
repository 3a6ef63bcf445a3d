"""Sparse Markov kernel analysis: classes, periods, stationary laws, absorption.

A kernel is a row-stochastic ``V x V`` matrix ``P`` (``P[u, v]`` = probability
of ``u -> v``), kept sparse (CSR), e.g. the top-k / top-p next-token
distributions of :mod:`dynsys.markov`. The states split into communicating
classes (strongly connected components of the graph of positive entries); a
class is *closed* (recurrent) when no edge leaves it, otherwise every state in
it is transient. Nothing here densifies ``P``: the linear algebra runs on
restricted sparse submatrices with ``I - Q`` a nonsingular M-matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse import linalg as spla

__all__ = [
    "KernelClasses",
    "absorption_probabilities",
    "absorption_times",
    "check_kernel",
    "kernel_classes",
    "stationary_distributions",
]

# Linear systems up to this many unknowns always go to sparse LU; larger ones
# when the LU fill is bounded by this many entries per nonzero (see _lu_is_cheap).
_DIRECT_MAX = 4096
_ENVELOPE_PER_NNZ = 50


@dataclass(frozen=True)
class KernelClasses:
    """Communicating classes of a kernel, numbered by their smallest state.

    Attributes:
        labels: ``(V,)`` class of each state.
        closed: ``(C,)`` True for closed (recurrent) classes.
        period: ``(C,)`` gcd of the lengths of the cycles inside each class
            (1 = aperiodic); 0 for a single state without a self-loop.
        size: ``(C,)`` states per class.
    """

    labels: np.ndarray
    closed: np.ndarray
    period: np.ndarray
    size: np.ndarray

    @property
    def n_classes(self) -> int:
        return self.size.size

    @property
    def closed_ids(self) -> np.ndarray:
        """Ids of the closed classes, increasing."""
        return np.flatnonzero(self.closed)

    @property
    def recurrent(self) -> np.ndarray:
        """``(V,)`` True for states in closed classes."""
        return self.closed[self.labels]


def check_kernel(P: sp.sparray | sp.spmatrix | np.ndarray, tol: float = 1e-6) -> sp.csr_array:
    """Validate a row-stochastic kernel and return it as a float64 CSR copy.

    Raises ``ValueError`` naming the first row with a non-finite or negative
    entry, or whose sum differs from 1 by more than ``tol``. Explicit zeros are
    dropped and rows renormalised to sum exactly to 1.
    """
    if not sp.issparse(P):
        P = np.asarray(P)
    if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] == 0:
        raise ValueError(f"a kernel must be a non-empty square matrix, got shape {P.shape}")
    A = sp.csr_array(P, dtype=np.float64, copy=True)
    A.sum_duplicates()
    for bad, what in ((~np.isfinite(A.data), "a non-finite"), (A.data < 0, "a negative")):
        if bad.any():
            i = int(np.argmax(bad))
            row = int(np.searchsorted(A.indptr, i, side="right") - 1)
            raise ValueError(
                f"kernel row {row} has {what} entry {float(A.data[i])} in column {A.indices[i]}"
            )
    sums = np.asarray(A.sum(axis=1)).ravel()
    off = np.abs(sums - 1.0) > tol
    if off.any():
        row = int(np.argmax(off))
        raise ValueError(f"kernel row {row} sums to {float(sums[row])}, not 1 (tol {tol})")
    A.eliminate_zeros()
    A.data /= np.repeat(sums, np.diff(A.indptr))
    return A


def _edges(A: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(np.arange(A.shape[0]), np.diff(A.indptr)), A.indices.astype(np.int64)


def _classes(A: sp.csr_array) -> KernelClasses:
    v = A.shape[0]
    n, raw = csgraph.connected_components(A, directed=True, connection="strong")
    _, first = np.unique(raw, return_index=True)  # smallest state of each raw class
    rank = np.empty(n, np.int64)
    rank[np.argsort(first)] = np.arange(n)
    labels = rank[raw]
    rows, cols = _edges(A)
    inside = labels[rows] == labels[cols]
    closed = np.ones(n, bool)
    closed[labels[rows[~inside]]] = False
    # Period: gcd over internal edges u -> v of level(u) + 1 - level(v), with
    # level the BFS distance from the class's smallest state.
    internal = sp.csr_array(
        (np.ones(int(inside.sum())), (rows[inside], cols[inside])), shape=(v, v)
    )
    level = csgraph.dijkstra(internal, indices=np.sort(first), unweighted=True, min_only=True)
    level = level.astype(np.int64)
    lag = level[rows[inside]] + 1 - level[cols[inside]]
    period = np.zeros(n, np.int64)
    np.gcd.at(period, labels[rows[inside]], lag)
    return KernelClasses(labels, closed, period, np.bincount(labels, minlength=n))


def kernel_classes(P: sp.sparray | sp.spmatrix | np.ndarray, tol: float = 1e-6) -> KernelClasses:
    """Communicating classes, closed classes and periods of a kernel (see :class:`KernelClasses`).

    Strongly connected components by ``scipy.sparse.csgraph``; the period of a
    class is the gcd of ``level(u) + 1 - level(v)`` over its internal edges,
    ``level`` being BFS depth from any state of the class. ``O(V + nnz log V)``.
    """
    return _classes(check_kernel(P, tol))


def _prepare(
    P: sp.sparray | sp.spmatrix | np.ndarray, classes: KernelClasses | None, tol: float
) -> tuple[sp.csr_array, KernelClasses]:
    A = check_kernel(P, tol)
    if classes is None:
        classes = _classes(A)
    elif classes.labels.shape != (A.shape[0],):
        raise ValueError(f"classes cover {classes.labels.size} states, kernel has {A.shape[0]}")
    return A, classes


def _lu_is_cheap(M: sp.csr_array) -> bool:
    """Whether sparse LU of ``M`` is sure to be cheap.

    True for small systems, thin ones (at most three entries a row: trees,
    chains, cycles) and those whose envelope after reverse Cuthill-McKee
    ordering, which bounds the fill of LU with diagonal pivots, stays within
    ``_ENVELOPE_PER_NNZ * nnz`` (banded structure).
    """
    m = M.shape[0]
    if m <= _DIRECT_MAX or M.nnz <= 3 * m:
        return True
    perm = csgraph.reverse_cuthill_mckee(M, symmetric_mode=False)
    B = M[perm][:, perm]
    first_col = np.minimum.reduceat(B.indices, B.indptr[:-1])
    Bc = B.tocsc()
    first_row = np.minimum.reduceat(Bc.indices, Bc.indptr[:-1])
    envelope = 2 * np.arange(m).sum() - first_col.sum() - first_row.sum()
    return bool(envelope <= _ENVELOPE_PER_NNZ * M.nnz)


def _solve_m_matrix(Q: sp.csr_array, b: np.ndarray, rtol: float = 1e-12) -> np.ndarray:
    """Solve ``(I - Q) x = b`` for substochastic ``Q`` from which every state can escape.

    ``I - Q`` is then a nonsingular M-matrix: LU with diagonal pivots is
    stable. LU when it is sure to be cheap (:func:`_lu_is_cheap`); otherwise
    (expander-like: LU fills in) restarted GMRES, which converges in a few
    dozen iterations there, with LU as the fallback. ``b`` is 1-D or 2-D.
    """
    m = Q.shape[0]
    b = np.asarray(b, np.float64)
    if m == 0:
        return np.zeros(b.shape)
    M = (sp.identity(m, format="csr") - Q).tocsr()
    M.sum_duplicates()
    if not _lu_is_cheap(M):
        cols = b.reshape(m, -1)
        out = np.empty(cols.shape)
        for j in range(cols.shape[1]):
            out[:, j], info = spla.gmres(M, cols[:, j], rtol=rtol, atol=0.0, restart=60, maxiter=2)
            if info != 0:
                break
        else:
            return out.reshape(b.shape)
    return spla.splu(M.tocsc(), diag_pivot_thresh=0.0).solve(b)


def _normalise(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    return x / np.bincount(group, weights=x)[group]


def _power_iteration(
    S: sp.csr_array, group: np.ndarray, lazy: np.ndarray, maxiter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Power iteration on a block-diagonal stochastic ``S`` (blocks ``group``): (pi, converged).

    ``lazy`` (per state) is 1/2 in periodic blocks: ``(I + S_c) / 2`` has the
    same stationary law and is aperiodic. A block has converged when
    ``||pi S_c - pi||_1 <= 1e-13``.
    """
    ST = S.T.tocsr()
    x = _normalise(np.ones(S.shape[0]), group)
    res = np.full(group.max() + 1, np.inf)
    for _ in range(maxiter):
        y = lazy * x + (1.0 - lazy) * (ST @ x)
        res = np.bincount(group, weights=np.abs(y - x))
        x = y
        if res.max() <= 1e-13:
            break
    return _normalise(x, group), res <= 1e-13


def _stationary_solve(S: sp.csr_array, group: np.ndarray, guess: np.ndarray) -> np.ndarray:
    """Stationary laws of a block-diagonal stochastic ``S`` by one sparse linear solve.

    With root ``r`` of a block and ``x = pi / pi[r]``, the other entries solve
    ``x (I - Q) = S[r, .]``, ``Q`` being the block without ``r``. That system
    is well conditioned when ``r`` carries the most mass (then ``x <= 1``) and
    can be numerically singular when ``r`` is light (its near-null vector then
    lives on the heavy states), so the root is ``argmax guess``, and the solve
    is repeated once from ``argmax |x|`` if some ``|x|`` exceeds 1e3.
    """
    n = group.max() + 1
    for _ in range(2):
        order = np.lexsort((-guess, group))  # by block, heaviest first
        root = np.zeros(group.size, bool)
        root[order[np.searchsorted(group[order], np.arange(n))]] = True
        rest = np.flatnonzero(~root)
        b = np.asarray(S[np.flatnonzero(root)][:, rest].sum(axis=0)).ravel()
        x = np.ones(group.size)
        x[rest] = _solve_m_matrix(S[rest][:, rest].T.tocsr(), b)
        guess = np.nan_to_num(np.abs(x), nan=0.0, posinf=np.finfo(float).max)
        if guess.max() <= 1e3:
            break
    return _normalise(np.maximum(x, 0.0), group)


def stationary_distributions(
    P: sp.sparray | sp.spmatrix | np.ndarray,
    classes: KernelClasses | None = None,
    tol: float = 1e-6,
    maxiter: int = 1000,
) -> np.ndarray:
    """``(V,)`` array holding the stationary distribution of every closed class.

    Restricted to closed class ``c`` it is the unique ``pi_c`` with
    ``pi_c P_c = pi_c`` and ``sum(pi_c) = 1`` (periodic classes included); it
    is 0 on transient states, and every stationary law of ``P`` is a convex
    combination of the ``pi_c``. All closed classes are power-iterated together
    (lazily if periodic) for at most ``maxiter`` steps, which settles
    fast-mixing (expander-like) classes; the slow ones (long cycles, chains,
    bottlenecks) are then solved exactly as a sparse linear system rooted at
    their heaviest state. Accuracy: about 1e-12 in total variation.
    """
    A, cls = _prepare(P, classes, tol)
    pi = np.zeros(A.shape[0])
    states = np.flatnonzero(cls.recurrent)
    if not states.size:
        return pi
    group = np.searchsorted(cls.closed_ids, cls.labels[states])
    S = A[states][:, states]
    lazy = np.where(cls.period[cls.closed_ids] > 1, 0.5, 0.0)[group]
    x, done = _power_iteration(S, group, lazy, maxiter)
    slow = ~done[group]
    if slow.any():
        idx = np.flatnonzero(slow)
        sub = np.unique(group[idx], return_inverse=True)[1]
        x[idx] = _stationary_solve(S[idx][:, idx], sub, x[idx])
    pi[states] = x
    return pi


def absorption_times(
    P: sp.sparray | sp.spmatrix | np.ndarray,
    classes: KernelClasses | None = None,
    tol: float = 1e-6,
) -> np.ndarray:
    """``(V,)`` mean number of steps before entering a closed class; 0 on recurrent states.

    On the transient states ``T``: ``(I - Q) t = 1`` with ``Q = P[T, T]``.
    """
    A, cls = _prepare(P, classes, tol)
    transient = np.flatnonzero(~cls.recurrent)
    t = np.zeros(A.shape[0])
    t[transient] = _solve_m_matrix(A[transient][:, transient], np.ones(transient.size))
    return t


def absorption_probabilities(
    P: sp.sparray | sp.spmatrix | np.ndarray,
    classes: KernelClasses | None = None,
    tol: float = 1e-6,
) -> np.ndarray:
    """``(V, number of closed classes)``: probability of ending in each closed class.

    Column ``j`` is closed class ``classes.closed_ids[j]``. On transient states
    ``T``: ``(I - Q) B = R`` with ``R[x, j] = P(x -> closed class j)``; rows of
    recurrent states are indicator vectors. Costs one sparse solve per closed
    class (one LU for all of them on small systems); the result is dense.
    """
    A, cls = _prepare(P, classes, tol)
    closed = cls.closed_ids
    column = np.full(cls.n_classes, -1, np.int64)
    column[closed] = np.arange(closed.size)
    recurrent = cls.recurrent
    transient = np.flatnonzero(~recurrent)
    out = np.zeros((A.shape[0], closed.size))
    out[np.flatnonzero(recurrent), column[cls.labels[recurrent]]] = 1.0
    if transient.size:
        rows = A[transient]
        r, c = _edges(rows)
        hit = recurrent[c]
        R = np.zeros((transient.size, closed.size))
        np.add.at(R, (r[hit], column[cls.labels[c[hit]]]), rows.data[hit])
        out[transient] = _solve_m_matrix(rows[:, transient], R)
    return out
