from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import hf_greedy
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from dynsys.checks import MIN_TEMPERATURE
from dynsys.decode import forward, generate
from dynsys.decode.sampling import GREEDY, Sampler, margin, process, select
from dynsys.dynamics.traces import repetition_stop

B, C, V = 4, 10, 24  # fixed shapes, so each sampler kind compiles once
fast_process = jax.jit(process, static_argnames="kind")


@st.composite
def histories(draw):
    """seq [B, C] and seen [B, C]: per row left padding, ≥ 1 real token, an unwritten tail;
    slots that are not seen hold garbage ids. Small alphabets make n-gram repeats likely."""
    alphabet = draw(st.sampled_from([2, 3, V]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    seq = rng.integers(0, V, (B, C))
    seen = np.zeros((B, C), bool)
    for b in range(B):
        length = draw(st.integers(1, C))
        pad = draw(st.integers(0, C - length))
        seq[b, pad:pad + length] = rng.integers(0, alphabet, length)
        seen[b, pad:pad + length] = True
    return seq, seen


def random_logits(seed, scale=3.0, shape=(B, V)):
    """Continuous random logits, both signs, no ties."""
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


def hf_process(processors, seq, seen, logits):
    """transformers' processors applied row by row to the row's real tokens."""
    out = []
    for b in range(len(seq)):
        ids = torch.as_tensor(seq[b][seen[b]])[None]
        scores = torch.tensor(logits[b][None])
        for proc in processors:
            scores = proc(ids, scores.clone())
        out.append(scores[0].numpy())
    return np.stack(out)


def ours_process(sampler, seq, seen, logits):
    return np.asarray(fast_process(jnp.asarray(logits), jnp.asarray(seq), jnp.asarray(seen),
                                   sampler.kind, sampler.values))


@settings(deadline=None, max_examples=40)
@given(histories(), st.floats(0.3, 3.0), st.integers(0, 2**31))
def test_repetition_penalty_matches_transformers(history, rho, seed):
    seq, seen = history
    logits = random_logits(seed)
    ours = ours_process(Sampler(repetition_penalty=rho), seq, seen, logits)
    theirs = hf_process([RepetitionPenaltyLogitsProcessor(rho)], seq, seen, logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3])
@settings(deadline=None, max_examples=40)
@given(history=histories(), seed=st.integers(0, 2**31))
def test_no_repeat_ngram_matches_transformers(n, history, seed):
    seq, seen = history
    logits = random_logits(seed)
    ours = ours_process(Sampler(no_repeat_ngram_size=n), seq, seen, logits)
    theirs = hf_process([NoRepeatNGramLogitsProcessor(n)], seq, seen, logits)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    np.testing.assert_array_equal(ours[np.isfinite(ours)], logits[np.isfinite(ours)])


@settings(deadline=None, max_examples=20)
@given(histories(), st.integers(0, 2**31))
def test_penalty_then_ngram_matches_transformers(history, seed):
    seq, seen = history
    logits = random_logits(seed)
    ours = ours_process(Sampler(repetition_penalty=1.3, no_repeat_ngram_size=2), seq, seen, logits)
    theirs = hf_process([RepetitionPenaltyLogitsProcessor(1.3), NoRepeatNGramLogitsProcessor(2)],
                        seq, seen, logits)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def filtered_scores(scores, sampler):
    """The scores `select` draws from (after temperature, top-k, top-p): captured from its call
    of jax.random.categorical."""
    captured = []

    def categorical(key, logits, axis=-1):
        captured.append(np.asarray(logits))
        return jnp.argmax(logits, axis=axis)

    with mock.patch.object(jax.random, "categorical", categorical):
        select(jnp.asarray(scores), jax.random.PRNGKey(0), sampler.kind, sampler.values)
    (out,) = captured
    return out


def hf_warp(scores, temperature, top_k, top_p, min_p=0.0):
    warpers = []
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    if min_p:
        warpers.append(MinPLogitsWarper(min_p))
    out = torch.tensor(scores)
    for w in warpers:
        out = w(None, out)
    return out.numpy()


def top_p_is_ambiguous(scores, temperature, top_k, top_p):
    """True if some cumulative probability lies within float noise of 1 − top_p."""
    if top_p == 1.0:
        return False
    z = hf_warp(scores, temperature, top_k, 1.0).astype(np.float64)
    z = np.sort(z, -1)
    p = np.exp(z - z.max(-1, keepdims=True))
    cum = np.cumsum(p / p.sum(-1, keepdims=True), -1)
    return bool((np.abs(cum - (1 - top_p)) < 1e-5).any())


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**31), temperature=st.sampled_from([1.0, 0.37, 2.5]),
       top_k=st.sampled_from([0, 1, 3, 10, V, V + 5]),
       top_p=st.sampled_from([1.0, 0.05, 0.5, 0.9, 0.99]), scale=st.sampled_from([0.5, 3.0]))
