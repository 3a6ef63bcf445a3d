"""Stationary laws of the closed classes of a sparse kernel, by GTH state reduction
(Grassmann-Taksar-Heyman: no subtraction, so weakly linked wells are resolved to
relative accuracy), with certified power iteration for large expander-like classes."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse import linalg as spla

from dynsys.dynamics.kernels import KernelClasses, kernel_edges, prepare_kernel

# Stationary laws (see stationary_distributions). A closed class, or the core
# that sparse elimination leaves of it, is eliminated densely up to this many
# states: 128 MiB and (2/3) 4096^3 = 4.6e10 flops, seconds with BLAS, and the
# worst-case relative error bound of GTH stays under 1e-5.
_GTH_DENSE_MAX = 4096
# Sparse elimination rounds go on in a class while more than _GTH_SPARSE_MIN of
# its states remain and the last round saved more dense flops than a round costs
# (about _ROUND_FLOPS_PER_ENTRY an entry). A class over _GTH_DENSE_MAX states is
# given up (to certified power iteration) when a round removes less than
# _GTH_MIN_ROUND of its states or multiplies its stored entries by more than
# _GTH_MAX_GROWTH.
_GTH_SPARSE_MIN = 256
_ROUND_FLOPS_PER_ENTRY = 2000
_GTH_MIN_ROUND = 1 / 32
_GTH_MAX_GROWTH = 1.125
# Dense elimination: panels of pivots, in sub-panels; float64 entries a batch of blocks.
_GTH_PANEL = 256
_GTH_SUBPANEL = 32
_CHUNK = 1 << 20
_NO_EXPONENT = np.iinfo(np.int32).min  # exponent of a mass known to be 0
# Power iteration: its law is kept when certified to this total-variation error;
# the certificate's root is chosen after _WARMUP steps, and its progress checked
# every _WARMUP steps.
_CERTIFIED_TV = 1e-10
_WARMUP = 16



def _normalise(x: np.ndarray, group: np.ndarray) -> np.ndarray:
    return x / np.bincount(group, weights=x)[group]


def _off_diagonal(M: sp.csr_array) -> sp.csr_array:
    """The positive off-diagonal entries of a CSR matrix without duplicates."""
    rows, cols = kernel_edges(M)
    keep = (rows != cols) & (M.data > 0)
    indptr = np.r_[0, np.cumsum(np.bincount(rows[keep], minlength=M.shape[0]))]
    return sp.csr_array((M.data[keep], cols[keep], indptr), shape=M.shape)


def _check_rates(rate: np.ndarray) -> None:
    """Raise unless every pivot rate is a normal positive float.

    A rate of a censored chain below the float range (products of
    probabilities under ~1e-308) has lost the links it stood for, and with
    them the law (an exact 0 would make the chain reducible).
    """
    if not (rate >= np.finfo(float).tiny).all():
        raise RuntimeError(
            "a closed class's censored chain has a rate below the float range "
            f"({float(np.nanmin(rate)):.3g}): GTH cannot resolve its stationary law in float64"
        )


def _scaled_sums(
    mantissa: np.ndarray, exponent: np.ndarray, weight: np.ndarray, indptr: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``mantissa 2^exponent weight`` over the non-empty segments ``indptr``.

    Masses are carried as ``mantissa 2^exponent`` so that a law spanning more
    than the float range (e.g. two wells behind a barrier of 1e-400) keeps
    every mass to full relative precision: each sum's terms are scaled by the
    power of 2 (exact) that brings the largest one to ``[1/4, 1)``. Returns
    ``(mantissa, exponent)`` of the sums, mantissas in ``[1/2, 1)`` or 0.
    """
    weight_mantissa, weight_exponent = np.frexp(weight)
    scale = exponent + weight_exponent
    top = np.maximum.reduceat(np.where(weight > 0, scale, _NO_EXPONENT), indptr[:-1])
    shift = np.minimum(scale - np.repeat(top, np.diff(indptr)), 0)
    total = np.add.reduceat(mantissa * weight_mantissa * np.ldexp(1.0, shift), indptr[:-1])
    out_mantissa, out_exponent = np.frexp(total)
    return out_mantissa, out_exponent + top


