import numpy as np
import pytest
from conftest import hf_attentions, hf_greedy, hf_logits

import dynsys
import dynsys.decode.engine
import dynsys.decode.generation
from dynsys.decode import forward, generate, prefill, step
from dynsys.decode.sampling import Sampler
from dynsys.nn.cache import bucket, empty_rows


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
    together = np.asarray(generate(model, prompts, 24).tokens)
    np.testing.assert_array_equal(together[0], generate(model, prompts[:1], 24).tokens[0])
    for i, p in enumerate(prompts):
        np.testing.assert_array_equal(together[i], hf_greedy(hf, p[None], 24)[0])


def test_segmented_generation_matches_transformers(pair):
    """A generation long enough for several decode loops over a growing cache
    (generation.decode_segments) gives transformers' greedy tokens and margins."""
    model, hf = pair("neox-rot50-tied-seq")
    new = 2 * dynsys.decode.generation.MIN_SEGMENT + 3
    assert len(dynsys.decode.generation.decode_segments(16, new)) == 2
    prompts = tokens(model, 2, 16, seed=6)
    out = generate(model, prompts, new, return_margins=True)
    ours, margins = out.tokens, out.margins
    theirs, scores = hf_greedy(hf, prompts, new, with_scores=True)
    np.testing.assert_array_equal(np.asarray(ours), theirs)
    top2 = np.sort(scores, -1)[..., -2:]
    np.testing.assert_allclose(np.asarray(margins), top2[..., 1] - top2[..., 0], atol=1e-4)


def test_decode_segments_cover_every_step_once():
    for prompt, new in [(16, 1), (16, 2), (16, 64), (32, 129), (200, 256), (128, 1000)]:
        segments = dynsys.decode.generation.decode_segments(prompt, new)
        steps = [i for a, b, _ in segments for i in range(a, b)]
        assert steps == list(range(new - 1))
        assert all(size >= prompt + b for _, b, size in segments)
        assert segments[-1][2] == prompt + new
        assert len(segments) <= dynsys.decode.generation.DECODE_SEGMENTS


def test_generate_compiles_once_per_bucket(model_of):
    model = model_of("llama-g1")
    compiled = dynsys.decode.generation._generate._cache_size
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
    out = generate(model, prompts, 32, return_margins=True)
    ours, margins = out.tokens, out.margins
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
    first = int(np.asarray(generate(model, prompt, 1).tokens)[0, 0])
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
    compiled = dynsys.decode.generation._generate._cache_size()
    with pytest.raises(ValueError, match=r"64 prompts of 16 tokens \(padded\) \+ 8 new tokens "
                                         r"need at least 0.0 GiB .* hold 0.0 GiB"):
        generate(model, tokens(model, 64, 5), 8)
    assert dynsys.decode.generation._generate._cache_size() == compiled


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
    generation = generate(model, prompts, G, return_margins=True,
                          record=(*RECORDED, "resid_post"))
    out, margins, recorded = generation.tokens, generation.margins, generation.recorded
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
    generation = dynsys.decode.generation._generate.__wrapped__
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
    for module in (dynsys.decode.engine, dynsys.decode.generation):
        monkeypatch.setattr(module, "recorded_sites", lambda *args: {})
    assert lowered_generation(model, ()) == plain
    # nor any attention weights: an attend that never computes them gives the same program
    attend = dynsys.nn.transformer.attend
    monkeypatch.setattr(dynsys.nn.transformer, "attend", lambda q, segments, weights: attend(
        q, segments))
    assert lowered_generation(model, ()) == plain


@pytest.mark.parametrize("record", [("resid_post", "mlp_gate"), "resid"])
def test_recording_an_unknown_site_raises_naming_it(model_of, record):
    model = model_of("llama-g1")
    bad = record[-1] if isinstance(record, tuple) else record
    with pytest.raises(ValueError, match=f"unknown site '{bad}'"):
        generate(model, tokens(model, 1, 5), 2, record=record)


@pytest.mark.parametrize("name, new", [("llama-g4-tied-llama3", 6), ("qwen2-g2-tied", 6),
                                       ("neox-rot50-tied-seq", 131)])
def test_recorded_attention_weights_of_decode_steps_equal_transformers_eager(name, new, pair):
    """Ragged (left-padded) prompts: entry [b, i] of recorded["attn_weights"] is transformers'
    eager attention row of the query at slot W − 1 + i of the same left-padded sequence
    (prompt, then the generated tokens; attention_mask and position_ids), over all W + G
    slots; 131 tokens take several decode segments, whose weights are padded to W + G."""
    model, hf = pair(name)
    cfg = model.config
    prompts = [tokens(model, 16, seed=2), tokens(model, 9, seed=3)]
    generation = generate(model, prompts, new, record="attn_weights")
    out, recorded = generation.tokens, generation.recorded
    ours = np.asarray(recorded["attn_weights"])  # [B, G, L, N, W + G]
    W = ours.shape[-1] - new
    assert W == 16 and ours.shape == (2, new, cfg.num_layers, cfg.num_heads, W + new)
    seq, mask = np.zeros((2, W + new), np.int64), np.zeros((2, W + new), bool)
    for b, prompt in enumerate(prompts):
        seq[b, W - len(prompt):] = np.concatenate([prompt, np.asarray(out[b])])
        mask[b, W - len(prompt):] = True
    theirs = hf_attentions(hf, seq, mask)
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(ours[1, ..., :W - 9], 0)  # left padding
    for layer in range(cfg.num_layers):
        rows = theirs[layer][:, :, W - 1:W - 1 + new].transpose(0, 2, 1, 3)  # [B, G, N, W + G]
        np.testing.assert_allclose(ours[:, :, layer], rows, atol=1e-5, err_msg=f"layer {layer}")


