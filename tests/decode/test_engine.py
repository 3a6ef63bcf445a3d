import numpy as np
import pytest
from conftest import hf_greedy, hf_logits

import dynsys
import dynsys.decode.engine
from dynsys.nn.cache import bucket, empty_rows
from dynsys.decode import forward, generate, prefill, step
from dynsys.decode.sampling import Sampler


def tokens(model, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, shape)


def row_decode(model, prompt, row_tokens, position):
    """Reference without a shared prefix: every row holds its own copy of the prompt in a
    RowCache (positions 0..n−1), then its token at `position`."""
    B, n = len(row_tokens), len(prompt)
    rows = empty_rows(model.config, B, n + 1)
    _, rows = step(model, None, np.tile(prompt, (B, 1)), np.tile(np.arange(n), (B, 1)), rows)
    return step(model, None, np.asarray(row_tokens)[:, None], np.full((B, 1), position), rows)[0]


@pytest.mark.parametrize("name", ["llama-g4-tied-llama3", "neox-rot25"])
def test_prefill_then_steps_equal_forward(name, model_of):
    model = model_of(name)
    prompt, cont = tokens(model, 37), tokens(model, 3, 6, seed=1)
    n, m = 37, 6
    full = np.asarray(forward(model, np.concatenate([np.tile(prompt, (3, 1)), cont], 1)))
    prefix = prefill(model, prompt)
    rows = empty_rows(model.config, 3, m)
    for j in range(m):
        logits, rows = step(model, prefix, cont[:, j:j + 1], np.full((3, 1), n + j), rows)
        np.testing.assert_allclose(np.asarray(logits[:, 0]), full[:, n + j], atol=1e-5)
    at_once, _ = step(model, prefix, cont, np.tile(np.arange(n, n + m), (3, 1)))
    np.testing.assert_allclose(np.asarray(at_once), full[:, n:], atol=1e-5)


def test_chunked_prefill_equals_unchunked(model_of, monkeypatch):
    model = model_of("llama-g2-narrow")
    prompt, probe = tokens(model, 300), tokens(model, 4, 1, seed=1)
    whole = prefill(model, prompt)
    chunks = []
    choose = dynsys.decode.engine.prefill_chunk
    monkeypatch.setattr(dynsys.decode.engine, "SCORE_BUDGET", 1)
    monkeypatch.setattr(dynsys.decode.engine, "prefill_chunk",
                        lambda *args: chunks.append(choose(*args)) or chunks[-1])
    chunked = prefill(model, prompt)
    assert chunks and max(chunks) <= bucket(300) // 8  # several chunks were used
    assert int(chunked.length) == int(whole.length) == 300
    for a, b in zip(whole.k + whole.v, chunked.k + chunked.v):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
    positions = np.full((4, 1), 300)
    np.testing.assert_allclose(np.asarray(step(model, chunked, probe, positions)[0]),
                               np.asarray(step(model, whole, probe, positions)[0]), atol=1e-5)


@pytest.mark.parametrize("name", ["llama-g4-tied-llama3", "neox-rot25"])
@pytest.mark.parametrize("tau", [0, 1, 300])
def test_shared_prefix_step_equals_ordinary_decode(name, tau, pair):
    """Prefix P, then row token v at position n + τ: the shared-prefix step equals a RowCache
    decode of P + [v] (and forward(P + [v]) when τ = 0) and transformers with position_ids."""
    model, hf = pair(name)
    n, v = 40, np.array([0, 3, 99, 200])
    prompt = tokens(model, n)
    ours = np.asarray(step(model, prefill(model, prompt), v[:, None], np.full((4, 1), n + tau))[0])
    np.testing.assert_allclose(ours, np.asarray(row_decode(model, prompt, v, n + tau)), atol=1e-5)
    ids = np.concatenate([np.tile(prompt, (4, 1)), v[:, None]], 1)
    if tau == 0:
        np.testing.assert_allclose(ours[:, 0], np.asarray(forward(model, ids))[:, -1], atol=1e-5)
    positions = np.tile(np.r_[np.arange(n), n + tau], (4, 1))
    np.testing.assert_allclose(ours[:, 0], hf_logits(hf, ids, positions)[:, -1], atol=1e-4)


def test_without_rope_logits_ignore_positions(model_of):
    model = model_of("llama-g1")
    nope = model.with_rope(False)
    prompt, v = tokens(model, 30), np.arange(5)[:, None]
    prefix = prefill(nope, prompt)
    at = [np.asarray(step(nope, prefix, v, np.full((5, 1), p))[0]) for p in (30, 31, 1500)]
    np.testing.assert_allclose(at[0], at[1], atol=1e-6)
    np.testing.assert_allclose(at[0], at[2], atol=1e-6)
    # positions with a gap give the same logits as 0..11; with RoPE they do not
    seq, moved = tokens(model, 2, 12), np.tile(np.r_[0:6, 500:506], (2, 1))
    np.testing.assert_allclose(np.asarray(step(nope, None, seq, moved)[0]),
                               np.asarray(forward(nope, seq)), atol=1e-6)
    assert not np.allclose(step(model, None, seq, moved)[0], forward(model, seq), atol=1e-3)


