"""Self-reinforcement of repetition: TP_k against transformers' probabilities."""

import numpy as np
import pytest
from conftest import CONFIGS, hf_logits, random_model, to_transformers

from dynsys.theory.reinforcement import repetition_probability


def test_repetition_probability_matches_transformers(tmp_path):
    model = random_model(CONFIGS["qwen2-g2-tied"], seed=2)
    spans = np.random.default_rng(1).integers(0, model.config.vocab_size, (3, 5))
    got = repetition_probability(model, spans, 4)
    lg = hf_logits(to_transformers(model, tmp_path), np.tile(spans, (1, 4))).astype(np.float64)
    p = np.exp(lg - lg.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    tokens = np.tile(spans, (1, 4))
    chosen = np.take_along_axis(p[:, :-1], tokens[:, 1:, None], -1)[..., 0]  # [S, 19]
    expected = [chosen[:, :4].mean(1)] + [chosen[:, 5 * k - 1:5 * k + 4].mean(1)
                                          for k in range(1, 4)]
    np.testing.assert_allclose(got, np.stack(expected, 1), rtol=1e-4)
    assert got.shape == (3, 4) and np.isfinite(got).all()


@pytest.mark.parametrize("spans, repeats, message", [
    (np.zeros((2, 1), int), 3, "at least 2"),
    (np.zeros((2, 4), int), 1, "repeats=1"),
    (np.zeros((2, 4), int), True, "repeats=True"),
    (np.zeros((2, 1500), int), 2, "3000 positions"),
    (np.full((2, 4), -1), 2, "-1"),
])
def test_bad_input_is_named(spans, repeats, message):
    with pytest.raises(ValueError, match=message):
        repetition_probability(random_model(CONFIGS["llama-g1"]), spans, repeats)
