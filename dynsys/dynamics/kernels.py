"""Sparse Markov kernel analysis: classes, periods, stationary laws, absorption.

A kernel is a row-stochastic ``V x V`` matrix ``P`` (``P[u, v]`` = probability
of ``u -> v``), kept sparse (CSR), e.g. the top-k / top-p next-token
distributions of :mod:`dynsys.dynamics.markov`. The states split into communicating
classes (strongly connected components of the graph of positive entries); a
class is *closed* (recurrent) when no edge leaves it, otherwise every state in
it is transient. ``P`` is never densified: stationary laws come from GTH
elimination, dense only on blocks of at most ``_GTH_DENSE_MAX`` states (see
:func:`stationary_distributions`), and absorption from sparse solves with
``I - Q`` a nonsingular M-matrix.
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


def kernel_edges(A: sp.csr_array) -> tuple[np.ndarray, np.ndarray]:
    return np.repeat(np.arange(A.shape[0]), np.diff(A.indptr)), A.indices.astype(np.int64)


def _classes(A: sp.csr_array) -> KernelClasses:
    v = A.shape[0]
    n, raw = csgraph.connected_components(A, directed=True, connection="strong")
    _, first = np.unique(raw, return_index=True)  # smallest state of each raw class
    rank = np.empty(n, np.int64)
    rank[np.argsort(first)] = np.arange(n)
    labels = rank[raw]
    rows, cols = kernel_edges(A)
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


def prepare_kernel(
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


def solve_m_matrix(rows: sp.csr_array, states: np.ndarray, b: np.ndarray,
                   rtol: float = 1e-12) -> np.ndarray:
    """Solve ``(I - Q) x = b`` with ``Q = P[states, states]``, given the full rows
    ``P[states, :]`` of a kernel from whose states every state can escape.

    ``I - Q`` is then a nonsingular M-matrix: LU with diagonal pivots is
    stable. Its diagonal is formed as the sum of each row's other entries
    (the mass that leaves the state, escape included), never as ``1 - P_ii``,
    which cancels for nearly absorbing states. LU when it is sure to be cheap
    (:func:`_lu_is_cheap`); otherwise (expander-like: LU fills in) restarted
    GMRES, which converges in a few dozen iterations there, with LU as the
    fallback. ``b`` is 1-D or 2-D.
    """
    m = len(states)
    b = np.asarray(b, np.float64)
    if m == 0:
        return np.zeros(b.shape)
    r, c = kernel_edges(rows)
    stay = c == states[r]
    leave = np.bincount(r[~stay], weights=rows.data[~stay], minlength=m)
    inside = ~stay & np.isin(c, states)
    position = np.searchsorted(states, c[inside])
    M = sp.csr_array((np.r_[leave, -rows.data[inside]],
                      (np.r_[np.arange(m), r[inside]], np.r_[np.arange(m), position])),
                     shape=(m, m))
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


def absorption_times(
    P: sp.sparray | sp.spmatrix | np.ndarray,
    classes: KernelClasses | None = None,
    tol: float = 1e-6,
) -> np.ndarray:
    """``(V,)`` mean number of steps before entering a closed class; 0 on recurrent states.

    On the transient states ``T``: ``(I - Q) t = 1`` with ``Q = P[T, T]``
    (see :func:`solve_m_matrix` for how nearly absorbing states keep their
    accuracy).
    """
    A, cls = prepare_kernel(P, classes, tol)
    transient = np.flatnonzero(~cls.recurrent)
    t = np.zeros(A.shape[0])
    t[transient] = solve_m_matrix(A[transient], transient, np.ones(transient.size))
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
    A, cls = prepare_kernel(P, classes, tol)
    closed = cls.closed_ids
    column = np.full(cls.n_classes, -1, np.int64)
    column[closed] = np.arange(closed.size)
    recurrent = cls.recurrent
    transient = np.flatnonzero(~recurrent)
    out = np.zeros((A.shape[0], closed.size))
    out[np.flatnonzero(recurrent), column[cls.labels[recurrent]]] = 1.0
    if transient.size:
        rows = A[transient]
        r, c = kernel_edges(rows)
        hit = recurrent[c]
        R = np.zeros((transient.size, closed.size))
        np.add.at(R, (r[hit], column[cls.labels[c[hit]]]), rows.data[hit])
        out[transient] = solve_m_matrix(rows, transient, R)
    return out