def _gth_dense(X: np.ndarray, size: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised stationary laws of a batch ``X`` (``(B, n, n)``, overwritten) of chains.

    ``X[b]`` holds the off-diagonal rates of an irreducible chain on its first
    ``size[b]`` states, followed by padding states whose rows and columns are
    zero (their mass is 0); diagonals are never read. GTH elimination: for
    ``k = n-1, ..., 1``, with ``s_k = sum_{j<k} X[k, j]`` (the rate of leaving
    ``k``: a sum, never ``1 - P[k, k]``) and ``c_i = X[i, k] / s_k``,
    ``X[i, j] += c_i X[k, j]`` for ``i, j < k``: the chain watched only while
    outside ``k``, whose stationary law is the old one restricted and
    rescaled. Then ``x_0 = 1`` and ``x_k = sum_{i<k} x_i c_i`` (flow balance
    of ``k``). Blocked: a panel of ``_GTH_PANEL`` pivots, in sub-panels of
    ``_GTH_SUBPANEL``, updates the rows and columns of its later pivots as
    they are reached and the rest of the matrix in one matrix product; every
    operation adds nonnegative terms. Returns ``(mantissa, exponent)``, each
    ``(B, n)``: the back-substitution runs in floats, and again with
    :func:`_scaled_sums` if some mass left ``[2^-900, 2^900]``.
    """
    B, n, _ = X.shape
    for hi in range(n, 1, -_GTH_PANEL):
        lo = max(1, hi - _GTH_PANEL)
        cols = np.empty((B, lo, hi - lo))  # c of each panel pivot on the states below the panel
        rows = np.empty((B, hi - lo, lo))  # its row there
        for sub_hi in range(hi, lo, -_GTH_SUBPANEL):
            sub_lo = max(lo, sub_hi - _GTH_SUBPANEL)
            c = np.zeros((B, sub_hi, sub_hi - sub_lo))
            r = np.zeros((B, sub_hi - sub_lo, sub_hi))
            for j, k in enumerate(range(sub_hi - 1, sub_lo - 1, -1)):
                # row and column of k with the updates of the sub-panel's earlier pivots
                row = X[:, k, :k] + (c[:, k, None, :j] @ r[:, :j, :k])[:, 0]
                rate = row.sum(axis=1)
                rate[size <= k] = 1.0  # padding: its column is zero too
                _check_rates(rate)
                col = X[:, :k, k] + (c[:, :k, :j] @ r[:, :j, k, None])[:, :, 0]
                c[:, :k, j] = X[:, :k, k] = col / rate[:, None]
                r[:, j, :k] = row
            X[:, lo:sub_lo, :sub_lo] += c[:, lo:sub_lo] @ r[:, :, :sub_lo]
            X[:, :lo, lo:sub_lo] += c[:, :lo] @ r[:, :, lo:sub_lo]
            cols[:, :, hi - sub_hi : hi - sub_lo] = c[:, :lo]
            rows[:, hi - sub_hi : hi - sub_lo] = r[:, :, :lo]
        X[:, :lo, :lo] += cols @ rows
    x = np.zeros((B, n))
    x[:, 0] = 1.0
    for k in range(1, n):
        x[:, k] = np.einsum("bi,bi->b", x[:, :k], X[:, :k, k])
    padding = np.arange(n) >= size[:, None]
    if np.all(padding | ((x >= 2.0**-900) & (x <= 2.0**900))):
        return np.frexp(x)  # every term that matters was a normal float: nothing was lost
    mantissa, exponent = np.zeros((B, n)), np.zeros((B, n), np.int64)
    mantissa[:, 0], exponent[:, 0] = np.frexp(1.0)
    for k in range(1, n):
        mantissa[:, k], exponent[:, k] = _scaled_sums(
            mantissa[:, :k].ravel(), exponent[:, :k].ravel(), X[:, :k, k].ravel(),
            np.arange(0, B * k + 1, k),
        )
    return mantissa, exponent


def _gth_dense_blocks(A: sp.csr_array, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised stationary laws of the irreducible diagonal blocks ``group`` of rates ``A``.

    As ``(mantissa, exponent)`` (see :func:`_scaled_sums`). Blocks go to
    :func:`_gth_dense` in batches of similar sizes (four size classes an
    octave, padded to the largest block of the batch) of at most ``_CHUNK``
    entries.
    """
    size = np.bincount(group)
    octave = np.floor(np.log2(size)).astype(np.int64)
    step = np.left_shift(1, np.maximum(octave - 2, 0))
    size_class = 4 * octave + (size - np.left_shift(1, octave)) // step
    blocks = np.lexsort((size, size_class))
    batch = np.empty(size.size, np.int64)  # batch of each block, numbered along `blocks`
    slot = np.empty(size.size, np.int64)  # its place in the batch
    n_batches = 0
    for members in np.split(blocks, np.flatnonzero(np.diff(size_class[blocks])) + 1):
        per_batch = max(1, _CHUNK // int(size[members].max()) ** 2)
        batch[members] = n_batches + np.arange(members.size) // per_batch
        slot[members] = np.arange(members.size) % per_batch
        n_batches += -(-members.size // per_batch)
    order = np.argsort(group, kind="stable")
    local = np.empty(group.size, np.int64)  # index of each state in its block
    local[order] = np.arange(group.size) - np.r_[0, np.cumsum(size)[:-1]][group[order]]
    rows, cols = kernel_edges(A)
    edges = np.argsort(batch[group[rows]], kind="stable")
    edge_end = np.searchsorted(batch[group[rows]][edges], np.arange(n_batches), side="right")
    states = np.argsort(batch[group], kind="stable")
    state_end = np.searchsorted(batch[group][states], np.arange(n_batches), side="right")
    mantissa, exponent = np.empty(group.size), np.empty(group.size, np.int64)
    for b in range(n_batches):
        e = edges[edge_end[b - 1] if b else 0 : edge_end[b]]
        s = states[state_end[b - 1] if b else 0 : state_end[b]]
        n = int(size[group[s]].max())
        X = np.zeros((int(slot[group[s]].max()) + 1, n, n))
        X[slot[group[rows[e]]], local[rows[e]], local[cols[e]]] = A.data[e]
        batch_mantissa, batch_exponent = _gth_dense(X, np.bincount(slot[group[s]]))
        mantissa[s] = batch_mantissa[slot[group[s]], local[s]]
        exponent[s] = batch_exponent[slot[group[s]], local[s]]
    return mantissa, exponent


def _segment_min(values: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Minimum of ``values[indptr[i]:indptr[i + 1]]`` for each ``i``; inf when empty."""
    out = np.full(indptr.size - 1, np.inf)
    filled = np.flatnonzero(np.diff(indptr))
    if filled.size:
        out[filled] = np.minimum.reduceat(values, indptr[filled])
    return out


def _independent_pivots(A: sp.csr_array, rng: np.random.Generator) -> np.ndarray:
    """States no neighbour of which (either direction) has a smaller key; increasing.

    The key is the Markowitz count ``in-degree * out-degree`` (the fill that
    eliminating the state can create) plus a random tie-break in ``[0, 1)``:
    the chosen states are pairwise non-adjacent local minima of fill, and the
    cheapest state is always among them. Every state of ``A`` needs a neighbour.
    """
    m = A.shape[0]
    key = np.diff(A.indptr) * np.bincount(A.indices, minlength=m) + rng.random(m)
    At = A.tocsc()
    lowest = np.minimum(
        _segment_min(key[A.indices], A.indptr), _segment_min(key[At.indices], At.indptr)
    )
    return np.flatnonzero(key < lowest)


def _eliminate(
    A: sp.csr_array, pivots: np.ndarray, keep: np.ndarray
) -> tuple[sp.csr_array, sp.csr_array]:
    """Eliminate the pairwise non-adjacent ``pivots`` from rates ``A``: (rates on ``keep``, ``W``).

    With ``s_k`` the off-diagonal row sum of pivot ``k`` and ``W = A[keep, pivots]
    diag(1 / s)``, the chain watched only on ``keep`` has rates ``A[keep, keep] +
    W A[pivots, keep]`` off the diagonal (the pivots share no entries, so this
    is the elimination of one after the other), and ``pi[pivots] = pi[keep] W``.
    """
    rate = A[pivots].sum(axis=1)
    _check_rates(rate)
    kept = A[keep]
    W = kept[:, pivots]
    W.data /= rate[W.indices]
    return _off_diagonal(kept[:, keep] + W @ A[pivots][:, keep]), W


def _gth(S: sp.csr_array, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stationary laws of a block-diagonal stochastic ``S`` with irreducible blocks ``group``.

    GTH state reduction (see :func:`_gth_dense`), sparse while it stays so: in
    blocks with more than ``_GTH_SPARSE_MIN`` states left, rounds eliminate an
    independent set of low-fill states (:func:`_independent_pivots`,
    :func:`_eliminate`) while a round saves more dense work than it costs
    (see ``_ROUND_FLOPS_PER_ENTRY``); what is left of each block (its core,
    at most ``_GTH_DENSE_MAX`` states) is eliminated densely, and the
    eliminated masses follow round by round backwards. Every operation adds,
    multiplies or divides nonnegative numbers. A block over
    ``_GTH_DENSE_MAX`` states is given up when a round removes less than
    ``_GTH_MIN_ROUND`` of it or grows its stored entries by more than
    ``_GTH_MAX_GROWTH``: elimination fills it in (expander-like). Returns
    ``(laws, solved)``, ``solved`` per block; laws are 0 on blocks given up.
    """
    A = _off_diagonal(S)
    ids = np.arange(group.size)  # state of S behind each row of A
    block = group  # block of each row of A
    remaining = np.bincount(group)
    active = remaining > _GTH_SPARSE_MIN
    solved = np.ones(remaining.size, bool)
    rng = np.random.default_rng(0)
    cores, rounds = [], []
    while ids.size:
        sparse = active[block]
        if not sparse.all():  # blocks done with sparse rounds (or given up) leave A
            done = np.flatnonzero(~sparse & solved[block])
            if done.size:
                cores.append((ids[done], A[done][:, done], block[done]))
            A, ids, block = A[sparse][:, sparse], ids[sparse], block[sparse]
            continue
        entries = np.bincount(block, weights=np.diff(A.indptr), minlength=remaining.size)
        pivots = _independent_pivots(A, rng)
        eliminated = np.bincount(block[pivots], minlength=remaining.size)
        keep = np.setdiff1d(np.arange(ids.size), pivots, assume_unique=True)
        A, W = _eliminate(A, pivots, keep)
        rounds.append((ids[pivots], ids[keep], W.tocsc()))
        ids, block = ids[keep], block[keep]
        grown = np.bincount(block, weights=np.diff(A.indptr), minlength=remaining.size)
        large = remaining > _GTH_DENSE_MAX
        fills_in = large & (
            (eliminated < _GTH_MIN_ROUND * remaining) | (grown > _GTH_MAX_GROWTH * entries)
        )
        # a round as productive as this one saves 2 r^2 dense flops a state it removes
        worth = 2.0 * eliminated * remaining.astype(float) ** 2 >= _ROUND_FLOPS_PER_ENTRY * entries
        solved &= ~fills_in
        remaining -= eliminated
        active &= (remaining > _GTH_SPARSE_MIN) & np.where(large, ~fills_in, worth)
    mantissa, exponent = np.zeros(group.size), np.zeros(group.size, np.int64)
    for core_ids, core, core_block in cores:
        core_block = np.unique(core_block, return_inverse=True)[1]
        mantissa[core_ids], exponent[core_ids] = _gth_dense_blocks(core, core_block)
    for pivot_ids, keep_ids, W in reversed(rounds):  # pi[pivots] = pi[keep] W, column by column
        source = keep_ids[W.indices]
        mantissa[pivot_ids], exponent[pivot_ids] = _scaled_sums(
            mantissa[source], exponent[source], W.data, W.indptr
        )
    top = np.full(remaining.size, _NO_EXPONENT, np.int64)
    np.maximum.at(top, group, np.where(mantissa > 0, exponent, _NO_EXPONENT))
    x = np.where(solved[group], np.ldexp(mantissa, exponent - top[group]), 0.0)
    return x / np.maximum(np.bincount(group, weights=x), np.finfo(float).tiny)[group], solved


def _hitting_time_bound(S: sp.csr_array, group: np.ndarray, root: np.ndarray) -> np.ndarray:
    """Upper bounds on ``h_i``, the mean number of steps from ``i`` to the root of its block.

    ``S`` block-diagonal stochastic with irreducible blocks ``group``, one
    ``root`` a block. ``h`` solves ``(I - Q) h = 1`` off the roots, ``Q`` being
    ``S`` without them; restarted GMRES (no LU: the blocks are large and may
    fill in) gives some ``h'``, with residual ``rho = 1 - (I - Q) h'``. Then
    ``h = h' + (I - Q)^{-1} rho`` and ``(I - Q)^{-1} >= 0`` give ``h <= h' +
    |rho|_inf h``, so ``h <= h' / (1 - |rho|_inf)`` with ``|rho|_inf`` (its
    rounding added) taken over the block; where it is not below 1/2 (GMRES
    did not converge there) the block's bound is inf. 0 at the roots.
    """
    rest = np.setdiff1d(np.arange(group.size), root, assume_unique=True)
    Q = S[rest][:, rest]
    M = sp.identity(rest.size, format="csr") - Q
    h = spla.gmres(M, np.ones(rest.size), rtol=1e-12, atol=0.0, restart=60, maxiter=2)[0]
    rounding = (np.diff(Q.indptr) + 3) * np.finfo(float).eps * (1 + np.abs(h) + Q @ np.abs(h))
    rho = np.abs(1.0 - h + Q @ h) + rounding
    worst = np.zeros(root.size)
    np.maximum.at(worst, group[rest], np.nan_to_num(rho, nan=np.inf))
    bound = np.zeros(group.size)
    bound[rest] = np.maximum(h, 0.0) / (1.0 - worst[group[rest]])
    bound[rest[worst[group[rest]] >= 0.5]] = np.inf
    return bound


def _certified_power_iteration(
    S: sp.csr_array, group: np.ndarray, lazy: np.ndarray, maxiter: int
) -> tuple[np.ndarray, np.ndarray]:
    """Power iteration on a block-diagonal stochastic ``S`` (blocks ``group``): (laws, certified).

    ``x <- lazy x + (1 - lazy) x S`` from uniform, renormalised; ``lazy`` (per
    state) is 1/2 in periodic blocks, ``(I + S_c) / 2`` having the same law
    and no period. For any probability vector ``x`` on a block with law
    ``pi``, a root ``j``, ``r = xS - x`` and ``h_i`` the mean number of steps
    from ``i`` to ``j``: with ``Q`` the block without ``j``, ``x - pi = a pi -
    (g, 0)`` where ``g = r_{-j} (I - Q)^{-1}`` and ``a = sum(g)``, so

        TV(x, pi) <= |g|_1 <= sum_i |r_i| h_i.

    After ``_WARMUP`` steps the heaviest state of each block becomes its root
    (:func:`_hitting_time_bound`); a block is certified, and that iterate
    kept, at the first step where this sum, with ``|r_i|`` raised by the
    rounding of ``(xS)_i`` (``d_i`` terms: ``d_i eps (xS)_i``) and the
    deviation of ``sum(x)`` from 1 added, is at most ``_CERTIFIED_TV``. A
    block is given up when its hitting times cannot be bounded, or when its
    bound, shrinking at the rate of the last ``_WARMUP`` steps, would not get
    there within ``maxiter`` steps.
    """
    n = group.max() + 1
    ST = S.T.tocsr()
    rounding = np.diff(ST.indptr) * np.finfo(float).eps
    x = _normalise(np.ones(group.size), group)
    laws = np.zeros(group.size)
    certified = np.zeros(n, bool)
    for step in range(maxiter + 1):
        z = ST @ x
        if step == min(_WARMUP, maxiter):
            order = np.lexsort((-x, group))
            hit = _hitting_time_bound(S, group, order[np.searchsorted(group[order], np.arange(n))])
            hopeless = np.zeros(n, bool)
            hopeless[group[np.isinf(hit)]] = True
            hit[hopeless[group]] = 0.0
            last = np.full(n, np.inf)  # the bound _WARMUP steps ago
        if step >= min(_WARMUP, maxiter):
            bound = np.bincount(group, weights=(np.abs(z - x) + rounding * z) * hit, minlength=n)
            bound += np.abs(np.bincount(group, weights=x, minlength=n) - 1.0)
            new = (bound <= _CERTIFIED_TV) & ~hopeless & ~certified
            laws[new[group]] = x[new[group]]
            certified |= new
            if step % _WARMUP == 0:
                shrink = np.divide(bound, last, out=np.zeros(n), where=last > 0)
                hopeless |= bound * shrink ** ((maxiter - step) / _WARMUP) > _CERTIFIED_TV
                last = bound
            if (certified | hopeless).all():
                break
        x = _normalise(lazy * x + (1.0 - lazy) * z, group)
    return laws, certified


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
    combination of the ``pi_c``.

    Method: GTH (Grassmann-Taksar-Heyman) state reduction (:func:`_gth`).
    Eliminating state ``k`` leaves the chain watched only outside ``k``, with
    rates ``a_ij + a_ik a_kj / s_k`` where ``s_k = sum_{j != k} a_kj`` is the
    off-diagonal row sum, never ``1 - P_kk``; at the end ``pi_k = sum_i pi_i
    a_ik / s_k`` recovers the eliminated masses. Only sums of nonnegative
    numbers, products and quotients occur: no cancellation, however weakly
    the parts of a nearly decomposable class are linked. Accuracy (unit
    roundoff ``u``, exact input): the rounding of a step perturbs only the
    rows of the ``in_k`` states with an entry in column ``k``, each entry by
    a relative ``(out_k + 3) u`` at most (``out_k`` entries in row ``k``); by
    the Markov chain tree theorem ``pi_i`` is proportional to a sum over
    spanning trees of products holding one rate out of each state, so that
    moves every ``pi_i`` by a relative ``2 in_k (out_k + 3) u`` at most. Each
    computed ``pi_i`` thus has relative error at most about ``2 u W``, ``W =
    sum_k in_k (out_k + 3)`` over the eliminations, plus lower-order terms of
    the back-substitution: ``W <= m^3 / 3`` for a dense class of ``m`` states
    (under 1e-5 at ``m = _GTH_DENSE_MAX = 4096``), ``O(m)`` for chains,
    cycles and trees; the error seen in practice is ~1e-15, and the
    total-variation error is at most the largest relative one. Masses are
    carried with their own exponents (:func:`_scaled_sums`), so this holds
    for laws spanning more than the float range, as long as the rates of the
    censored chains stay within it.

    Classes of more than ``_GTH_DENSE_MAX`` states on which elimination fills
    in (expander-like: a round of sparse elimination grows the stored
    entries by more than 1/8 or removes less than 1/32 of the states) are
    power-iterated instead (lazily if periodic), for at most ``maxiter``
    steps, and kept only when certified to ``_CERTIFIED_TV = 1e-10`` in total
    variation (the bound of :func:`_certified_power_iteration`, ``sum_i |r_i|
    h_i`` with residual ``r`` and hitting times ``h`` of a heavy state): this
    settles fast-mixing classes. ``RuntimeError`` for a class that neither
    elimination nor a certified power iteration resolves, or whose censored
    chains have rates below the float range (:func:`_check_rates`).
    """
    A, cls = prepare_kernel(P, classes, tol)
    pi = np.zeros(A.shape[0])
    states = np.flatnonzero(cls.recurrent)
    if not states.size:
        return pi
    group = np.searchsorted(cls.closed_ids, cls.labels[states])
    S = A[states][:, states]
    x, solved = _gth(S, group)
    if not solved.all():
        given_up = np.flatnonzero(~solved[group])
        sub = np.unique(group[given_up], return_inverse=True)[1]
        lazy = np.where(cls.period[cls.closed_ids] > 1, 0.5, 0.0)[group[given_up]]
        laws, certified = _certified_power_iteration(S[given_up][:, given_up], sub, lazy, maxiter)
        if not certified.all():
            raise RuntimeError(
                f"a closed class of {int(np.sum(sub == np.argmin(certified)))} states fills in "
                f"under elimination, and {maxiter} power-iteration steps did not certify its "
                f"stationary law to {_CERTIFIED_TV:g} in total variation"
            )
        x[given_up] = laws
    pi[states] = x
    return pi