def test_temperature_top_k_top_p_keep_the_tokens_transformers_keeps(seed, temperature, top_k,
                                                                    top_p, scale):
    scores = random_logits(seed, scale)
    assume(not top_p_is_ambiguous(scores, temperature, top_k, top_p))
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p)
    ours, theirs = filtered_scores(scores, sampler), hf_warp(scores, temperature, top_k, top_p)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    # ours are shifted by the row max before the division (the same softmax, no overflow)
    kept = np.isfinite(theirs)
    np.testing.assert_allclose(ours[kept], (theirs - theirs.max(-1, keepdims=True))[kept],
                               rtol=1e-6, atol=1e-5)


def test_smallest_normal_temperature_draws_the_argmax():
    """At float32's smallest normal temperature scores / T overflow to inf − inf = NaN in the
    softmax, and a draw was garbage; shifted by the row max first, it is the argmax."""
    scores = random_logits(3, 3.0)
    sampler = Sampler(temperature=MIN_TEMPERATURE, top_p=0.9)
    draws = np.asarray(select(jnp.asarray(scores), jax.random.PRNGKey(1), sampler.kind,
                              sampler.values))
    np.testing.assert_array_equal(draws, scores.argmax(-1))


def test_greedy_ties_break_to_lowest_id():
    scores = np.array([[0, 2, 2, 1], [5, 5, 5, 5], [-np.inf, 1, 3, 3], [7, -1, 7, 0]], np.float32)
    chosen = np.asarray(select(jnp.asarray(scores), jax.random.PRNGKey(0), GREEDY.kind,
                               GREEDY.values))
    expected = [min(i for i in range(4) if row[i] == row.max()) for row in scores]
    np.testing.assert_array_equal(chosen, expected)
    np.testing.assert_array_equal(np.asarray(margin(jnp.asarray(scores)))[[1, 2, 3]], 0)


def test_seeded_sampling_is_reproducible(model_of):
    model = model_of("llama-g1")
    prompt = np.random.default_rng(0).integers(0, 257, (2, 12))  # shapes as in test_decode
    hot = Sampler(temperature=1.0)
    a = np.asarray(generate(model, prompt, 40, sampler=hot, seed=11).tokens)
    np.testing.assert_array_equal(a, generate(model, prompt, 40, sampler=hot, seed=11).tokens)
    assert not np.array_equal(a, generate(model, prompt, 40, sampler=hot, seed=12).tokens)
    assert not np.array_equal(a, np.asarray(generate(model, prompt, 40).tokens))


@pytest.mark.parametrize("sampler", [Sampler(temperature=1.0), Sampler(temperature=0.6),
                                     Sampler(temperature=1.5, top_k=4, top_p=0.9)],
                         ids=["T=1", "T=0.6", "top-k+top-p"])