def test_ragged_prompts_equal_each_prompt_alone(pair):
    model, hf = pair("qwen2-g2-tied")
    prompts = [tokens(model, 5, seed=2), tokens(model, 30, seed=3), tokens(model, 18, seed=4)]
    together = np.asarray(generate(model, prompts, 24))
    np.testing.assert_array_equal(together[0], np.asarray(generate(model, prompts[:1], 24))[0])
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(together[i], hf_greedy(hf, p[None], 24)[0])


def test_segmented_generation_matches_transformers(pair):
    """A generation long enough for several decode loops over a growing cache
    (engine.decode_segments) gives transformers' greedy tokens and margins."""
    model, hf = pair("neox-rot50-tied-seq")
    new = 2 * dynsys.decode.engine.MIN_SEGMENT + 3
    assert len(dynsys.decode.engine.decode_segments(16, new)) == 2
    prompts = tokens(model, 2, 16, seed=6)
    ours, margins = generate(model, prompts, new, return_margins=True)
    theirs, scores = hf_greedy(hf, prompts, new, with_scores=True)
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    top2 = np.sort(scores, -1)[..., -2:]
    np.testing.assert_allclose(np.asarray(margins), top2[..., 1] - top2[..., 0], atol=1e-4)


def test_decode_segments_cover_every_step_once():
    for prompt, new in [(16, 1), (16, 2), (16, 64), (32, 129), (200, 256), (128, 1000)]:
        segments = dynsys.decode.engine.decode_segments(prompt, new)
        steps = [i for a, b, _ in segments for i in range(a, b)]
        assert steps == list(range(new - 1))
        assert all(size >= prompt + b for _, b, size in segments)
        assert segments[-1][2] == prompt + new
        assert len(segments) <= dynsys.decode.engine.DECODE_SEGMENTS


def test_generate_compiles_once_per_bucket(model_of):
    model = model_of("llama-g1")
    compiled = dynsys.decode.engine._generate._cache_size
    generate(model, tokens(model, 2, 10), 40)
    greedy = compiled()
    generate(model, tokens(model, 2, 14, seed=1), 40)  # same bucket (16)
    assert bucket(10) == bucket(14) and compiled() == greedy
    generate(model, tokens(model, 2, 10), 40, sampler=Sampler(temperature=0.7))
    sampled = compiled()
    generate(model, tokens(model, 2, 13), 40, sampler=Sampler(temperature=1.3), seed=4)
    assert compiled() == sampled >= 2  # temperatures are traced values; the counter counts


@pytest.mark.parametrize("name", ["qwen2-g1-llama3", "neox-rot50-tied-seq"])
def test_margins_match_transformers_scores(name, pair):
    model, hf = pair(name)
    prompts = tokens(model, 2, 16, seed=5)
    ours, margins = generate(model, prompts, 32, return_margins=True)
    theirs, scores = hf_greedy(hf, prompts, 32, with_scores=True)
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    top2 = np.sort(scores, -1)[..., -2:]
    np.testing.assert_allclose(np.asarray(margins), top2[..., 1] - top2[..., 0], atol=1e-4)
    assert margins.shape == (2, 32) and (np.asarray(margins) >= 0).all()



def test_non_finite_model_raises_instead_of_looping_on_token_0(model_of):
    """NaN logits have argmax 0: without the check the trace would be 0, 0, 0, ... — a loop."""
    model = model_of("llama-g1").copy()
    model.params["final_norm"]["scale"] = model.params["final_norm"]["scale"].at[0].set(np.nan)
    with pytest.raises(dynsys.NonFiniteError,
                       match=r"generate \(\[row, step\]\) at index \[0, 0\]"):
        generate(model, tokens(model, 2, 5), 8)


def test_overflow_late_in_generation_names_the_step(model_of):
    """A model finite on the prompt whose logits overflow once a chosen token is fed back."""
    model = model_of("llama-g1").copy()
    prompt = tokens(model, 1, 5)
    first = int(np.asarray(generate(model, prompt, 1))[0, 0])
    embedding = model.params["embed"]["embedding"]
    model.params["embed"]["embedding"] = embedding.at[first].set(np.inf)
    if first in prompt:
        pytest.skip("the first generated token occurs in the prompt")
    with pytest.raises(dynsys.NonFiniteError, match=r"index \[0, 1\]"):
        generate(model, prompt, 4)


def degenerate(model, how: str):
    """A copy of `model` whose logits are all exactly 0: a zero output head, or an embedding
    scaled to 1e22 (finite, but mean(x²) overflows inside every RMSNorm, whose output is 0)."""
    model = model.copy()
    if how == "zero head":
        model.params["lm_head"]["kernel"] = model.params["lm_head"]["kernel"] * 0
    else:
        model.params["embed"]["embedding"] = model.params["embed"]["embedding"] * 1e22
    return model


