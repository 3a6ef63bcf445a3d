"""Real traces against the Markov map: exact cases and the statistical trend in n."""

import numpy as np
import pytest

import dynsys as ds
from dynsys.dynamics.compare import compare
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.orbits import orbit_of

CFG = ds.ModelConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=8192)


@pytest.fixture(scope="module")
def model():
    return ds.Model(CFG, ds.init_params(CFG, seed=11))


def test_fields_match_brute_force(model):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 40, seed=0)
    trace = np.asarray(ds.generate(model, prompt[None], 24).tokens)[0]
    fmap = markov_map(model, prompt, progress=False)
    c = compare(model, prompt, trace, fmap)
    np.testing.assert_array_equal(c.markov_next, fmap.next[trace[:-1]])
    np.testing.assert_array_equal(c.agree_markov, fmap.next[trace[:-1]] == trace[1:])
    # the position-exact map at step t is P + [x_t] at position n+t−1
    for t in (1, 5, 20):
        logits, _ = ds.step(model, ds.prefill(model, prompt), [[trace[t - 1]]], [[40 + t - 1]])
        assert c.agree_position[t - 1] == (np.argmax(logits[0, 0]) == trace[t])
    tail, cycle = orbit_of(fmap.next, trace[0])
    assert (c.map_tail, c.map_cycle) == (len(tail), len(cycle))
    assert c.drift[0] == 0  # x_1 sits at position n in both references
    assert c.dilution[0] < 1e-4  # and no generated key precedes it


def test_memory_k_of_whole_trace_is_generation(model):
    """With k covering every generated token the memory-k map is real generation."""
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 20, seed=1)
    trace = np.asarray(ds.generate(model, prompt[None], 9).tokens)[0]
    c = compare(model, prompt, trace, memory_ks=(8,))
    assert c.memory[-1] == 8


def test_one_layer_without_positions_follows_the_markov_orbit():
    """One layer, no positional encoding, a long prompt: the trace is the orbit of f_P."""
    cfg = CFG.replace(num_layers=1, use_rope=False)
    model = ds.Model(cfg, ds.init_params(cfg, seed=2))
    prompt = ds.prompts.random_tokens(cfg.vocab_size, 4000, seed=3)
    trace = np.asarray(ds.generate(model, prompt[None], 32).tokens)[0]
    fmap = markov_map(model, prompt, progress=False)
    orbit = [trace[0]]
    for _ in range(31):
        orbit.append(fmap.next[orbit[-1]])
    np.testing.assert_array_equal(trace, orbit)
    c = compare(model, prompt, trace, fmap)
    assert c.first_divergence == 32 and c.agreement == 1.0
    np.testing.assert_array_equal(c.drift, 0.0)


@pytest.mark.slow
def test_agreement_grows_with_prompt_length(model):
    """Over seeds, mean agreement at n = 2048 exceeds that at n = 8 (a statistical trend)."""
    def mean_agreement(n):
        prompts = np.stack([ds.prompts.random_tokens(CFG.vocab_size, n, seed=s)
                            for s in range(12)])
        traces = np.asarray(ds.generate(model, prompts, 24).tokens)
        return np.mean([compare(model, p, t, memory_ks=(1,)).agreement
                        for p, t in zip(prompts, traces)])
    short, long = mean_agreement(8), mean_agreement(2048)
    assert long > short + 0.1, (short, long)
    assert long > 0.9


def test_bad_input(model):
    with pytest.raises(ValueError, match="at least 2"):
        compare(model, [1, 2, 3], [5])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        compare(model, [1, 2, 3], [5, 99])
    fmap = markov_map(model, [1, 2, 3], tokens=[0, 1], progress=False)
    with pytest.raises(ValueError, match="full Markov map"):
        compare(model, [1, 2, 3], [5, 6], fmap)


def test_map_or_prefix_of_another_prompt_or_model_is_refused(model):
    """Same length, same offset, both full maps: only the digest tells them apart."""
    prompt, other = [1, 2, 3], [1, 2, 4]
    with pytest.raises(ValueError, match="another model or prompt"):
        compare(model, prompt, [5, 6], markov_map(model, other, progress=False))
    with pytest.raises(ValueError, match="another model or prompt"):
        compare(model, prompt, [5, 6], markov_map(model.with_rope(False), prompt,
                                                  progress=False))
    with pytest.raises(ValueError, match="another model or prompt"):
        compare(model, prompt, [5, 6], prefix=ds.prefill(model, other))
    with pytest.raises(ValueError, match="another model or prompt"):
        ds.compare_sampled(model, prompt, [[5, 6]], 1.0, prefix=ds.prefill(model, other))


def test_non_finite_model_raises_instead_of_comparing(model):
    broken = model.copy()
    broken.params["embed"]["embedding"] = broken.params["embed"]["embedding"].at[5].set(np.nan)
    with pytest.raises(ds.NonFiniteError, match="compare"):
        compare(broken, [1, 2, 3], [5, 6])
    with pytest.raises(ds.NonFiniteError, match="compare_sampled"):
        ds.compare_sampled(broken, [1, 2, 3], [[5, 6]], 1.0)


def test_sampled_traces_fit_the_kernel(model):
    """Per-state total variation against the exact kernel (brute force from the full map with
    every entry kept); far into the long-prompt regime the real model's likelihood of the
    sampled traces equals the kernel's."""
    nope = model.with_rope(False)
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 3000, seed=4)
    traces = np.asarray(ds.generate(nope, np.stack([prompt] * 64), 12,
                                    sampler=ds.Sampler(temperature=0.5), seed=0).tokens)
    fit = ds.compare_sampled(nope, prompt, traces, temperature=0.5)
    kernel = markov_map(nope, prompt, kernel_k=CFG.vocab_size, temperature=0.5,
                        progress=False).kernel.toarray()
    counts = np.zeros((CFG.vocab_size, CFG.vocab_size))
    np.add.at(counts, (traces[:, :-1].ravel(), traces[:, 1:].ravel()), 1)
    seen = np.flatnonzero(counts.sum(1))
    np.testing.assert_array_equal(fit.states, seen)
    np.testing.assert_array_equal(fit.visits, counts[seen].sum(1))
    empirical = counts[seen] / counts[seen].sum(1, keepdims=True)
    np.testing.assert_allclose(fit.tv, 0.5 * np.abs(empirical - kernel[seen]).sum(1), atol=1e-5)
    logk = np.log(kernel[traces[:, :-1], traces[:, 1:]]).sum()
    assert fit.loglik_kernel == pytest.approx(logk, rel=1e-5)
    assert fit.loglik_kernel == pytest.approx(fit.loglik_model, rel=1e-2)
    with pytest.raises(ValueError, match="temperature"):
        ds.compare_sampled(nope, prompt, traces, temperature=0.0)