def test_key_bias_scales_the_earlier_generated_keys_weights(model_of):
    """In layer 0, whose scores the bias cannot change, + b on slots [first, own slot) is the
    unbiased weights with those keys scaled by λ = e^b and renormalised; the prompt's keys and
    each query's own key keep theirs. Later layers change; b = 0 changes nothing."""
    import jax.numpy as jnp
    model = model_of("llama-g2-narrow")
    cfg, (B, T), first = model.config, (2, 20), 12
    seq = tokens(model, B, T, seed=5)

    def weights(key_bias, layer):
        out = dynsys.decode.engine.run(cfg, model.params, seq, np.tile(np.arange(T), (B, 1)),
                                       empty_rows(cfg, B, T), np.ones((B, T), bool), None,
                                       record=True, key_bias=key_bias)
        return np.asarray(out.recorded("attn_weights", layer), np.float64)  # [B, T, N, T]

    plain = weights(None, 0)
    slot = np.arange(T)
    earlier = (slot[None, :] >= first) & (slot[None, :] < slot[:, None])  # [query, key]
    for b in (0.0, np.log(0.25), -np.inf):
        scaled = plain * np.where(earlier, np.exp(b), 1.0)[None, :, None, :]
        np.testing.assert_allclose(weights((first, jnp.float32(b)), 0),
                                   scaled / scaled.sum(-1, keepdims=True), atol=1e-6)
    np.testing.assert_array_equal(weights((first, jnp.float32(0.0)), 1), weights(None, 1))
    assert not np.allclose(weights((first, jnp.float32(-1.0)), 1), weights(None, 1), atol=1e-4)


@pytest.mark.parametrize("rope", [True, False], ids=["rope", "nope"])
def test_forced_markov_decoding_iterates_the_position_exact_map(rope, model_of):
    """generated_key_bias = −inf (λ = 0): each generated token attends to the prompt and to
    itself, so greedy decoding is x_{t+1} = f_{P,t−1}(x_t), the map with x_t alone after P at
    its real position n + t − 1 (suffix_map, offset t − 1), token for token; x_1 is the greedy
    token after P. Ragged prompts (left padding) included."""
    from dynsys.dynamics import suffix_map
    model = model_of("llama-g2-narrow").with_rope(rope)
    G = 12
    prompts = [tokens(model, 10, seed=8), tokens(model, 13, seed=9), tokens(model, 16, seed=10)]
    forced = np.asarray(generate(model, prompts, G, generated_key_bias=-np.inf).tokens)
    for b, prompt in enumerate(prompts):
        assert forced[b, 0] == np.argmax(np.asarray(forward(model, prompt[None]))[0, -1])
        f = suffix_map(model, prompt, forced[b, :-1, None], offset=np.arange(G - 1),
                       progress=False)
        np.testing.assert_array_equal(forced[b, 1:], f.next)
    assert not np.array_equal(forced, np.asarray(generate(model, prompts, G).tokens))


def test_generated_key_bias_zero_is_normal_decoding_and_all_values_share_one_compile(model_of):
    """b = 0 gives normal decoding's tokens and margins bit for bit, greedy and sampled; new
    values of b (λ = 0.5, 0.1, 0) reuse the compiled program."""
    model = model_of("llama-g1")
    prompts = [tokens(model, 10, seed=3), tokens(model, 16, seed=4)]
    for sampler in (Sampler(), Sampler(temperature=0.7, top_p=0.9)):
        plain = generate(model, prompts, 20, sampler=sampler, seed=5, return_margins=True)
        zero = generate(model, prompts, 20, sampler=sampler, seed=5, return_margins=True,
                        generated_key_bias=0.0)
        for a, b in ((plain.tokens, zero.tokens), (plain.margins, zero.margins)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    compiled = dynsys.decode.generation._generate._cache_size()
    traces = [np.asarray(generate(model, prompts, 20, sampler=sampler, seed=5,
                                  return_margins=True, generated_key_bias=b).tokens)
              for b in (np.log(0.5), np.log(0.1), -np.inf)]
    assert dynsys.decode.generation._generate._cache_size() == compiled
    assert not np.array_equal(traces[0], traces[2])


@pytest.mark.parametrize("bias", [np.nan, np.inf, 1e39, "0", True, [0.0], np.zeros(2), 1j])
def test_a_bad_generated_key_bias_is_refused_naming_it(bias, model_of):
    model = model_of("llama-g1")
    with pytest.raises(ValueError, match="generated_key_bias="):
        generate(model, tokens(model, 1, 5), 2, generated_key_bias=bias)


def test_dry_breaker_counts_share_one_compile(model_of):
    """Breakers are padded to a bucket: 1, 2 and 3 of them compile one program (that the
    padding is no token: test_sampling's DRY brute force, through Sampler.values)."""
    model = model_of("llama-g1")
    prompts = tokens(model, 2, 12)
    dry = dict(dry_multiplier=2.0, dry_allowed_length=1)
    generate(model, prompts, 20, sampler=Sampler(**dry, dry_sequence_breakers=(7,)))
    compiled = dynsys.decode.generation._generate._cache_size()
    for breakers in ((7, 8), (7, 8, 9)):
        generate(model, prompts, 20, sampler=Sampler(**dry, dry_sequence_breakers=breakers))
    assert dynsys.decode.generation._generate._cache_size() == compiled