@pytest.mark.parametrize("how", ["zero head", "embedding 1e22"])
def test_constant_logits_raise_instead_of_looping_on_token_0(how, model_of):
    """All-equal logits have argmax 0 as NaN ones do: the trace 0, 0, 0, ... would read as a
    loop."""
    model = degenerate(model_of("llama-g1"), how)
    with pytest.raises(dynsys.NonFiniteError,
                       match=r"constant logits in generate \(\[row, step\]\) at index \[0, 0"):
        generate(model, tokens(model, 2, 5), 8)


def test_a_generation_larger_than_memory_is_refused_before_compiling(model_of, monkeypatch):
    """XLA failed with RESOURCE_EXHAUSTED (217 GB) after compiling."""
    model = model_of("llama-g1")
    monkeypatch.setattr(dynsys.decode.engine, "memory_bytes", lambda: 2**20)
    compiled = dynsys.decode.engine._generate._cache_size()
    with pytest.raises(ValueError, match=r"64 prompts of 16 tokens \(padded\) \+ 8 new tokens "
                                         r"need at least 0.0 GiB .* hold 0.0 GiB"):
        generate(model, tokens(model, 64, 5), 8)
    assert dynsys.decode.engine._generate._cache_size() == compiled


def test_max_new_tokens_must_be_a_true_integer(model_of):
    model = model_of("llama-g1")
    for bad in (True, 2.0, 0, -3):
        with pytest.raises(ValueError, match="max_new_tokens"):
            generate(model, tokens(model, 1, 5), bad)


RECORDED = ("embed_out", "heads", "mlp_hidden", "resid_post")


def test_recorded_generation_matches_teacher_forced_forward(model_of):
    """Entry [b, i] of a recorded site is its value at position p_b − 1 + i of a forward pass
    over prompt_b + tokens[b, :G − 1] (rows right-padded: causal attention ignores the
    padding; generate left-pads)."""
    import jax
    model = model_of("llama-g2-narrow")
    cfg, G = model.config, 6
    prompts = [tokens(model, 16, seed=6), tokens(model, 11, seed=7)]
    out, margins, recorded = generate(model, prompts, G, return_margins=True,
                                      record=(*RECORDED, "resid_post"))
    assert list(recorded) == list(RECORDED) and margins.shape == (2, G)
    n = 16 + G - 1
    seq = np.zeros((2, n), np.int32)
    for b, prompt in enumerate(prompts):
        seq[b, :len(prompt) + G - 1] = np.concatenate([prompt, np.asarray(out[b, :G - 1])])
    whole = jax.jit(dynsys.decode.engine.run, static_argnames=("cfg", "record"))(
        cfg, model.params, seq, np.tile(np.arange(n), (2, 1)), empty_rows(cfg, 2, n),
        np.ones((2, n), bool), None, record=True).recorded
    for b, prompt in enumerate(prompts):
        steps = slice(len(prompt) - 1, len(prompt) - 1 + G)
        np.testing.assert_allclose(np.asarray(recorded["embed_out"][b]),
                                   np.asarray(whole("embed_out")[b, steps]), atol=1e-5)
        for name in RECORDED[1:]:
            assert recorded[name].shape[:3] == (2, G, cfg.num_layers)
            for layer in range(cfg.num_layers):
                np.testing.assert_allclose(np.asarray(recorded[name][b, :, layer]),
                                           np.asarray(whole(name, layer)[b, steps]),
                                           rtol=1e-5, atol=1e-5, err_msg=f"{name} {layer}")


def lowered_generation(model, record):
    """The text of generate's program (a fresh jit each call, so patches take effect)."""
    import jax
    cfg, sampler = model.config, Sampler()
    prompts, mask = np.zeros((2, 16), np.int32), np.ones((2, 16), bool)
    generation = dynsys.decode.engine._generate.__wrapped__
    return jax.jit(lambda *args: generation(cfg, 4, sampler.kind, False, *args, record=record)
                   ).lower(model.params, prompts, mask, sampler.values, jax.random.PRNGKey(0),
                           None).as_text()


def test_generation_without_record_compiles_no_recording(model_of, monkeypatch):
    """record=() gives the program of a model with no sites and no recording code at all."""
    import dynsys.nn.transformer
    model = model_of("llama-g1")
    plain = lowered_generation(model, ())
    assert lowered_generation(model, ("mlp_hidden",)) != plain
    monkeypatch.setattr(dynsys.nn.transformer, "site", lambda module, name, x: x)
    monkeypatch.setattr(dynsys.decode.engine, "_recorded_sites", lambda *args: {})
    assert lowered_generation(model, ()) == plain


@pytest.mark.parametrize("record", [("resid_post", "mlp_gate"), "resid"])
def test_recording_an_unknown_site_raises_naming_it(model_of, record):
    model = model_of("llama-g1")
    bad = record[-1] if isinstance(record, tuple) else record
    with pytest.raises(ValueError, match=f"unknown site '{bad}'"):
        generate(model, tokens(model, 1, 5), 2, record=record)
