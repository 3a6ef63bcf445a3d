"""generate's output struct: its fields, and the per-step log-probabilities against
transformers' `output_logits`."""

import numpy as np
import pytest
import torch

from dynsys.decode import Generation, generate
from dynsys.decode.sampling import Sampler


def tokens(model, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, shape)


@pytest.mark.parametrize("name", ["llama-g4-tied-llama3", "neox-rot25", "qwen2-g2-tied"])
def test_top_logprobs_are_transformers_raw_logits_log_softmax(name, pair):
    """With a repetition penalty, the processed scores (margins: `output_scores`) differ from
    the raw logits (`output_logits`): the log-probabilities are of the raw ones, to 1e-4."""
    model, hf = pair(name)
    prompts, G, K = np.random.default_rng(3).integers(0, 40, (2, 16)), 12, 5
    ours = generate(model, prompts, G, sampler=Sampler(repetition_penalty=1.5),
                    return_margins=True, top_logprobs=K)
    ids = torch.as_tensor(prompts, dtype=torch.long)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          min_new_tokens=G, max_new_tokens=G, pad_token_id=0, eos_token_id=None,
                          repetition_penalty=1.5, output_logits=True, output_scores=True,
                          return_dict_in_generate=True)
    np.testing.assert_array_equal(np.asarray(ours.tokens), out.sequences[:, 16:].numpy())
    theirs = torch.log_softmax(torch.stack(out.logits, 1), -1).numpy()  # [B, G, V]
    top = np.argsort(-theirs, -1, kind="stable")[..., :K]
    np.testing.assert_array_equal(np.asarray(ours.logprob_ids), top)
    np.testing.assert_allclose(np.asarray(ours.logprobs),
                               np.take_along_axis(theirs, top, -1), atol=1e-4)
    processed = np.sort(torch.stack(out.scores, 1).numpy(), -1)[..., -2:]
    np.testing.assert_allclose(np.asarray(ours.margins), processed[..., 1] - processed[..., 0],
                               atol=1e-4)
    raw = np.sort(theirs, -1)[..., -2:]
    assert not np.allclose(np.asarray(ours.margins), raw[..., 1] - raw[..., 0], atol=1e-2)


def test_fields_not_asked_for_are_none_and_k_is_checked(model_of):
    model = model_of("llama-g1")
    prompts = tokens(model, 2, 8)
    plain = generate(model, prompts, 4)
    assert isinstance(plain, Generation) and plain.tokens.shape == (2, 4)
    assert plain.margins is plain.logprob_ids is plain.logprobs is None
    assert plain.recorded == {}
    full = generate(model, prompts, 4, top_logprobs=model.config.vocab_size)
    np.testing.assert_allclose(np.exp(np.asarray(full.logprobs)).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(full.logprob_ids[..., 0]), np.asarray(full.tokens))
    for bad in (-1, model.config.vocab_size + 1, 2.0, True):
        with pytest.raises(ValueError, match="top_logprobs="):
            generate(model, prompts, 4, top_logprobs=bad)

