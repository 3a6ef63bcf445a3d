"""In-context Markov chains: a training source whose Bayes-optimal predictor is known exactly
(Edelman et al. 2024, "The evolution of statistical induction heads").

The source. Alphabet {0, …, V−1}, order k ≥ 0, concentration α > 0. Every sequence
x_0..x_{L−1} has its own chain: for every context c ∈ V^k a row θ_c ~ Dirichlet(α·1_V),
independently; x_0..x_{k−1} are i.i.d. uniform and x_t ~ θ_{c_t} for t ≥ k, where
c_t = (x_{t−k}, …, x_{t−1}). Order 0 has one row: i.i.d. tokens from a random unigram law.

The Bayes-optimal predictor of x_t from x_<t is the posterior mean of θ_{c_t}(·): with the
in-context transition counts N_c(j) = #{k ≤ s < t : c_s = c, x_s = j} and N_c = Σ_j N_c(j),

    p(x_t = j | x_<t) = (N_{c_t}(j) + α) / (N_{c_t} + V·α)     for t ≥ k,
    p(x_t = j | x_<t) = 1/V                                     for t < k,

and its expected log-loss is the least any model can reach on the source. The same formula
with k = 0 and α = 1 is the in-context unigram predictor (Laplace's rule), the stage before
the bigram one.

Its Markov map f_P(v) = argmax_j p(next = j | P + [v]) (ties to the lowest id) is the
argmax of one row of counts: the counts of P + [v] are those of P plus the one transition
(P_{n−k}, …, P_{n−1}) → v, so, with c_v = (P_{n−k+1}, …, P_{n−1}, v),

    f_P(v) = argmax_j ( N^P_{c_v}(j) + [c_v = (P_{n−k}, …, P_{n−1})]·[j = v] )

(α shifts every entry of the row alike and does not move the argmax).

Contexts are coded as integers c = Σ_i c_i·V^{k−1−i}, the oldest token most significant.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from dynsys.config import check_float, check_int

BLOCK = 64  # sequences drawn from one generator: sequence i comes from block i // BLOCK
SPLITS = ("train", "heldout")  # each split draws from its own generators


@dataclasses.dataclass(frozen=True)
class MarkovSource:
    """Sequences of random order-`order` chains over `vocab` symbols, rows ~ Dirichlet(alpha)
    (see the module). A bad field raises ValueError naming it and its value."""

    vocab: int
    order: int = 1
    alpha: float = 1.0

    def __post_init__(self):
        check_int("vocab", self.vocab)
        if self.vocab < 2:
            raise ValueError(f"vocab={self.vocab}: the alphabet needs at least 2 symbols")
        check_int("order", self.order, 0)
        try:
            object.__setattr__(self, "alpha", check_float("alpha", self.alpha, above=0))
        except ValueError:
            raise ValueError(f"alpha={self.alpha!r}: the Dirichlet concentration must be a "
                             "finite number > 0") from None
        if self.vocab ** (self.order + 1) > 2**26:
            raise ValueError(f"vocab={self.vocab}, order={self.order}: V^(k+1) = "
                             f"{self.vocab ** (self.order + 1)} transition counts per chain "
                             "exceed 2^26")

    @property
    def vocab_size(self) -> int:
        return self.vocab

    @property
    def contexts(self) -> int:
        """V^k, the number of rows of a chain."""
        return self.vocab ** self.order

    def describe(self) -> str:
        return f"order-{self.order} Markov chains, V = {self.vocab}, α = {self.alpha:g}"

    def windows(self, split: str, count: int, seq_len: int, seed: int) -> np.ndarray:
        """[count, seq_len + 1] int32: `count` sequences, each one window of its own chain."""
        return sample(self, split, count, seq_len + 1, seed)

    def references(self, windows: np.ndarray) -> dict[str, float]:
        """Held-out losses (nats per predicted token, over windows[:, 1:]) of the reference
        predictors: the Bayes-optimal one, the in-context unigram (Laplace's rule: the order-0
        predictor with α = 1) and the uniform law (ln V, also the limit of any context-free
        unigram model: the source's token law is symmetric)."""
        return {"bayes": float(bayes_losses(self, windows).mean()),
                "unigram": float(bayes_losses(MarkovSource(self.vocab, 0, 1.0), windows).mean()),
                "uniform": math.log(self.vocab)}

    def tokenizer(self) -> None:
        """None: the ids are the alphabet."""
        return None

    def tables(self) -> dict:
        """{}: the source is its fields."""
        return {}


def sample(source: MarkovSource, split: str, count: int, length: int, seed: int) -> np.ndarray:
    """[count, length] int32 sequences of `source`, each from a fresh chain. Sequences
    b·BLOCK .. (b+1)·BLOCK − 1 are drawn by the generator (seed, split, b), so a draw of n
    sequences is the first n of any larger draw of the same split, seed and length."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    check_int("count", count, 1)
    check_int("length", length, 1)
    blocks = [_block(source, np.random.default_rng([seed, SPLITS.index(split), b]), length)
              for b in range(-(-count // BLOCK))]
    return np.concatenate(blocks)[:count]


def _block(source: MarkovSource, rng: np.random.Generator, length: int) -> np.ndarray:
    """BLOCK sequences: their chains' rows, then the tokens, one position at a time by
    inverting each row's cumulative law with a uniform draw."""
    V, k = source.vocab, source.order
    cdf = np.cumsum(rng.dirichlet(np.full(V, source.alpha), size=(BLOCK, source.contexts)),
                    axis=-1)
    uniform = rng.random((BLOCK, length))
    x = np.zeros((BLOCK, length), np.int32)
    x[:, :k] = np.minimum(uniform[:, :k] * V, V - 1)
    context = context_codes(x[:, :k], V) if k else np.zeros(BLOCK, np.int64)
    rows = np.arange(BLOCK)
    for t in range(k, length):
        x[:, t] = np.minimum((cdf[rows, context] < uniform[:, t, None]).sum(-1), V - 1)
        if k:
            context = context % (V ** (k - 1)) * V + x[:, t]
    return x


def context_codes(tokens: np.ndarray, vocab: int) -> np.ndarray:
    """Σ_i tokens[..., i]·V^{m−1−i} over the last axis (m entries; 0 when m = 0), int64."""
    weights = vocab ** np.arange(tokens.shape[-1] - 1, -1, -1, dtype=np.int64)
    return (np.asarray(tokens, np.int64) * weights).sum(-1)


def _earlier_equal(keys: np.ndarray) -> np.ndarray:
    """count[n, t] = #{s < t : keys[n, s] = keys[n, t]} for int64 keys [N, T] ≥ 0."""
    n, t = keys.shape
    flat = (np.arange(n, dtype=np.int64)[:, None] * (int(keys.max(initial=0)) + 1)
            + keys).ravel()
    order = np.argsort(flat, kind="stable")  # equal keys stay in position order
    ordered = flat[order]
    index = np.arange(flat.size)
    first = np.maximum.accumulate(np.where(np.r_[True, ordered[1:] != ordered[:-1]], index, 0))
    count = np.empty_like(index)
    count[order] = index - first
    return count.reshape(n, t)


def bayes_losses(source: MarkovSource, sequences: np.ndarray) -> np.ndarray:
    """[N, L − 1]: −ln p(x_t | x_<t) of the Bayes predictor at t = 1..L−1 of each sequence
    [N, L] (the predictions a model makes on a window of L tokens)."""
    x = np.asarray(sequences, np.int64)
    if x.ndim != 2 or x.size == 0 or x.min() < 0 or x.max() >= source.vocab:
        raise ValueError(f"sequences of shape {x.shape} must be [N, L] ids in [0, "
                         f"{source.vocab})")
    V, k, length = source.vocab, source.order, x.shape[1]
    losses = np.full((x.shape[0], length - 1), math.log(V))
    if length <= k:
        return losses
    # the context of every position t >= k, as a sliding window of the k tokens before it
    windows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1)[:, :length - k]
    context = context_codes(windows, V)
    pair = _earlier_equal(context * V + x[:, k:])
    seen = _earlier_equal(context)
    predicted = (pair + source.alpha) / (seen + V * source.alpha)
    losses[:, max(k, 1) - 1:] = -np.log(predicted[:, max(k, 1) - k:])
    return losses