def test_sampled_frequencies_match_probabilities(sampler):
    n, logits = 20_000, random_logits(3, 1.0, (1, 7))
    draws = np.asarray(select(jnp.asarray(np.repeat(logits, n, 0)), jax.random.PRNGKey(5),
                              sampler.kind, sampler.values))
    freq = np.bincount(draws, minlength=7) / n
    z = hf_warp(logits, sampler.temperature, sampler.top_k, sampler.top_p)[0].astype(np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    assert (freq[p == 0] == 0).all()
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / n) + 1e-12)


@pytest.mark.parametrize("name", ["llama-g1", "neox-rot25"])
def test_penalised_greedy_matches_transformers(name, pair):
    model, hf = pair(name)
    prompts = np.random.default_rng(9).integers(0, 40, (2, 16))  # repeats in the prompt
    sampler = Sampler(repetition_penalty=1.3, no_repeat_ngram_size=3)
    out = generate(model, prompts, 40, sampler=sampler, return_margins=True)
    ours, margins = out.tokens, out.margins
    theirs, scores = hf_greedy(hf, prompts, 40, with_scores=True, repetition_penalty=1.3,
                               no_repeat_ngram_size=3)
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    top2 = np.sort(scores, -1)[..., -2:]
    np.testing.assert_allclose(np.asarray(margins), top2[..., 1] - top2[..., 0], atol=1e-4)
    for row, prompt in zip(np.asarray(ours), prompts):  # brute force: no 3-gram repeats
        seq = list(prompt) + list(row)
        grams = [tuple(seq[i:i + 3]) for i in range(len(seq) - 2)]
        new = grams[len(prompt) - 2:]
        assert all(g not in grams[:len(prompt) - 2 + j] for j, g in enumerate(new))


BAD_SAMPLERS = {  # case: (fields, the bad value's repr in the message)
    "top_k 2.5": (dict(top_k=2.5), "2.5"),
    "top_k true": (dict(top_k=True), "True"),
    "top_k -1": (dict(top_k=-1), "-1"),
    "top_k 2**31": (dict(top_k=2**31), "2147483648"),
    "no_repeat_ngram_size 1.5": (dict(no_repeat_ngram_size=1.5), "1.5"),
    "no_repeat_ngram_size true": (dict(no_repeat_ngram_size=True), "True"),
    "temperature '0.5'": (dict(temperature="0.5"), "'0.5'"),
    "temperature inf": (dict(temperature=float("inf")), "inf"),
    "temperature nan": (dict(temperature=float("nan")), "nan"),
    "temperature false": (dict(temperature=False), "False"),
    "temperature subnormal": (dict(temperature=1e-40), "1e-40"),
    "top_p nan": (dict(top_p=float("nan")), "nan"),
    "top_p true": (dict(top_p=True), "True"),
    "repetition_penalty inf": (dict(repetition_penalty=float("inf")), "inf"),
    "repetition_penalty '1.3'": (dict(repetition_penalty="1.3"), "'1.3'"),
    "dry_multiplier -1": (dict(dry_multiplier=-1), "-1"),
    "dry_base 0.5": (dict(dry_base=0.5), "0.5"),
    "dry_allowed_length 0": (dict(dry_allowed_length=0), "0"),
    "dry_sequence_breakers (-1,)": (dict(dry_sequence_breakers=(-1,)), "-1"),
    "dry_sequence_breakers 5": (dict(dry_sequence_breakers=5), "5"),
    "dry_penalty_last_n 2.0": (dict(dry_penalty_last_n=2.0), "2.0"),
    "min_p 1.5": (dict(min_p=1.5), "1.5"),
    "min_p -0.1": (dict(min_p=-0.1), "-0.1"),
    "presence_penalty inf": (dict(presence_penalty=float("inf")), "inf"),
    "frequency_penalty '1'": (dict(frequency_penalty="1"), "'1'"),
    "stop_tokens (-1,)": (dict(stop_tokens=(-1,)), "-1"),
    "stop_tokens 5": (dict(stop_tokens=5), "5"),
    "pad_token -1": (dict(pad_token=-1), "-1"),
    "logits_processor 3": (dict(logits_processor=3), "3"),
}


