"""Attention concentration against transformers' own attention weights (eager attention), and
the uniform limit."""

import numpy as np
import pytest
import torch
from conftest import CONFIGS, random_model, to_transformers

from dynsys.nn import Model
from dynsys.theory.concentration import attention_concentration


@pytest.mark.parametrize("name", ["llama-g4-tied-llama3", "qwen2-g2-tied", "neox-rot25"])
def test_weights_and_statistics_match_transformers(name, tmp_path):
    model = random_model(CONFIGS[name], seed=3)
    prompts = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 24))
    got = attention_concentration(model, prompts)
    with torch.no_grad():
        out = to_transformers(model, tmp_path)(torch.as_tensor(prompts), output_attentions=True)
    a = np.stack([layer[:, :, -1].double().numpy() for layer in out.attentions], 1)  # [B,L,N,n]
    np.testing.assert_allclose(got.weights, a, atol=1e-5)  # two float32 runs
    n = prompts.shape[1]
    np.testing.assert_allclose(got.excess, n * a.max(-1), rtol=1e-4)
    entropy = -(a * np.log(np.clip(a, 1e-300, None))).sum(-1) / np.log(n)
    np.testing.assert_allclose(got.entropy, entropy, atol=1e-5)
    assert got.excess.max() > 2 and got.entropy.min() < 0.9  # initializer_range 0.2: peaked


def test_zero_queries_give_uniform_attention():
    """With the query projections zeroed every score is 0: excess 1, s.d. 0, entropy 1."""
    base = random_model(CONFIGS["llama-g1"])
    params = {k: ({**v, "attn": {**v["attn"], "q": {"kernel": 0 * v["attn"]["q"]["kernel"]}}}
                  if k.startswith("blocks_") else v) for k, v in base.params.items()}
    got = attention_concentration(Model(base.config, params), np.arange(40)[None] % 200)
    np.testing.assert_allclose(got.excess, 1, atol=1e-6)
    np.testing.assert_allclose(got.score_sd, 0, atol=1e-6)
    np.testing.assert_allclose(got.entropy, 1, atol=1e-6)
    assert got.summary()["max_excess"] == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("prompts, message", [
    (np.zeros((1, 1), int), "at least 2 keys"),
    (np.zeros(5, int), "prompts"),
    (np.full((1, 4), 10_000), "10000"),
])
def test_bad_prompts_are_named(prompts, message):
    with pytest.raises(ValueError, match=message):
        attention_concentration(random_model(CONFIGS["llama-g1"]), prompts)
