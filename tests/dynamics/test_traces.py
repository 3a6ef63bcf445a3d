"""Trace periodicity and repetition metrics against brute-force definitions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsys.dynamics.traces as tr
from dynsys.dynamics.traces import (
    collapse,
    holtzman_loop,
    loop_segments,
    min_cycle_length,
    periodicity,
    periodicity_batch,
    rep_l,
    rep_r,
    rep_w,
    seq_rep_n,
)

FAST = settings(max_examples=150, deadline=None)


def suffix_length(s: list[int], p: int) -> int:
    """Length of the longest suffix with s[i] == s[i + p], by a direct scan."""
    n = len(s)
    i = n - p - 1
    while i >= 0 and s[i] == s[i + p]:
        i -= 1
    return n - i - 1


def brute_periodicity(s: list[int], k: int) -> tuple[int, int, int, int]:
    """(period, onset, repeats, shortest) by scanning every period: O(n^2)."""
    n = len(s)
    qualifying = [(p, suffix_length(s, p)) for p in range(1, n + 1)]
    qualifying = [(p, length) for p, length in qualifying if length >= k * p]
    if not qualifying:
        return 0, n, 0, 0
    p, length = min(qualifying, key=lambda q: (-q[1], q[0]))
    return p, n - length, length // p, min(q[0] for q in qualifying)


def as_tuple(r: tr.Periodicity, i: int | None = None) -> tuple[int, int, int, int]:
    fields = (r.period, r.onset, r.repeats, r.shortest)
    return tuple(int(f if i is None else f[i]) for f in fields)


def lasso(draw, alphabet: int, max_prefix: int = 20, max_period: int = 6) -> list[int]:
    """A random prefix followed by several copies (and a partial copy) of a random block."""
    prefix = draw(st.lists(st.integers(0, alphabet - 1), max_size=max_prefix))
    block = draw(st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=max_period))
    copies = draw(st.integers(1, 8))
    cut = draw(st.integers(0, len(block) - 1))
    return prefix + block * copies + block[:cut]


@st.composite
def traces(draw) -> list[int]:
    alphabet = draw(st.sampled_from([1, 2, 3, 50]))
    if draw(st.booleans()):
        return lasso(draw, alphabet)
    return draw(st.lists(st.integers(0, alphabet - 1), min_size=1, max_size=60))


@FAST
@given(traces(), st.sampled_from([2, 3, 4]))
def test_periodicity_matches_brute_force(s, k):
    assert as_tuple(periodicity(s, k)) == brute_periodicity(s, k)
    assert min_cycle_length(s, k) == brute_periodicity(s, k)[3]


@st.composite
def batches(draw) -> np.ndarray:
    n = draw(st.integers(1, 40))
    alphabet = draw(st.sampled_from([1, 2, 3, 50]))
    rows = []
    for _ in range(draw(st.integers(1, 6))):
        row = lasso(draw, alphabet, max_prefix=n)
        rows.append(
            (row * (n // len(row) + 1))[-n:] if draw(st.booleans()) else (row + [0] * n)[:n]
        )
    return np.array(rows)


@FAST
@given(batches(), st.sampled_from([2, 3]), st.integers(1, 4))
def test_batch_equals_single(x, k, chunk):
    r = periodicity_batch(x, k, chunk=chunk)
    for i, row in enumerate(x):
        assert as_tuple(r, i) == as_tuple(periodicity(row, k)) == brute_periodicity(row.tolist(), k)


@pytest.mark.parametrize("base", [0, 1, 2])
def test_batch_is_exact_under_hash_collisions(monkeypatch, base):
    """A degenerate hash (every candidate collides) changes speed, never results."""
    monkeypatch.setattr(tr, "_HASH_BASE", np.uint64(base))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (40, 120))
    x[::2, 60:] = np.resize(rng.integers(0, 3, 5), 60)
    r = periodicity_batch(x, 3)
    for i, row in enumerate(x):
        assert as_tuple(r, i) == brute_periodicity(row.tolist(), 3)


def test_batch_equals_single_long_traces():
    rng = np.random.default_rng(1)
    n = 500
    x = rng.integers(0, 40, (64, n))
    for i in range(0, 64, 2):
        period = int(rng.integers(1, 40))
        onset = int(rng.integers(0, n - 3 * period))
        x[i, onset:] = np.resize(rng.integers(0, 40, period), n - onset)
    thue_morse = np.array([bin(i).count("1") % 2 for i in range(n)])
    x[1], x[3] = thue_morse, 1 - thue_morse
    r = periodicity_batch(x, 3, chunk=16)
    for i, row in enumerate(x):
        assert as_tuple(r, i) == as_tuple(periodicity(row, 3))


def test_the_one_zero_zero_trap():
    assert as_tuple(periodicity([1, 0, 0] * 3, 3)) == (3, 0, 3, 3)
    assert as_tuple(periodicity([1, 0, 0] * 3, 2)) == (3, 0, 3, 1)  # 0,0 is a period-1 square
    assert as_tuple(periodicity([1, 0, 0, 0] * 3, 3)) == (4, 0, 3, 1)
    assert as_tuple(periodicity([7, 8] + [1, 0, 0] * 3 + [1], 3)) == (3, 2, 3, 3)
    assert min_cycle_length([1, 0, 0, 0] * 3) == 1
    assert as_tuple(periodicity([1, 2, 3, 4], 2)) == (0, 4, 0, 0)


def smallest_period(s: list[int], b: int, e: int, k: int) -> int:
    """The smallest period p of s[b:e] with e - b >= k·p, by direct comparison; 0 if none."""
    return next((p for p in range(1, (e - b) // k + 1) if s[b:e - p] == s[b + p:e]), 0)


def brute_segments(s: list[int], k: int) -> list[tuple[int, int, int, int]]:
    """loop_segments by its definition: every interval's smallest period by direct checks
    (O(n^3) slice comparisons), the maximal ones with >= k copies, then the longest uncovered
    piece of any of them (ties: earliest, then smaller period) until none holds k copies;
    each chosen piece's smallest period found again by direct checks."""
    n = len(s)
    runs = []
    for b in range(n):
        for e in range(b + 1, n + 1):
            p = smallest_period(s, b, e, k)
            if p and (b == 0 or s[b - 1] != s[b - 1 + p]) and (e == n or s[e] != s[e - p]):
                runs.append((b, e, p))
    covered, chosen = [False] * n, []
    while True:
        pieces = [(lo, hi, p) for b, e, p in runs for lo in range(b, e) for hi in range(lo, e + 1)
                  if not any(covered[lo:hi]) and (lo == b or covered[lo - 1])
                  and (hi == e or covered[hi]) and hi - lo >= k * p]
        if not pieces:
            return sorted(chosen)
        lo, hi, _ = min(pieces, key=lambda q: (q[0] - q[1], q[0], q[2]))
        covered[lo:hi] = [True] * (hi - lo)
        p = smallest_period(s, lo, hi, k)
        chosen.append((lo, hi, p, (hi - lo) // p))


@st.composite
def timelines(draw) -> list[int]:
    """Loops one after another, as in generated text: blocks repeated a few times, with
    short stretches of other tokens between them, on a small alphabet."""
    alphabet = draw(st.sampled_from([2, 3, 5]))
    token = st.integers(0, alphabet - 1)
    out: list[int] = []
    for _ in range(draw(st.integers(1, 4))):
        out += draw(st.lists(token, max_size=3))
        out += draw(st.lists(token, min_size=1, max_size=4)) * draw(st.integers(1, 5))
    return out[:40]


@settings(max_examples=400, deadline=None)
@given(st.one_of(traces().map(lambda s: s[:40]), timelines()), st.sampled_from([2, 3, 4]))
def test_loop_segments_match_brute_force(s, k):
    found = loop_segments(s, k)
    assert [tuple(g) for g in found] == brute_segments(s, k)
    for g in found:
        assert g.repeats == (g.end - g.start) // g.period >= k


def test_loop_segments_examples():
    """A loop wins over the shorter loops inside it; a uni-gram loop, some nonsense, then a
    3-gram loop give both, in order; an orbit of a map (tail, then cycle) gives its cycle."""
    assert loop_segments([0, 0, 0, 1] * 3) == [(0, 12, 4, 3)]
    assert loop_segments([5] * 10 + [7, 8] + [1, 2, 3] * 5) == [(0, 10, 1, 10), (12, 27, 3, 5)]
    assert loop_segments([9, 4, 6] + [1, 2, 3] * 4 + [1]) == [(3, 16, 3, 4)]
    assert loop_segments([1, 2, 3, 4]) == [] == loop_segments([1, 1], k=3)
    assert loop_segments([0] * 5, k=2) == [(0, 5, 1, 5)]
    x = np.random.default_rng(0).integers(0, 1000, 2000)
    x[600:] = np.resize([3, 1, 4, 1, 5, 9, 2], 1400)  # 7-periodic from 600 on
    assert [s for s in loop_segments(x) if s.end - s.start > 50] == [(600, 2000, 7, 200)]


def brute_holtzman(s: list[int], max_n: int = 90) -> tuple[bool, int, int]:
    best_n, best = 1, 0
    for n in range(1, min(max_n, len(s)) + 1):
        block, reps = s[len(s) - n :], 0
        while len(s) >= (reps + 1) * n and s[len(s) - (reps + 1) * n : len(s) - reps * n] == block:
            reps += 1
        if reps > best:
            best_n, best = n, reps
    return best > 1 and (best_n >= 3 or best > 50), best_n, best


@FAST
@given(traces())
def test_holtzman_matches_brute_force(s):
    flag = holtzman_loop(s)
    assert (flag.loop, flag.n, flag.repeats) == brute_holtzman(s)


def test_holtzman_examples():
    assert holtzman_loop([9, 1, 2, 3] * 3).loop
    assert not holtzman_loop([5] * 10).loop  # a short run of one token is not a loop
    assert holtzman_loop([5] * 60).loop  # ... unless it repeats more than 50 times
    assert not holtzman_loop(list(range(100))).loop


@FAST
@given(traces(), st.integers(1, 5))
def test_seq_rep_n(s, n):
    grams = [tuple(s[i : i + n]) for i in range(len(s) - n + 1)]
    expected = 1 - len(set(grams)) / len(grams) if grams else 0.0
    assert seq_rep_n(s, n) == pytest.approx(expected)


@FAST
@given(traces(), st.integers(1, 20), st.data())
def test_rep_l_and_rep_w(s, window, data):
    assert rep_l(s, window) == pytest.approx(
        np.mean([s[t] in s[max(0, t - window) : t] for t in range(len(s))])
    )
    assert rep_w(s, window) == rep_l(s, window)
    pred = data.draw(st.lists(st.integers(0, 50), min_size=len(s), max_size=len(s)))
    expected = np.mean([pred[t] in s[max(0, t - window) : t] for t in range(len(s))])
    assert rep_l(s, window, predictions=pred) == pytest.approx(expected)


@FAST
@given(traces())
def test_rep_r(s):
    bigrams = [tuple(s[i : i + 2]) for i in range(len(s) - 1)]
    repeated = [bigrams.count(b) > 1 for b in bigrams]
    inside = [
        (i < len(bigrams) and repeated[i]) or (i > 0 and repeated[i - 1]) for i in range(len(s))
    ]
    assert rep_r(s) == pytest.approx(np.mean(inside))


def test_repetition_examples():
    assert rep_w([1, 2, 3, 1]) == 0.25
    assert rep_w([1, 2, 3, 1], window=2) == 0.0
    assert rep_r([1, 2, 1, 2]) == 1.0
    assert rep_r([1, 2, 3, 4]) == 0.0
    assert seq_rep_n([1, 2] * 5, 2) == pytest.approx(1 - 2 / 9)


def entries_to_trace(entries: list[list[int]], delimiter: int = 0) -> list[int]:
    return [t for e in entries for t in [*e, delimiter]]


def test_collapse_detects_decay_onto_one_answer():
    names = [[10 + i, 100 + i] for i in range(12)]
    decayed = names + [[10, 100], [50, 51]] + [[42, 43]] * 14
    c = collapse(entries_to_trace(decayed), delimiter=0)
    assert c.is_collapse and c.modal_entry == (42, 43) and c.modal_share == 1.0
    assert c.n_entries == 28 and c.distinct[0] == 8 and c.distinct[-1] == 1
    assert np.all(np.diff(c.distinct[10:]) <= 0)


def test_collapse_rejects_lists_and_verbatim_loops():
    names = [[10 + i] for i in range(30)]
    assert not collapse(entries_to_trace(names), 0).is_collapse  # a healthy list
    cycle3 = names[:10] + names[:3] * 8
    assert not collapse(entries_to_trace(cycle3), 0).is_collapse  # verbatim 3-entry loop
    alternating = names[:10] + names[:2] * 8
    assert collapse(entries_to_trace(alternating), 0).modal_share == 0.5
    assert not collapse(entries_to_trace(alternating), 0).is_collapse
    stuck = [[42]] * 30
    assert not collapse(entries_to_trace(stuck), 0).is_collapse  # never was a list
    short = collapse(entries_to_trace(names[:5] + [[42]] * 5), 0)
    assert not short.is_collapse and short.distinct.size == 3


def test_collapse_delimiters_and_empty_entries():
    c = collapse([5, 0, 0, 6, 1, 5, 0], delimiter=[0, 1], window=2)
    assert c.n_entries == 3 and c.modal_entry == (6,) and c.modal_share == 0.5
    assert collapse([0, 0], delimiter=0).n_entries == 0


@pytest.mark.parametrize(
    "fn", [periodicity, min_cycle_length, holtzman_loop, seq_rep_n, rep_w, rep_r, rep_l,
           loop_segments]
)
def test_bad_traces(fn):
    with pytest.raises(ValueError, match="empty trace"):
        fn([])
    with pytest.raises(ValueError, match="1-D"):
        fn(np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer"):
        fn([1.0, 2.0])
    with pytest.raises(ValueError, match=r"negative token id -4 at index \(2,\)"):
        fn([1, 2, -4])


def test_bad_batches_and_parameters():
    with pytest.raises(ValueError, match="2-D"):
        periodicity_batch([1, 2, 3])
    with pytest.raises(ValueError, match="empty batch"):
        periodicity_batch(np.zeros((3, 0), int))
    with pytest.raises(ValueError, match=r"negative token id -1 at index \(1, 0\)"):
        periodicity_batch([[0, 1], [-1, 2]])
    with pytest.raises(ValueError, match="k must be"):
        periodicity([1, 1, 1], k=1)
    with pytest.raises(ValueError, match="k must be"):
        loop_segments([1, 1, 1], k=1)
    with pytest.raises(ValueError, match="predictions has length 2"):
        rep_l([1, 2, 3], predictions=[1, 2])
    with pytest.raises(ValueError, match="window"):
        collapse([1, 0, 2], 0, window=0)