@pytest.mark.parametrize("case", BAD_SAMPLERS)
def test_bad_sampler_field_raises_naming_field_and_value(case):
    fields, value = BAD_SAMPLERS[case]
    with pytest.raises(ValueError) as info:
        Sampler(**fields)
    message = str(info.value)
    (field,) = fields
    assert f"{field}=" in message and value in message and "\n" not in message, message


def test_sampler_accepts_ints_for_floats_and_numpy_scalars():
    plain = Sampler(temperature=1.0, top_k=3, top_p=0.5, repetition_penalty=2.0,
                    no_repeat_ngram_size=2)
    numpy = Sampler(temperature=np.float32(1), top_k=np.int64(3), top_p=np.float64(0.5),
                    repetition_penalty=2, no_repeat_ngram_size=np.int32(2))
    assert numpy == plain and numpy.kind == plain.kind and hash(numpy.kind) == hash(plain.kind)
    assert [type(getattr(numpy, f)) for f in ("temperature", "top_k", "top_p",
                                              "repetition_penalty", "no_repeat_ngram_size")] \
        == [float, int, float, float, int]
    assert Sampler(temperature=0).kind == GREEDY.kind


def dry_reference(ids, scores, m, base, allowed, breakers, last_n):
    """text-generation-webui's DRYLogitsProcessor on one row, transcribed as plain Python."""
    ids, scores = list(ids[-last_n:] if last_n else ids), np.array(scores, np.float64)
    if ids[-1] in breakers:
        return scores
    lengths = {}
    for i in range(len(ids) - 1):
        if ids[i] != ids[-1] or ids[i + 1] in breakers:
            continue
        length = 1
        while length < 50 and i - length >= 0:
            previous = ids[-(length + 1)]
            if ids[i - length] != previous or previous in breakers:
                break
            length += 1
        lengths[ids[i + 1]] = max(length, lengths.get(ids[i + 1], 0))
    for v, length in lengths.items():
        if length >= allowed:
            scores[v] -= m * base ** (length - allowed)
    return scores


def dry_expected(sampler, seq, seen, logits):
    return np.stack([dry_reference(seq[b][seen[b]], logits[b], sampler.dry_multiplier,
                                   sampler.dry_base, sampler.dry_allowed_length,
                                   sampler.dry_sequence_breakers, sampler.dry_penalty_last_n)
                     for b in range(len(seq))])


@settings(deadline=None, max_examples=40)
@given(history=histories(), seed=st.integers(0, 2**31), m=st.floats(0.1, 3.0),
       base=st.floats(1.0, 3.0), allowed=st.integers(1, 4),
       breakers=st.sampled_from([(), (1,), (0, 2)]), last_n=st.integers(0, C))
def test_dry_matches_brute_force(history, seed, m, base, allowed, breakers, last_n):
    seq, seen = history
    logits = random_logits(seed)
    sampler = Sampler(dry_multiplier=m, dry_base=base, dry_allowed_length=allowed,
                      dry_sequence_breakers=breakers, dry_penalty_last_n=last_n)
    np.testing.assert_allclose(ours_process(sampler, seq, seen, logits),
                               dry_expected(sampler, seq, seen, logits), rtol=1e-5, atol=1e-5)


