"""Periodicity and repetition metrics of token sequences.

Periodicity is read from the end of a trace. For a trace ``s`` of length ``n``
and a period ``p``, the *periodic suffix* is the longest suffix ``s[j:]`` with
``s[i] == s[i + p]`` for all ``j <= i < n - p``; its length is
``L_p = p + Z[p]``, where ``Z`` is the Z-function of the reversed trace
(``Z[p]`` = length of the longest common prefix of ``r`` and ``r[p:]``,
``r = s[::-1]``). ``repeats(p) = floor(L_p / p)`` counts whole copies of the
period, and ``p`` *qualifies* when ``repeats(p) >= k``, i.e. when the last
``k*p`` tokens are ``p``-periodic.

- the **period** is, among qualifying periods, the one with the longest
  periodic suffix, ties to the smallest ``p`` (``(1, 0, 0) * 3`` has period 3,
  not 1); **onset** ``= n - L_p`` is the first index of that suffix;
- the **minimal cycle length** (H. Fan's statistic) is the smallest qualifying
  period, whatever its suffix length (``(1, 0, 0, 0) * 3`` has minimal cycle
  length 1 and period 4).

When no period qualifies, period and minimal cycle length are 0, onset is
``n`` and repeats is 0. Traces are 1-D arrays of non-negative integer token ids;
``periodicity_batch`` takes a 2-D array (traces x tokens).

The **loop timeline** of a trace (:func:`loop_segments`) reads the whole trace,
not its end: its loops in order, each a segment ``s[start:end]`` of smallest
period ``p`` holding at least ``k`` whole copies of it.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from dynsys.config import check_int

__all__ = ["Collapse", "LoopFlag", "Periodicity", "Segment", "collapse", "holtzman_loop",
           "loop_segments", "min_cycle_length", "periodicity", "periodicity_batch", "rep_l",
           "rep_r", "rep_w", "repetition_stop", "seq_rep_n"]


@dataclass(frozen=True)
class Periodicity:
    """Eventual periodicity of one trace (ints) or of a batch (arrays of shape ``(B,)``).

    Attributes:
        period: the qualifying period with the longest periodic suffix (ties: smallest); 0 if none.
        onset: first index of that periodic suffix; ``n`` if none.
        repeats: whole copies of the period in the suffix, ``(n - onset) // period``; 0 if none.
        shortest: the minimal cycle length, the smallest qualifying period; 0 if none.
    """

    period: int | np.ndarray
    onset: int | np.ndarray
    repeats: int | np.ndarray
    shortest: int | np.ndarray


@dataclass(frozen=True)
class LoopFlag:
    """Holtzman et al.'s loop flag: the last ``n`` tokens repeat ``repeats`` times in a row."""

    loop: bool
    n: int
    repeats: int


@dataclass(frozen=True)
class Collapse:
    """A delimited list whose entries decay onto a single answer (Lazaridis et al. 2026).

    Attributes:
        n_entries: non-empty entries between delimiters.
        distinct: ``distinct[i]`` = number of distinct entries among entries ``i .. i+window-1``.
        modal_entry: the most frequent of the last ``window`` entries (token ids).
        modal_share: share of the last ``min(window, n_entries)`` entries equal to ``modal_entry``.
        is_collapse: the classification (see :func:`collapse`).
    """

    n_entries: int
    distinct: np.ndarray
    modal_entry: tuple[int, ...]
    modal_share: float
    is_collapse: bool


def _trace(x: Sequence[int] | np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"expected a 1-D trace, got shape {a.shape} (periodicity_batch takes 2-D)")
    if a.size == 0:
        raise ValueError("empty trace")
    return _token_ids(a)


def _token_ids(a: np.ndarray) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"traces must hold integer token ids, got dtype {a.dtype}")
    if a.size and a.min() < 0:
        idx = np.unravel_index(int(np.argmin(a)), a.shape)
        raise ValueError(f"negative token id {a[idx]} at index {tuple(map(int, idx))}")
    return a.astype(np.int64, copy=False)


def _check_k(k: int) -> None:
    if int(k) != k or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")


