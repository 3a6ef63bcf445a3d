"""The "most histories" bound (dynsys.theory.history.most): its count against the exhaustive
margins of every history of length 1 (an independent run path), its interval against the
exhaustive share, agreement with the certificate where that certifies, and its refusals."""

import numpy as np
import pytest
from theory.test_history import LLAMA, N, case, measured

from dynsys.theory.history import most_histories


@pytest.mark.parametrize("std", [0.05, 0.01])
def test_counts_match_every_history_and_the_certificate(std):
    """r = 1: the sampled histories' agreement is what the exhaustive margins (all 61 histories,
    recorded run) say for those histories; the exhaustive share lies in the interval; where the
    certificate proves (x, 1), every sample agrees."""
    model, prefix, tokens, rs, bound = case(LLAMA, std)
    prompt = np.random.default_rng(0).integers(0, LLAMA.vocab_size, N)
    every = np.arange(LLAMA.vocab_size)[:, None]
    for row in np.flatnonzero(rs == 1):
        x = int(tokens[row])
        m = most_histories(model, prompt, x, 1, samples=200, seed=row, prefix=prefix, batch=64)
        logits, _ = measured(LLAMA, model, prefix, x, 1, every)
        assert m.top == bound.top[row]
        ok = logits.argmax(1) == m.top
        drawn = np.random.default_rng(row).integers(0, LLAMA.vocab_size, (200, 1))[:, 0]
        assert m.agree == ok[drawn].sum()
        assert m.lower <= ok.mean() <= m.upper
        if bound.certified[row]:
            assert m.agree == m.samples and m.worst > 0


@pytest.mark.parametrize("change, message", [
    (dict(level=1.0), "level=1.0 must lie in (0, 1)"),
    (dict(r=0), "r=0 must be an integer >= 1"),
    (dict(x=61), "x[0] = 61 is outside the vocabulary [0, 61)")])
def test_bad_input_is_refused(change, message):
    model, prefix = case(LLAMA, 0.05)[:2]
    prompt = np.random.default_rng(0).integers(0, LLAMA.vocab_size, N)
    args = dict(x=3, r=1, samples=4) | change
    with pytest.raises(ValueError) as error:
        most_histories(model, prompt, prefix=prefix, **args)
    assert message in str(error.value) and "\n" not in str(error.value)