def test_dry_caps_matches_at_fifty_and_follows_the_penalty():
    """Rows longer than the cap (a run of one token, a period-2 cycle, random), after the
    repetition penalty and before the n-gram ban."""
    rng = np.random.default_rng(4)
    seq = np.stack([np.full(64, 5), np.tile([1, 2], 32), rng.integers(0, 3, 64),
                    rng.integers(0, 3, 64)])
    seen = np.ones_like(seq, bool)
    seen[3, :7] = False
    logits = random_logits(1, shape=(4, V))
    sampler = Sampler(repetition_penalty=1.3, no_repeat_ngram_size=4, dry_multiplier=0.8,
                      dry_base=1.1, dry_penalty_last_n=60)
    expected = hf_process([RepetitionPenaltyLogitsProcessor(1.3)], seq, seen, logits)
    expected = dry_expected(sampler, seq, seen, expected)
    expected = hf_process([NoRepeatNGramLogitsProcessor(4)], seq, seen,
                          expected.astype(np.float32))
    ours = ours_process(sampler, seq, seen, logits)
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(expected))
    np.testing.assert_allclose(ours[np.isfinite(ours)], expected[np.isfinite(ours)], rtol=1e-5)
    assert ours[0, 5] < logits[0, 5] / 1.3 - 0.8 * 1.1 ** 47  # capped at L = 50 (60 uncapped)


def dry_lengths(ids):
    """L_v of every v for one sequence (DRY with no breakers, no window), by brute force."""
    lengths = {}
    for i in range(len(ids) - 1):
        length = 0
        while length <= i and ids[i - length] == ids[len(ids) - 1 - length]:
            length += 1
        lengths[ids[i + 1]] = max(length, lengths.get(ids[i + 1], 0))
    return lengths


def test_dry_generation_never_makes_the_repeat_greedy_made(model_of):
    model = model_of("neox-rot25")  # greedy loops within 24 tokens on these prompts
    prompts = np.random.default_rng(2).integers(0, 257, (3, 12))
    greedy = np.asarray(generate(model, prompts, 24).tokens)
    dry = np.asarray(generate(model, prompts, 24, sampler=Sampler(dry_multiplier=1e6)).tokens)

    def repeats(prompt, row):  # steps whose token continues a match of length >= 2
        return [t for t in range(len(row))
                if dry_lengths([*prompt, *row[:t]]).get(row[t], 0) >= 2]

    made = [(b, repeats(p, g)[0]) for b, (p, g) in enumerate(zip(prompts, greedy))
            if repeats(p, g)]
    assert made, "greedy made no repeat: the test would be vacuous"
    for b, t in made:
        np.testing.assert_array_equal(dry[b, :t], greedy[b, :t])
        assert dry[b, t] != greedy[b, t]
    assert all(repeats(p, d) == [] for p, d in zip(prompts, dry))


def stop_reference(trace, min_pattern, max_pattern, min_count):
    """The first t whose prefix ends in min_count copies of its last p tokens (vLLM's check
    after each token), by list comparison; len(trace) if none."""
    trace = list(trace)
    for t in range(1, len(trace) + 1):
        for p in range(min_pattern, max_pattern + 1):
            if t >= p * min_count and trace[t - p * min_count:t] == trace[t - p:t] * min_count:
                return t
    return len(trace)


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**32 - 1), alphabet=st.sampled_from([1, 2, 3, 50]),
       sizes=st.tuples(st.integers(1, 5), st.integers(0, 4)), min_count=st.integers(2, 4))
def test_repetition_stop_matches_brute_force(seed, alphabet, sizes, min_count):
    rng = np.random.default_rng(seed)
    traces = rng.integers(0, alphabet, (6, 24))
    traces[0] = np.resize(rng.integers(0, 50, 4), 24)  # a period-4 loop from the start
    traces[1, 10:] = np.resize(traces[1, 10:13], 14)  # a period-3 loop after a transient
    min_pattern, max_pattern = sizes[0], sizes[0] + sizes[1]
    np.testing.assert_array_equal(
        repetition_stop(traces, min_pattern, max_pattern, min_count),
        [stop_reference(row, min_pattern, max_pattern, min_count) for row in traces])


@pytest.mark.parametrize("args, bad", [((0, 2, 2), "min_pattern=0"), ((3, 2, 2), "max_pattern=2"),
                                       ((1, 2, 1), "min_count=1"), ((1.5, 2, 2), "1.5"),
                                       ((1, 2, True), "min_count=True")])
def test_repetition_stop_rejects_bad_sizes(args, bad):
    with pytest.raises(ValueError, match=bad):
        repetition_stop(np.zeros((2, 8), int), *args)