def _z_function(s: list[int]) -> list[int]:
    """Z[i] = length of the longest common prefix of s and s[i:] (Z[0] = len(s)); O(n)."""
    n = len(s)
    z = [0] * n
    if n:
        z[0] = n
    lo = hi = 0
    for i in range(1, n):
        zi = min(hi - i, z[i - lo]) if i < hi else 0
        while i + zi < n and s[zi] == s[i + zi]:
            zi += 1
        z[i] = zi
        if i + zi > hi:
            lo, hi = i, i + zi
    return z


def periodicity(x: Sequence[int] | np.ndarray, k: int = 3) -> Periodicity:
    """Eventual period, onset, repeats and minimal cycle length of one trace; O(n).

    ``k >= 2`` is the number of whole copies a period needs (see the module docstring).
    """
    _check_k(k)
    s = _trace(x)
    n = s.size
    z = _z_function(s[::-1].tolist())
    period = length = shortest = 0
    for p in range(1, n // k + 1):
        if z[p] >= (k - 1) * p:
            shortest = shortest or p
            if p + z[p] > length:
                period, length = p, p + z[p]
    return Periodicity(period, n - length, length // period if period else 0, shortest)


def min_cycle_length(x: Sequence[int] | np.ndarray, k: int = 3) -> int:
    """Smallest ``p`` whose last ``k*p`` tokens are ``p``-periodic (0 if none).

    H. Fan's statistic, "minimal cycle length among cycles repeated at least k
    times", read at the end of the trace; for a batch use
    ``periodicity_batch(traces, k).shortest``.
    """
    return int(periodicity(x, k).shortest)


# Hashing only proposes candidate periods (equal strings always hash equal);
# every candidate is then checked exactly, so collisions cost time, never accuracy.
_HASH_BASE = np.uint64(0x9E3779B97F4A7C15)


def periodicity_batch(traces: np.ndarray, k: int = 3, chunk: int = 2048) -> Periodicity:
    """:func:`periodicity` of every row of a 2-D array (traces x tokens), vectorised.

    Exact, with no cap on the period. Per chunk of rows: prefix polynomial
    hashes (mod 2^64) of the reversed traces propose, in one vectorised pass,
    every ``p <= n/k`` whose last ``k*p`` tokens hash as ``p``-periodic; then
    candidates are visited in increasing ``p`` and checked exactly (``O(n)``
    vectorised over rows), skipping every ``p`` with ``k*p`` within the best
    suffix found so far. By Fine and Wilf's theorem a skipped period is a
    multiple of a visited one with the same suffix, and visited periods are
    roots of primitively rooted square prefixes of the reversed trace (or hash
    collisions), of which there are ``O(log n)`` (Crochemore and Rytter 1995);
    so a row costs ``O(n log n)`` at worst and ``O(n)`` typically. ``chunk``
    rows are processed at a time, in about ``40 * chunk * n`` bytes.
    """
    _check_k(k)
    a = np.asarray(traces)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D array (traces x tokens), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"empty batch of traces, shape {a.shape}")
    a = _token_ids(a)
    parts = [_periodicity_chunk(a[i : i + chunk, ::-1], k) for i in range(0, a.shape[0], chunk)]
    period, length, shortest = (np.concatenate(c) for c in zip(*parts, strict=True))
    n = a.shape[1]
    repeats = np.where(period > 0, length // np.maximum(period, 1), 0)
    return Periodicity(period, n - length, repeats, shortest)


def _periodicity_chunk(r: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(period, suffix length, shortest) of each row of ``r``, the reversed traces."""
    b, n = r.shape
    period, length, shortest = (np.zeros(b, np.int64) for _ in range(3))
    pmax = n // k
    if pmax == 0:
        return period, length, shortest
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(n + 1, _HASH_BASE, np.uint64))
        powers = np.concatenate(([np.uint64(1)], powers[:-1]))
        prefix = np.zeros((b, n + 1), np.uint64)
        np.cumsum(r.astype(np.uint64) * powers[:n], axis=1, out=prefix[:, 1:])
        ps = np.arange(1, pmax + 1)
        # r[0:(k-1)p] == r[p:kp]  <=>  H((k-1)p) * base^p == H(kp) - H(p)
        cand = prefix[:, (k - 1) * ps] * powers[ps] == prefix[:, k * ps] - prefix[:, ps]
    rows = np.flatnonzero(cand.any(axis=1))
    last = np.zeros(b, np.int64)
    j = np.arange(n)
    while rows.size:
        floor = np.maximum(last[rows], length[rows] // k)
        live = cand[rows] & (ps > floor[:, None])
        has = live.any(axis=1)
        rows, live = rows[has], live[has]
        if not rows.size:
            break
        p = np.argmax(live, axis=1) + 1
        shifted = j + p[:, None]
        rr = r[rows]
        mismatch = (shifted >= n) | (np.take_along_axis(rr, np.minimum(shifted, n - 1), 1) != rr)
        z = np.argmax(mismatch, axis=1)
        ok = z >= (k - 1) * p
        first = ok & (shortest[rows] == 0)
        better = ok & (p + z > length[rows])
        shortest[rows[first]] = p[first]
        period[rows[better]] = p[better]
        length[rows[better]] = (p + z)[better]
        last[rows] = p
    return period, length, shortest


class Segment(NamedTuple):
    """One loop of a trace: ``s[start:end]`` has smallest period ``period`` and holds
    ``repeats = (end - start) // period`` whole copies of it."""

    start: int
    end: int
    period: int
    repeats: int


def loop_segments(x: Sequence[int] | np.ndarray, k: int = 3) -> list[Segment]:
    """The loop timeline of one trace: its loops in order, disjoint.

    A *k-run* is a maximal interval ``s[b:e]`` with smallest period ``p`` and
    ``e - b >= k*p`` (maximal: ``s[b-1] != s[b-1+p]`` and ``s[e] != s[e-p]``
    where those exist). Segments are chosen greedily: repeatedly the longest
    part of a k-run not yet covered by a chosen segment (ties: the earliest
    start, then the smaller period), as long as it still holds ``k`` copies of
    its period. A part of a run keeps the run's smallest period (Fine and
    Wilf), so every segment has smallest period ``period``. The longest-first
    rule lets a loop win over the shorter loops inside it and over the ones
    that overlap its ends: ``(0, 0, 0, 1) * 3`` is one segment of period 4, and
    a uni-gram loop followed by a 3-gram loop gives both, in order.

    Cost: the k-runs come from the runs of ``s[i] == s[i+p]`` for every
    ``p <= n/k``, vectorised over ``i``: ``O(n * n/k)`` time (not
    ``O(n log n)``), in blocks of at most ``2^22`` comparisons. The choice is
    a heap over the ``R < n`` runs (the runs theorem), a run returning to it
    only when a chosen segment has trimmed it.
    """
    _check_k(k)
    s = _trace(x)
    heap = [(b - e, b, p, e) for b, e, p in _k_runs(s, k)]
    heapq.heapify(heap)
    chosen: list[Segment] = []  # disjoint, sorted by start
    starts: list[int] = []  # their starts
    while heap:
        _, b, p, e = heapq.heappop(heap)
        # The uncovered part of [b, e): no chosen segment lies strictly inside it (each was
        # the longest part when chosen, and parts only shrink), so it is one interval.
        i = bisect.bisect_right(starts, b) - 1
        lo = max(b, chosen[i].end) if i >= 0 else b
        j = bisect.bisect_left(starts, lo)
        hi = min(e, starts[j]) if j < len(starts) else e
        if hi - lo < k * p:
            continue
        if (lo, hi) != (b, e):
            heapq.heappush(heap, (lo - hi, lo, p, hi))
            continue
        starts.insert(j, b)
        chosen.insert(j, Segment(b, e, p, (e - b) // p))
    return chosen


def _k_runs(s: np.ndarray, k: int, block: int = 1 << 22) -> list[tuple[int, int, int]]:
    """Every k-run of ``s`` as ``(start, end, smallest period)`` (see :func:`loop_segments`).

    A maximal run of ``s[i] == s[i+p]`` over ``i in [b, c)`` is the maximal ``p``-periodic
    interval ``[b, c + p)``. An interval that is ``p``-periodic this way for several ``p``
    is found once per multiple of its smallest period; the smallest is kept."""
    n = s.size
    found: dict[tuple[int, int], int] = {}
    shifted = np.lib.stride_tricks.sliding_window_view(np.concatenate([s, np.full(n, -1)]), n)
    rows = max(1, block // n)
    for first in range(1, n // k + 1, rows):
        ps = np.arange(first, min(first + rows, n // k + 1))
        equal = shifted[ps] == s  # [p, i]: s[i] == s[i + p], never past the end (-1)
        edges = np.diff(equal.astype(np.int8), axis=1, prepend=0, append=0)
        row, b = np.nonzero(edges == 1)
        c = np.nonzero(edges == -1)[1]  # row-major: the i-th end closes the i-th start
        p = ps[row]
        for bb, ee, pp in zip(*(v[c - b >= (k - 1) * p].tolist() for v in (b, c + p, p))):
            found.setdefault((bb, ee), pp)
    return [(b, e, p) for (b, e), p in found.items()]


def holtzman_loop(x: Sequence[int] | np.ndarray, max_n: int = 90) -> LoopFlag:
    """Holtzman et al. (2020) loop flag.

    For ``n = 1..max_n`` count the whole consecutive repeats of the last ``n``
    tokens, ``(n + Z[n]) // n`` on the reversed trace; take the ``n`` with the
    most repeats (ties: smallest ``n``); loop iff ``repeats > 1`` and
    (``n >= 3`` or ``repeats > 50``).
    """
    s = _trace(x)
    z = [*_z_function(s[::-1].tolist()), 0]
    best_n, best = 1, 0
    for m in range(1, min(max_n, s.size) + 1):
        reps = (m + z[m]) // m
        if reps > best:
            best_n, best = m, reps
    return LoopFlag(best > 1 and (best_n >= 3 or best > 50), best_n, best)


def seq_rep_n(x: Sequence[int] | np.ndarray, n: int = 4) -> float:
    """seq-rep-n (Welleck et al. 2020): ``1 - |unique n-grams| / |n-grams|``; 0 if no n-gram."""
    s = _trace(x)
    if s.size < n:
        return 0.0
    grams = np.lib.stride_tricks.sliding_window_view(s, n)
    return 1.0 - len(np.unique(grams, axis=0)) / len(grams)


def rep_l(
    x: Sequence[int] | np.ndarray,
    window: int = 16,
    predictions: Sequence[int] | np.ndarray | None = None,
) -> float:
    """rep/l (Welleck et al. 2020), ``l = window``: share of ``t`` with ``x[t]`` in ``x[t-l:t]``.

    With ``predictions`` (same length; ``predictions[t]`` is the model's
    next-token prediction from the context ``x[:t]``), the predicted token is
    looked up instead of ``x[t]``. Position 0 never counts as a repeat.
    """
    s = _trace(x)
    q = s if predictions is None else _trace(predictions)
    if q.size != s.size:
        raise ValueError(f"predictions has length {q.size}, trace has length {s.size}")
    n = s.size
    t = np.arange(n)
    keys = np.sort(s * (n + 1) + t)  # (token, position), sorted
    i = np.searchsorted(keys, q * (n + 1) + t) - 1  # last key before (q[t], t)
    prev = keys[np.maximum(i, 0)]
    found = (i >= 0) & (prev // (n + 1) == q)
    return float(np.mean(found & (t - prev % (n + 1) <= window)))


def rep_w(x: Sequence[int] | np.ndarray, window: int = 16) -> float:
    """rep-w (Fu et al. 2021), ``w = window``: share of tokens found among the previous ``w``."""
    return rep_l(x, window)


def rep_r(x: Sequence[int] | np.ndarray) -> float:
    """rep-r (Fu et al. 2021): fraction of tokens inside a bigram that occurs more than once."""
    s = _trace(x)
    if s.size < 2:
        return 0.0
    _, inverse, counts = np.unique(
        np.stack([s[:-1], s[1:]], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    repeated = counts[inverse.ravel()] > 1
    inside = np.zeros(s.size, bool)
    inside[:-1] |= repeated
    inside[1:] |= repeated
    return float(inside.mean())


def collapse(
    x: Sequence[int] | np.ndarray,
    delimiter: int | Sequence[int],
    window: int = 8,
    share: float = 0.5,
    diverse: float = 0.5,
) -> Collapse:
    """Detect a list collapsing onto a single entry.

    The trace is split at every token in ``delimiter``; empty entries are
    dropped and entries compare verbatim. The list *collapses* iff it has at
    least ``2*window`` entries, its first window was diverse
    (``distinct[0] >= diverse * window``) and one entry holds a strict majority
    of the last window (``modal_share > share``). A two-entry alternation
    (``modal_share = 0.5``) is a verbatim loop, not a collapse; verbatim loops
    are :func:`periodicity`'s business.
    """
    s = _trace(x)
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    cut = np.flatnonzero(np.isin(s, np.atleast_1d(np.asarray(delimiter))))
    pieces = np.split(s, cut)
    entries = [tuple(e[1:].tolist()) if i else tuple(e.tolist()) for i, e in enumerate(pieces)]
    entries = [e for e in entries if e]
    ids = {e: i for i, e in enumerate(dict.fromkeys(entries))}
    seq = [ids[e] for e in entries]
    distinct = np.array(
        [len(set(seq[i : i + window])) for i in range(len(seq) - window + 1)], np.int64
    )
    tail = entries[-window:]
    if tail:
        modal_entry, count = Counter(tail).most_common(1)[0]
        modal_share = count / len(tail)
    else:
        modal_entry, modal_share = (), 0.0
    is_collapse = (
        len(entries) >= 2 * window and distinct[0] >= diverse * window and modal_share > share
    )
    return Collapse(len(entries), distinct, modal_entry, modal_share, bool(is_collapse))


def min_cycle_anywhere(traces: np.ndarray, k: int = 3) -> np.ndarray:
    """Per row of traces [B, G]: the smallest p such that some k·p consecutive tokens are
    p-periodic (x_i = x_{i+p} on a run of (k−1)·p consecutive i); 0 if there is none."""
    traces = np.asarray(traces)
    out = np.zeros(len(traces), np.int64)
    todo = np.arange(len(traces))
    for p in range(1, traces.shape[1] // k + 1):
        hit = _periodic_runs(traces[todo], p).max(axis=1) >= (k - 1) * p
        out[todo[hit]] = p
        todo = todo[~hit]
        if not todo.size:
            break
    return out


def _periodic_runs(traces: np.ndarray, p: int) -> np.ndarray:
    """run [B, G − p]: run[:, i] = how many consecutive i' <= i (ending at i) have
    x_{i'} == x_{i'+p}; 0 where x_i != x_{i+p}."""
    same = traces[:, p:] == traces[:, :-p]
    index = np.arange(same.shape[1])
    return index - np.maximum.accumulate(np.where(same, -1, index), axis=1)


def repetition_stop(traces: np.ndarray, min_pattern: int, max_pattern: int,
                    min_count: int) -> np.ndarray:
    """vLLM's repetition detection as a stop criterion, read off finished traces [B, G]: per
    row, the length t at which generation would have been ended, the smallest t such that
    x_0..x_{t−1} ends in min_count copies of a pattern of size p ∈ [min_pattern, max_pattern]
    (x_{t−1−j} = x_{t−1−j−p} for 0 <= j < (min_count − 1)·p); G if there is none. Stopping
    changes no token before it, so the stopped output is traces[b, :t]."""
    traces = np.asarray(traces)
    if traces.ndim != 2:
        raise ValueError(f"expected traces [B, G], got shape {traces.shape}")
    traces = _token_ids(traces)
    min_pattern = check_int("min_pattern", min_pattern, minimum=1)
    max_pattern = check_int("max_pattern", max_pattern, minimum=min_pattern)
    min_count = check_int("min_count", min_count, minimum=2)
    B, G = traces.shape
    stop = np.full(B, G, np.int64)
    for p in range(min_pattern, min(max_pattern, G // min_count) + 1):
        hit = _periodic_runs(traces, p) >= (min_count - 1) * p  # hit[:, i]: stop at t = i+p+1
        first = np.where(hit.any(axis=1), hit.argmax(axis=1) + p + 1, G)
        stop = np.minimum(stop, first)
    return stop
