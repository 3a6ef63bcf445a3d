"""The in-context Markov source and its Bayes predictor, against brute force: the exact
Dirichlet-multinomial evidence, Monte Carlo over the sampler, explicit loops over v."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.special import gammaln

from dynsys.testbeds import (
    MarkovSource,
    bayes_losses,
    bayes_map,
    bayes_predictive,
    bayes_trace,
    sample,
)


def evidence(source: MarkovSource, x) -> float:
    """ln p(x) under the source, by its definition: the first k tokens uniform, and for each
    context c the Dirichlet-multinomial Γ(Vα)/Γ(Vα + N_c) · Π_j Γ(N_c(j) + α)/Γ(α), the
    counts N_c(j) taken by an explicit loop."""
    V, k, a = source.vocab, source.order, source.alpha
    found: dict[tuple, np.ndarray] = {}
    for t in range(k, len(x)):
        found.setdefault(tuple(x[t - k:t]), np.zeros(V))[x[t]] += 1
    log_p = -min(k, len(x)) * math.log(V)
    for row in found.values():
        log_p += gammaln(V * a) - gammaln(V * a + row.sum()) + (gammaln(row + a)
                                                                 - gammaln(a)).sum()
    return log_p


@pytest.mark.parametrize("order", [0, 1, 2])
def test_predictive_is_the_ratio_of_evidences(order):
    source = MarkovSource(vocab=3, order=order, alpha=0.7)
    rng = np.random.default_rng(order)
    for length in range(7):
        x = list(rng.integers(0, 3, length))
        expected = np.exp([evidence(source, [*x, j]) - evidence(source, x) for j in range(3)])
        np.testing.assert_allclose(bayes_predictive(source, x), expected, rtol=1e-12)


@pytest.mark.parametrize("order", [0, 1, 2])
def test_losses_are_the_predictive_at_every_position(order):
    source = MarkovSource(vocab=5, order=order, alpha=0.3)
    x = sample(source, "train", 3, 40, seed=1)
    losses = bayes_losses(source, x)
    assert losses.shape == (3, 39)
    for n, t in itertools.product(range(3), range(1, 40)):
        assert losses[n, t - 1] == pytest.approx(-math.log(bayes_predictive(source, x[n, :t])
                                                           [x[n, t]]), rel=1e-12)
    # the sum of the losses is −ln p(x_1..x_{L−1} | x_0) = −(ln p(x) + ln V)
    assert losses[0].sum() == pytest.approx(-evidence(source, list(x[0])) - math.log(5))


@pytest.mark.parametrize("order, alpha, count, length, seed", [(1, 0.5, 200_000, 4, 3),
                                                             (2, 1.0, 100_000, 5, 4)])
def test_sampler_matches_the_predictive_by_monte_carlo(order, alpha, count, length, seed):
    """V = 2: the first token is uniform and the frequency of the last token = 1 after each
    prefix is the predictive, within 4.5 standard errors."""
    source = MarkovSource(vocab=2, order=order, alpha=alpha)
    x = sample(source, "train", count, length, seed=seed)
    assert abs(x[:, 0].mean() - 0.5) < 4.5 * math.sqrt(0.25 / len(x))
    for prefix in itertools.product(range(2), repeat=length - 1):
        rows = (x[:, :-1] == prefix).all(1)
        p = bayes_predictive(source, prefix)[1]
        assert abs(x[rows, -1].mean() - p) < 4.5 * math.sqrt(p * (1 - p) / rows.sum()), prefix


def test_samples_are_reproducible_prefixes_and_splits_differ():
    source = MarkovSource(vocab=32, order=1, alpha=0.1)
    a = sample(source, "train", 70, 50, seed=0)
    assert a.dtype == np.int32 and a.shape == (70, 50) and a.min() >= 0 and a.max() < 32
    np.testing.assert_array_equal(a, sample(source, "train", 70, 50, seed=0))
    np.testing.assert_array_equal(a[:5], sample(source, "train", 5, 50, seed=0))
    assert not np.array_equal(a, sample(source, "heldout", 70, 50, seed=0))
    assert not np.array_equal(a, sample(source, "train", 70, 50, seed=1))
    np.testing.assert_array_equal(source.windows("train", 70, 49, seed=0), a)


def brute_map(source: MarkovSource, prompt) -> np.ndarray:
    """f_P(v) = argmax_j p(j | P + [v]) by evaluating the predictor on each P + [v]."""
    return np.array([int(np.argmax(bayes_predictive(source, [*prompt, v])))
                     for v in range(source.vocab)])


@pytest.mark.parametrize("order", [0, 1, 2])
def test_closed_form_map_equals_the_loop_over_v(order):
    source = MarkovSource(vocab=6, order=order, alpha=0.2)
    prompts = [*sample(source, "heldout", 20, 30, seed=order),
               [3, 3, 3], [2, 5, 2, 5], [1, 1], [4, 0, 4, 0, 0], [5] * order]
    for prompt in prompts:
        np.testing.assert_array_equal(bayes_map(source, prompt), brute_map(source, prompt),
                                      err_msg=str(prompt))


def test_map_counts_the_transition_into_v_and_breaks_ties_low():
    source = MarkovSource(vocab=4, order=1, alpha=1.0)
    # P = 2 3 2 holds 2→3 and 3→2; P + [v] adds 2→v. v = 2: row 2 ties 2→2 with 2→3 and
    # the lower id wins; v = 1: row 1 is empty (uniform: id 0); v = 3: row 3 holds 3→2
    np.testing.assert_array_equal(bayes_map(source, [2, 3, 2]), [0, 0, 2, 2])
    # P = 2 3 1 holds 2→3, 3→1; P + [v] adds 1→v: v = 1 sees 1→1, v = 2 sees 2→3
    np.testing.assert_array_equal(bayes_map(source, [2, 3, 1]), [0, 1, 3, 1])


@pytest.mark.parametrize("order", [0, 1, 2])
def test_trace_is_greedy_decoding_of_the_predictor(order):
    source = MarkovSource(vocab=5, order=order, alpha=0.5)
    prompt = list(sample(source, "train", 1, 12, seed=7)[0])
    x = list(prompt)
    for _ in range(15):
        x.append(int(np.argmax(bayes_predictive(source, x))))
    np.testing.assert_array_equal(bayes_trace(source, prompt, 15), x[12:])
    assert bayes_trace(source, prompt, 0).shape == (0,)


@pytest.mark.parametrize("field, value, message", [
    ("vocab", 1, "vocab=1: the alphabet needs at least 2 symbols"),
    ("alpha", 0.0, "alpha=0.0: the Dirichlet concentration"), ("alpha", -1.0, "alpha=-1.0"),
    ("order", -1, "order=-1")])
def test_bad_source_settings_name_the_value(field, value, message):
    with pytest.raises(ValueError, match=message):
        MarkovSource(**{"vocab": 8, "order": 1, "alpha": 1.0, field: value})


def test_references_order_the_predictors():
    source = MarkovSource(vocab=32, order=1, alpha=0.1)
    found = source.references(source.windows("heldout", 16, 256, seed=0))
    assert found["uniform"] == pytest.approx(math.log(32))
    assert found["bayes"] < found["unigram"] < found["uniform"]
