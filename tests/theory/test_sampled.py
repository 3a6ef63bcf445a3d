"""proofs/sampled.md (sampled decoding near the Markov chain: the per-step TV bound, the
maximal coupling, the escape bound, top-k / top-p stability) and proofs/lower_bound.md (a
one-layer model whose greedy trace leaves the Markov orbit exactly where the degeneration
threshold says)."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import softmax

from dynsys.stats import proportion_interval
from dynsys.theory import UniformBound
from dynsys.theory.lemmas import mass_bound
from dynsys.theory.sampled import (
    adversarial_perturbation,
    escape_bound,
    history_tv_bound,
    kept_tokens,
    maximal_coupling,
    step_tv_bound,
    total_variation,
    truncation_is_stable,
)


def tv_of(logits, delta, temperature):
    return total_variation(softmax((logits + delta) / temperature, axis=-1),
                           softmax(logits / temperature))


def worst_over_sets(logits, beta, temperature):
    """max over token sets A of g(q(A)), g(a) = a k/(a k + 1 − a) − a, k = e^{2β/T}."""
    q = softmax(np.asarray(logits) / temperature)
    k = math.exp(2 * beta / temperature)
    masses = [q[list(A)].sum() for r in range(q.size + 1)
              for A in itertools.combinations(range(q.size), r)]
    a = np.array(masses)
    return float(np.max(a * k / (a * k + 1 - a) - a))


@pytest.mark.parametrize("call", [
    lambda: step_tv_bound(0.1, 0.0), lambda: step_tv_bound(0.1, -1.0),
    lambda: step_tv_bound(0.1, math.inf), lambda: step_tv_bound(-0.1, 1.0),
    lambda: step_tv_bound(math.nan, 1.0), lambda: escape_bound([0.1, math.inf], 1.0),
    lambda: escape_bound([[0.1]], 1.0), lambda: adversarial_perturbation([0.0, 1.0], -1.0, 1.0),
])
def test_bounds_reject_bad_inputs(call):
    with pytest.raises(ValueError, match=r"temperature=|beta=|betas must"):
        call()


def test_step_bound_holds_and_is_attained():
    rng = np.random.default_rng(0)
    for _ in range(300):
        V = int(rng.integers(2, 9))
        ell = rng.normal(0, rng.uniform(0.1, 4), V)
        T, beta = rng.uniform(0.3, 3), rng.uniform(0, 2)
        bound = float(step_tv_bound(beta, T))
        b = beta / T
        assert bound <= min(b / 2, 1 - math.exp(-2 * b)) + 1e-15
        # Lemma 2: the exact worst case over the box is max_A g(q(A)), attained at a vertex.
        worst = worst_over_sets(ell, beta, T)
        vertices = max(tv_of(ell, beta * np.array(s), T)
                       for s in itertools.product((-1.0, 1.0), repeat=V))
        assert vertices == pytest.approx(worst, abs=1e-12)
        assert worst <= bound + 1e-12
        inside = tv_of(ell, rng.uniform(-beta, beta, (200, V)), T)
        assert inside.max() <= worst + 1e-12
        # Lemma 1 (the ratio bound) on the same draws.
        p, q = softmax((ell + rng.uniform(-beta, beta, V)) / T), softmax(ell / T)
        assert np.all(np.abs(np.log(p / q)) <= 2 * b + 1e-12)
        # the adversary of the module is Δ = β(1_A − 1_{A^c}) with TV = g(q(A))
        adv = adversarial_perturbation(ell, beta, T)
        assert np.abs(adv).max() <= beta and tv_of(ell, adv, T) <= worst + 1e-12
    for beta, T in ((0.05, 1.0), (0.7, 0.5), (3.0, 2.0), (10.0, 1.0)):
        # equality: ℓ = (0, β), Δ = (β, −β) gives q(A) = 1/(e^b + 1) and TV = tanh(b/2)
        ell = np.array([0.0, beta])
        assert tv_of(ell, adversarial_perturbation(ell, beta, T), T) == pytest.approx(
            math.tanh(beta / (2 * T)), rel=1e-12)
        # dense prefix sums (V = 4000): the adversary comes within 0.1% of the bound
        ell = rng.normal(0, 1, 4000)
        got = tv_of(ell, adversarial_perturbation(ell, beta, T), T)
        assert 0.999 * step_tv_bound(beta, T) <= got <= step_tv_bound(beta, T)


def test_maximal_coupling_has_the_marginals_and_differs_with_probability_tv():
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(7)), rng.dirichlet(np.ones(7))
    tv = float(total_variation(p, q))
    # exact: on the midpoint grid u = (i + ½)/N each token gets N·p_v draws up to rounding
    N = 100_000
    u = (np.arange(N) + 0.5) / N
    x, y = maximal_coupling(np.broadcast_to(p, (N, 7)), np.broadcast_to(q, (N, 7)), u)
    assert np.all(np.abs(np.bincount(x, minlength=7) - N * p) <= 2)
    assert np.all(np.abs(np.bincount(y, minlength=7) - N * q) <= 2)
    assert abs((x != y).sum() - N * tv) <= 1 and np.all((x != y) == (u >= 1 - tv))
    # random draws: chi-square on both marginals, and P(x ≠ y) = TV within its interval
    u = rng.uniform(size=N)
    x, y = maximal_coupling(np.broadcast_to(p, (N, 7)), np.broadcast_to(q, (N, 7)), u)
    assert stats.chisquare(np.bincount(x, minlength=7), N * p).pvalue > 1e-3
    assert stats.chisquare(np.bincount(y, minlength=7), N * q).pvalue > 1e-3
    lo, hi = proportion_interval(int((x != y).sum()), N)
    assert lo <= tv <= hi
    x, y = maximal_coupling(p, p, 0.999999)  # equal laws never separate
    assert x == y
    with pytest.raises(ValueError, match="u must lie"):
        maximal_coupling(p, q, 1.0)
    with pytest.raises(ValueError, match="p must be"):
        maximal_coupling(2 * p, q, 0.5)


def test_escape_probability_is_below_the_bound():
    """Coupled pairs (sampled path x, Markov chain y) on a random kernel of 5 states, T = 0.8,
    G = 8 steps; the real step perturbs the Markov logits by ±(the adversary of its row),
    the sign set by the parity of the tokens generated so far (history-dependent, ‖Δ‖∞ ≤ β_t).
    The exact escape probability (a recursion over (state, parity)) lies in the Monte-Carlo
    interval and below the product bound, which is below the union bound."""
    rng = np.random.default_rng(2)
    V, G, T, N = 5, 8, 0.8, 40_000
    L = rng.normal(0, 1.5, (V, V))
    betas = 0.05 * np.arange(1, G + 1)  # growing with the generated keys, as dilution does
    adv = np.array([[adversarial_perturbation(L[v], b, T) for v in range(V)] for b in betas])
    K = softmax(L / T, axis=-1)

    def real_row(t, v, parity):
        sign = 1 - 2 * np.asarray(parity)[..., None]
        return softmax((L[v] + sign * adv[t, v]) / T, axis=-1)

    # exact: mass of the pairs still together, by (current state, parity of the sum)
    together = np.zeros((V, 2))
    together[0, 0] = 1.0
    for t in range(G):
        nxt = np.zeros((V, 2))
        for v, par in itertools.product(range(V), range(2)):
            common = np.minimum(real_row(t, v, par), K[v]) * together[v, par]
            for w in range(V):
                nxt[w, (par + w) % 2] += common[w]
        together = nxt
    exact = 1 - together.sum()
    # Monte Carlo: the step-by-step maximal coupling; once apart, independent draws
    x, y = np.zeros(N, int), np.zeros(N, int)
    parity, apart = np.zeros(N, int), np.zeros(N, bool)
    for t in range(G):
        p, q = real_row(t, x, parity), K[y]
        cx, cy = maximal_coupling(p, q, rng.uniform(size=N))
        u2 = rng.uniform(size=N)
        ix, iy = maximal_coupling(p, p, u2)[0], maximal_coupling(q, q, rng.uniform(size=N))[0]
        x, y = np.where(apart, ix, cx), np.where(apart, iy, cy)
        apart |= x != y
        parity = (parity + x) % 2
    lo, hi = proportion_interval(int(apart.sum()), N)
    product = escape_bound(betas, T)[-1]
    union = step_tv_bound(betas, T).sum()
    assert lo <= exact <= hi
    assert exact <= product <= union and lo <= product
    assert exact >= 0.5 * product  # the adversary makes the bound bite (0.58 against 0.71)


def test_history_tv_bound_holds_for_every_history_tried():
    """Hypothesis (B) from the history-uniform certificate (std-0.01 llama, n = 120): for each
    query and every history tried, TV(softmax(ℓ/T), softmax(ℓ′/T)) ≤ tanh(osc/4T) at
    T = 0.05, 1; the bound is below 1 and within 100× of the largest TV seen; a vacuous
    margin bound gives 1."""
    from theory.test_history import LLAMA, case, histories, measured

    model, prefix, tokens, rs, bound = case(LLAMA, 0.01)
    rng = np.random.default_rng(5)
    for temperature in (0.05, 1.0):
        eps = history_tv_bound(bound.margin, bound.lower, bound.upper, temperature)
        assert (eps < 1).all()
        for row, (x, r) in enumerate(zip(tokens, rs)):
            logits, _ = measured(LLAMA, model, prefix, x, r, histories(LLAMA, r, rng))
            ref = -bound.margin[row]  # ℓ′ − ℓ′_top: the reference logits up to a shift
            tv = total_variation(softmax(logits / temperature, axis=-1),
                                 softmax(ref / temperature))
            assert (tv <= eps[row] + 1e-6).all() and tv.max() * 100 > eps[row]
    lower = bound.lower.copy()
    lower[0, 1 if bound.top[0] != 1 else 2] = -np.inf
    assert history_tv_bound(bound.margin, lower, bound.upper, 1.0)[0] == 1.0


def test_truncation_needs_a_margin_and_is_stable_with_one():
    # without a margin no bound below 1: top-1 with a near tie swaps the kept token
    ell, beta = np.array([0.01, 0.0]), 0.01
    delta = np.array([-beta, beta])
    assert not np.array_equal(kept_tokens(ell, 1.0, top_k=1), kept_tokens(ell + delta, 1.0, 1))
    assert not truncation_is_stable(ell, beta, 1.0, top_k=1)
    rng = np.random.default_rng(3)
    stable = 0
    for _ in range(200):
        V = int(rng.integers(3, 8))
        ell = rng.normal(0, 2, V)
        T, beta = rng.uniform(0.5, 2), rng.uniform(0, 0.2)
        top_k, top_p = int(rng.integers(0, V + 1)), float(rng.choice([1.0, rng.uniform(0.3, 1)]))
        if not truncation_is_stable(ell, beta, T, top_k, top_p):
            continue
        stable += 1
        keep = kept_tokens(ell, T, top_k, top_p)
        q = softmax(np.where(keep, ell, -np.inf) / T)
        deltas = [beta * np.array(s) for s in itertools.product((-1.0, 1.0), repeat=V)]
        for d in deltas + list(rng.uniform(-beta, beta, (50, V))):
            assert np.array_equal(kept_tokens(ell + d, T, top_k, top_p), keep)
            p = softmax(np.where(keep, ell + d, -np.inf) / T)
            assert total_variation(p, q) <= step_tv_bound(beta, T) + 1e-12
    assert stable >= 50


def test_kept_tokens_is_the_samplers_filter():
    import jax

    from dynsys.decode.sampling import Sampler, select
    rng = np.random.default_rng(4)
    ell = rng.normal(0, 1, 8)
    s = Sampler(temperature=0.9, top_k=5, top_p=0.6)
    keep = kept_tokens(ell, 0.9, 5, 0.6)
    assert 1 < keep.sum() < 5  # both filters cut
    draws = select(np.broadcast_to(ell.astype(np.float32), (4000, 8)), jax.random.PRNGKey(0),
                   s.kind, s.values)
    seen = np.zeros(8, bool)
    seen[np.asarray(draws)] = True
    assert np.array_equal(seen, keep)


# --- proofs/lower_bound.md -------------------------------------------------------------------


def one_layer(m: int, S: float, c: float, mu: float):
    """The construction of proofs/lower_bound.md: tokens 0 (the prompt's filler), 1..m (the
    Markov cycle 1 → 2 → … → m → 1) and m + 1 (the trap). One-hot embeddings, one head with
    key k(w) = (1[w ≠ 0], e_w), query q(u) = (S, −S e_u 1[u ≠ 0]), scalar value 1[w ≠ 0],
    logits M[u] + o·(c/2)(2 e_trap − 1) with M[u] = μ e_{next(u)}. Returns (K, Q, value,
    M, readout) as arrays."""
    V = m + 2
    eye = np.eye(V)
    K = np.concatenate([(np.arange(V) != 0)[:, None] * 1.0, eye], axis=1)
    Q = np.concatenate([np.full((V, 1), S), -S * eye * (np.arange(V) != 0)[:, None]], axis=1)
    value = (np.arange(V) != 0) * 1.0
    nxt = np.r_[1, np.arange(2, m + 1), 1, 1]
    M = mu * eye[nxt]
    readout = c / 2 * (2 * eye[m + 1] - 1)
    return K, Q, value, M, readout


def step_logits(model, seq):
    """The next-token logits after seq (the last token attends to all, itself included)."""
    K, Q, value, M, readout = model
    z = K[seq] @ Q[seq[-1]]
    a = softmax(z)
    return M[seq[-1]] + (a @ value[seq]) * readout


def greedy(model, prompt, steps):
    seq = list(prompt)
    for _ in range(steps + 1):
        seq.append(int(np.argmax(step_logits(model, np.array(seq)))))
    return seq[len(prompt):]


def departure_step(n, S, c, mu):
    """The first step t (t = 1 runs the first generated token, r = t − 1 generated keys) whose
    greedy output is the trap: the least r ≥ 0 with c(r e^S + 1) > μ(r e^S + n + 1)."""
    if c <= mu:
        return math.inf
    return 1 + max(0, math.floor((mu * (n + 1) - c) / ((c - mu) * math.exp(S))) + 1)


@pytest.mark.parametrize("n,S,c,mu", [(1000, 1.0, 1.0, 0.05), (4000, 2.0, 3.0, 0.1),
                                      (8000, 0.5, 5.0, 0.01), (300, 3.0, 2.0, 0.1),
                                      (20_000, 4.0, 1.0, 0.05)])
def test_lower_bound_trace_leaves_the_orbit_where_predicted(n, S, c, mu):
    m = 40
    model = one_layer(m, S, c, mu)
    prompt = [0] * n
    t_star = departure_step(n, S, c, mu)
    assert t_star < m - 1  # the generated tokens stay distinct up to the departure
    trace = greedy(model, prompt, t_star)
    # x_{n+1..n+t*} is the Markov orbit 1, 2, …; step t* outputs the trap
    assert trace[:t_star] == list(range(1, t_star + 1)) and trace[t_star] == m + 1
    # on the visited tokens the Markov map f_P is the cycle (reference: prompt + current token)
    f = [int(np.argmax(step_logits(model, np.array([*prompt, v])))) for v in range(1, t_star + 1)]
    assert f == list(range(2, t_star + 2))
    # exact dilution: the logit change is (c/2) n/(n+1) a(R), a(R) = mass_bound(r, n+r+1, 0, S)
    r = t_star - 1
    seq = np.array(prompt + list(range(1, t_star + 1)))
    change = step_logits(model, seq) - step_logits(model, np.array([*prompt, t_star]))
    a = mass_bound(r, n + r + 1, 0.0, S)
    assert np.abs(change).max() == pytest.approx(c / 2 * n / (n + 1) * a, rel=1e-9)


def test_lower_bound_threshold_is_linear_in_g_and_e_s():
    """The least prompt length whose trace follows the orbit for G steps is
    n_G = ⌈((G − 1) e^S (c − μ) + c)/μ⌉ − 1; the trace with n_G − 1 leaves it at step G; the
    degeneration theorem's sufficient condition c α(n, G − 1) < μ − c/(n+1) (Γ = c/2, the
    Markov margin) asks for at most one token more."""
    c, mu, m = 2.0, 0.25, 40
    for G, S in ((5, 1.0), (10, 1.0), (20, 1.0), (10, 2.0), (10, 3.0)):
        model = one_layer(m, S, c, mu)
        n_G = math.ceil(((G - 1) * math.exp(S) * (c - mu) + c) / mu) - 1
        assert departure_step(n_G, S, c, mu) == G + 1
        assert departure_step(n_G - 1, S, c, mu) == G
        follows = greedy(model, [0] * n_G, G)
        assert follows == list(range(1, G + 2))
        leaves = greedy(model, [0] * (n_G - 1), G)
        assert leaves[:G] == list(range(1, G + 1)) and leaves[G] == m + 1
        n_thm = next(n for n in itertools.count(n_G - 1)
                     if c * mass_bound(G - 1, n + G, 0.0, S) < mu - c / (n + 1))
        assert n_G <= n_thm <= n_G + 1


def test_lower_bound_for_a_fixed_markov_margin():
    """The corollary's family: gain Γ = c/2 and, for each n, μ = μ̃ + c/(n+1), so the Markov
    margin is exactly μ̃. The trace leaves the orbit within G steps iff
    n + 1 < (G − 1) e^S (1 − c_n)/c_n, c_n = μ̃(n + 1)/(2Γ n): the least n that follows is
    N = 281 here, and the theorem's n_0 = 282."""
    gain, margin, S, G, m = 1.0, 0.2, 1.5, 8, 40
    c = 2 * gain

    def leaves(n):
        c_n = margin * (n + 1) / (2 * gain * n)
        return n + 1 < (G - 1) * math.exp(S) * (1 - c_n) / c_n

    N = next(n for n in itertools.count(1) if not leaves(n))
    for n, expect_leave in ((N - 1, True), (N, False)):
        mu = margin + c / (n + 1)
        model = one_layer(m, S, c, mu)
        f = [int(np.argmax(step_logits(model, np.array([0] * n + [v])))) for v in (1, 2)]
        margins = [np.diff(np.sort(step_logits(model, np.array([0] * n + [v])))[-2:])[0]
                   for v in (1, 2)]
        assert f == [2, 3] and margins == pytest.approx([margin] * 2, rel=1e-9)
        trace = greedy(model, [0] * n, G)
        assert (trace != list(range(1, G + 2))) == expect_leave
    # the degeneration theorem's n_0 for (S, Γ, μ̃, G): sound (≥ N) and at most 2 more (here 1)
    n0 = UniformBound(score_range=S, gain=gain, rms_floor=0.0).n0(G, margin)
    assert N <= n0 <= N + 2