def test_sampler_values_carry_dry_only_when_on_and_pad_the_breakers():
    assert not [name for name in Sampler(dry_sequence_breakers=(3,)).values if "dry" in name]
    for count, width in ((0, 8), (3, 8), (8, 8), (9, 16)):
        breakers = Sampler(dry_multiplier=1.0, dry_sequence_breakers=tuple(range(count))
                           ).values["dry_sequence_breakers"]
        assert np.asarray(breakers).tolist() == [*range(count), *[-1] * (width - count)]


@settings(deadline=None, max_examples=60)
@given(seed=st.integers(0, 2**31), temperature=st.sampled_from([1.0, 0.37, 2.5]),
       top_k=st.sampled_from([0, 5]), min_p=st.sampled_from([0.01, 0.1, 0.5, 0.9, 1.0]))
def test_min_p_keeps_the_tokens_transformers_keeps(seed, temperature, top_k, min_p):
    """MinPLogitsWarper after temperature and top-k (transformers' order)."""
    scores = random_logits(seed)
    ours = filtered_scores(scores, Sampler(temperature=temperature, top_k=top_k, min_p=min_p))
    theirs = hf_warp(scores, temperature, top_k, 1.0, min_p)
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
    assert np.isfinite(ours).sum(-1).min() >= 1


def counts_reference(seq, seen, generated_from, scores, presence, frequency):
    """vLLM's presence and frequency penalties, by counting each row's generated tokens."""
    out = np.array(scores, np.float64)
    for b in range(len(seq)):
        generated = [int(seq[b, c]) for c in range(seq.shape[1]) if seen[b, c] and
                     c >= generated_from]
        for v in set(generated):
            out[b, v] -= presence + frequency * generated.count(v)
    return out


@settings(deadline=None, max_examples=40)
@given(history=histories(), seed=st.integers(0, 2**31), start=st.integers(0, C),
       presence=st.sampled_from([0.0, 0.7, -0.4]), frequency=st.sampled_from([0.0, 0.3, -1.1]))
def test_presence_and_frequency_penalties_match_brute_force(history, seed, start, presence,
                                                             frequency):
    """After transformers' repetition penalty, counting only slots from `start` on."""
    seq, seen = history
    logits = random_logits(seed)
    sampler = Sampler(repetition_penalty=1.3, presence_penalty=presence,
                      frequency_penalty=frequency)
    ours = np.asarray(jax.jit(process, static_argnames=("kind", "generated_from"))(
        jnp.asarray(logits), jnp.asarray(seq), jnp.asarray(seen), sampler.kind, sampler.values,
        generated_from=start))
    penalised = hf_process([RepetitionPenaltyLogitsProcessor(1.3)], seq, seen, logits)
    np.testing.assert_allclose(ours, counts_reference(seq, seen, start, penalised, presence,
                                                      frequency), rtol=1e-6, atol=1e-5)


def test_penalised_generation_counts_only_generated_tokens(model_of):
    """Greedy decoding with presence and frequency penalties equals a brute-force loop over
    full forward passes that counts the generated tokens (not the prompt's), ragged prompts
    included."""
    model = model_of("llama-g2-narrow")
    prompts = [np.random.default_rng(1).integers(0, 30, 9), np.random.default_rng(2).integers(
        0, 30, 14)]
    sampler, G = Sampler(presence_penalty=1.5, frequency_penalty=0.8), 10
    ours = np.asarray(generate(model, prompts, G, sampler=sampler).tokens)
    for b, prompt in enumerate(prompts):
        seq = list(prompt)
        for _ in range(G):
            scores = np.asarray(forward(model, np.asarray(seq)[None]))[0, -1]
            generated = np.asarray(seq[len(prompt):], int)[None]
            scores = counts_reference(generated, np.ones_like(generated, bool), 0, scores[None],
                                      1.5, 0.8)[0]
            seq.append(int(np.argmax(scores)))
        np.testing.assert_array_equal(ours[b], seq[len(prompt):])
    assert not np.array_equal(ours, np.asarray(generate(model, prompts, G).tokens))


