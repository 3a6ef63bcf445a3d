"""The smallest memory of each step against transformers running P + the last k generated
tokens at their real positions (the gap in position_ids where the earlier ones are absent)."""

import jax
import numpy as np
import pytest
from conftest import hf_logits

import dynsys as ds
from dynsys.decode.engine import pad_prompts
from dynsys.dynamics import memory as memory_module
from dynsys.dynamics.markov import suffix_map
from dynsys.dynamics.memory import NONE, step_memory, window_logits

window_logits_jit = jax.jit(window_logits, static_argnames=("cfg",))


def greedy(model, prompts, G: int, **options) -> np.ndarray:
    """generate's greedy tokens [B, G] as numpy."""
    return np.asarray(ds.generate(model, prompts, G, **options).tokens)


def prompts_of(vocab: int, B: int, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, (B, n)).astype(np.int32)


@pytest.mark.parametrize("name", ["llama-g1", "qwen2-g2-tied", "neox-rot25"])
def test_matches_transformers_with_the_gap_in_positions(name, pair):
    """Every (step t, k ≤ K): transformers' logits of P + x_{t−k+1..t} at positions 0..n−1,
    n+t−k..n+t−1 equal window_logits' to 1e-4, and their argmax = x_{t+1} is `explains`."""
    model, hf = pair(name)
    K, G, n = 3, 8, 10
    prompts = prompts_of(model.config.vocab_size, 2, n, seed=5)
    traces = greedy(model, prompts, G)
    got = step_memory(model, prompts, traces, K)
    brute = np.zeros((2, G - 1, K), bool)
    for b in range(2):
        # window j holds x_{j+1}.. at n + j..: its column k − 1 is step t = j + k, memory k
        ext = np.concatenate([traces[b], np.zeros(K, np.int32)])
        j = np.arange(G - 1)[:, None] + np.arange(K)[None]
        mine_all = np.asarray(window_logits_jit(model.config, model.params,
                                                ds.prefill(model, prompts[b]),
                                                ext[j], (n + j).astype(np.int32)))
        for k in range(1, K + 1):
            t = np.arange(k, G)  # the steps with k generated tokens behind them
            suffix = np.stack([traces[b, s - k:s] for s in t])  # x_{t−k+1..t}
            full = np.concatenate([np.tile(prompts[b], (len(t), 1)), suffix], 1)
            positions = np.concatenate([np.tile(np.arange(n), (len(t), 1)),
                                        n + t[:, None] - k + np.arange(k)[None]], 1)
            want = hf_logits(hf, full, positions)[:, -1]
            mine = mine_all[t - k, k - 1]
            np.testing.assert_allclose(mine, want, atol=1e-4, rtol=1e-4)
            np.testing.assert_array_equal(mine.argmax(-1), want.argmax(-1))
            brute[b, t - 1, k - 1] = want.argmax(-1) == traces[b, t]
    np.testing.assert_array_equal(got.explains, brute)
    assert not got.explains.all(), "every step explained by every k: the test cannot fail"


def test_whole_history_explains_and_memory_one_is_the_markov_map(model_of):
    """k = t is the whole history, so with K = G − 1 every step has a memory in 1..t; k = 1 is
    f_{P,t−1}(x_t) (suffix_map with offset t − 1, independently); k > t is never claimed."""
    model = model_of("llama-g1")
    G = 8  # shapes as in the transformers test: generate's program is reused
    prompts = prompts_of(model.config.vocab_size, 2, 10, seed=1)
    traces = greedy(model, prompts, G)
    got = step_memory(model, prompts, traces, G - 1)
    t = np.arange(1, G)
    assert (got.smallest >= 1).all() and (got.smallest <= t).all()
    assert got.explains[:, t - 1, t - 1].all()
    assert not got.explains[:, np.triu_indices(G - 1, 1)[0], np.triu_indices(G - 1, 1)[1]].any()
    for b in range(2):
        markov = suffix_map(model, prompts[b], traces[b, :-1, None], offset=t - 1,
                            progress=False).next
        np.testing.assert_array_equal(got.explains[b, :, 0], markov == traces[b, 1:])
    assert (got.smallest > 1).any(), "all steps Markov: the k > 1 path is untested"


def test_forced_markov_decoding_needs_memory_one(model_of):
    """generated_key_bias = −inf iterates f_{P,t−1}: every step's smallest memory is 1."""
    model = model_of("qwen2-g2-tied")
    prompts = prompts_of(model.config.vocab_size, 2, 10, seed=2)
    traces = greedy(model, prompts, 8, generated_key_bias=float("-inf"))
    np.testing.assert_array_equal(step_memory(model, prompts, traces, 3).smallest, 1)


def test_ragged_masked_chunked_and_single_prompts_agree(model_of):
    """Ragged prompts, their left-padded form with its mask, a small chunk, and each prompt
    alone give the same answer (each prompt's own length places its tokens); one compile."""
    model = model_of("llama-g1")
    V, G, K = model.config.vocab_size, 9, 4
    rng = np.random.default_rng(3)
    ragged = [rng.integers(0, V, n).astype(np.int32) for n in (7, 13, 10)]
    traces = greedy(model, ragged, G)
    got = step_memory(model, ragged, traces, K)
    tokens, mask = pad_prompts(model.config, ragged, G)
    np.testing.assert_array_equal(step_memory(model, tokens, traces, K, mask=mask).explains,
                                  got.explains)
    np.testing.assert_array_equal(step_memory(model, ragged, traces, K, chunk=3).explains,
                                  got.explains)
    for b, prompt in enumerate(ragged):
        alone = step_memory(model, [prompt], traces[b:b + 1], K,
                            prefixes=[ds.prefill(model, prompt)])
        np.testing.assert_array_equal(alone.explains[0], got.explains[b])
    before = memory_module._window_next._cache_size()
    step_memory(model, [rng.integers(0, V, 12) for _ in range(3)], traces, K)
    assert memory_module._window_next._cache_size() == before


def test_smallest_is_the_first_k_or_none():
    explains = np.array([[[False, True, True], [False, False, False], [True, False, True]]])
    got = memory_module.Memory(explains).smallest
    np.testing.assert_array_equal(got, [[2, NONE, 1]])


@pytest.mark.parametrize("change, match", [
    (dict(max_memory=0), "max_memory=0"),
    (dict(traces=np.zeros((2, 1), np.int32)), "a step needs at least 2"),
    (dict(traces=np.zeros((3, 5), np.int32)), "2 prompts but 3 traces"),
    (dict(traces=np.zeros(5, np.int32)), "traces must be 2-D"),
    (dict(mask=np.array([[True, False, True]] * 2)), "mask row 0"),
    (dict(mask=np.ones((2, 2), bool)), "mask must be bool"),
    (dict(prefixes="other"), "computed from another model or prompt"),
])
def test_bad_input_is_one_value_error(change, match, model_of):
    model = model_of("llama-g1")
    args = dict(prompts=np.array([[1, 2, 3], [4, 5, 6]]), traces=np.zeros((2, 5), np.int32),
                max_memory=2)
    if change.get("prefixes") == "other":
        change = dict(prefixes=[ds.prefill(model, [9, 9, 9])] * 2)
    with pytest.raises(ValueError, match=match):
        step_memory(model, **{**args, **change})