def counts(source: MarkovSource, tokens) -> np.ndarray:
    """[V^k, V] in-context transition counts N_c(j) of one sequence."""
    x = np.asarray(tokens, np.int64)
    table = np.zeros((source.contexts, source.vocab), np.int64)
    if len(x) > source.order:
        k = source.order
        context = context_codes(np.lib.stride_tricks.sliding_window_view(x, k)[:len(x) - k],
                                source.vocab)
        np.add.at(table, (context, x[k:]), 1)
    return table


def bayes_predictive(source: MarkovSource, context) -> np.ndarray:
    """[V] p(next = · | context): the posterior mean of the row of the last k tokens."""
    x = np.asarray(context, np.int64)
    if len(x) < source.order:
        return np.full(source.vocab, 1 / source.vocab)
    row = counts(source, x)[context_codes(x[len(x) - source.order:], source.vocab)]
    return (row + source.alpha) / (row.sum() + source.vocab * source.alpha)


def bayes_map(source: MarkovSource, prompt) -> np.ndarray:
    """[V] f_P(v) = argmax_j p(next = j | P + [v]), in closed form (module docstring).
    The prompt needs at least k tokens."""
    p = np.asarray(prompt, np.int64)
    V, k = source.vocab, source.order
    if p.ndim != 1 or len(p) < k or (len(p) and (p.min() < 0 or p.max() >= V)):
        raise ValueError(f"prompt of shape {p.shape} must be at least order={k} ids in [0, {V})")
    v = np.arange(V)
    older = context_codes(p[len(p) - k + 1:], V) if k > 1 else 0
    context_v = older * V + v if k else np.zeros(V, np.int64)
    rows = counts(source, p)[context_v]
    rows[v, v] += context_v == context_codes(p[len(p) - k:], V)
    return rows.argmax(-1)


def bayes_trace(source: MarkovSource, prompt, new_tokens: int) -> np.ndarray:
    """[new_tokens] the Bayes predictor's greedy continuation of `prompt`: each token the
    argmax (lowest id on ties) of p(· | prompt + the tokens before it)."""
    x = list(np.asarray(prompt, np.int64))
    V, k = source.vocab, source.order
    table = counts(source, x)
    for _ in range(check_int("new_tokens", new_tokens, 0)):
        if len(x) < k:
            x.append(0)  # the uniform law: the lowest id
            continue
        x.append(int(table[context_codes(np.array(x[len(x) - k:]), V)].argmax()))
        if len(x) > k:
            table[context_codes(np.array(x[len(x) - 1 - k:-1]), V), x[-1]] += 1
    return np.array(x[len(x) - new_tokens:], np.int64)