def test_stop_tokens_end_rows_as_transformers_eos(pair):
    """Each row stops at its first stop token, as transformers' generate with eos_token_id
    (a list) and pad_token_id; transformers ends once every row has stopped, generate keeps
    its fixed length, padding."""
    model, hf = pair("llama-g1")
    prompts, G, pad = tokens_of(model, 3, 16), 16, 5
    plain = np.asarray(generate(model, prompts, G).tokens)
    stops = (int(plain[0, 3]), int(plain[1, 6]))
    out = generate(model, prompts, G, sampler=Sampler(stop_tokens=stops, pad_token=pad))
    ids = torch.as_tensor(prompts, dtype=torch.long)
    with torch.no_grad():
        theirs = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=G, eos_token_id=list(stops),
                             pad_token_id=pad).numpy()[:, 16:]
    ours, finished = np.asarray(out.tokens), np.asarray(out.finished)
    np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)
    for b in range(3):
        hit = [i for i in range(G) if plain[b, i] in stops]
        length = hit[0] + 1 if hit else G
        np.testing.assert_array_equal(ours[b, :length], plain[b, :length])
        assert (ours[b, length:] == pad).all()
        np.testing.assert_array_equal(finished[b], np.arange(G) >= length)
    assert generate(model, prompts, G).finished is None
    with pytest.raises(ValueError, match="stop_tokens="):
        generate(model, prompts, 2, sampler=Sampler(stop_tokens=(model.config.vocab_size,)))


def no_immediate_repeat(scores, seq, seen):
    """A logits processor: ban each row's current token, and add 1.5 to ids 0..9."""
    last = jnp.take_along_axis(seq, (jnp.argmax(seen, 1) + seen.sum(1) - 1)[:, None], 1)
    ids = jnp.arange(scores.shape[-1])
    return jnp.where(ids == last, -jnp.inf, scores + 1.5 * (ids < 10))


class NoImmediateRepeat(LogitsProcessor):
    """The same processor for transformers."""

    def __call__(self, input_ids, scores):
        scores = scores + 1.5 * (torch.arange(scores.shape[-1]) < 10)
        return scores.scatter(1, input_ids[:, -1:], -float("inf"))


def test_logits_processor_runs_where_transformers_runs_its_own(pair):
    """After the repetition penalty (whose order with the + 1.5 matters): tokens and margins
    equal transformers' generate with logits_processor; one compile per processor."""
    import dynsys.decode.generation
    model, hf = pair("neox-rot25")
    prompts = np.random.default_rng(4).integers(0, 40, (2, 16))
    sampler = Sampler(repetition_penalty=1.3, logits_processor=no_immediate_repeat)
    out = generate(model, prompts, 24, sampler=sampler, return_margins=True)
    theirs, scores = hf_greedy(hf, prompts, 24, with_scores=True, repetition_penalty=1.3,
                               logits_processor=LogitsProcessorList([NoImmediateRepeat()]))
    np.testing.assert_array_equal(np.asarray(out.tokens), theirs)
    top2 = np.sort(scores, -1)[..., -2:]
    np.testing.assert_allclose(np.asarray(out.margins), top2[..., 1] - top2[..., 0], atol=1e-4)
    seq = np.concatenate([prompts, np.asarray(out.tokens)], 1)
    assert (seq[:, 16:] != seq[:, 15:-1]).all()
    compiled = dynsys.decode.generation._generate._cache_size
    before = compiled()
    generate(model, prompts[::-1], 24, sampler=sampler, return_margins=True)
    assert compiled() == before
    other = Sampler(repetition_penalty=1.3, logits_processor=lambda s, seq, seen: s)
    generate(model, prompts, 24, sampler=other, return_margins=True)
    assert compiled() == before + 1


def tokens_of(model, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, shape)
