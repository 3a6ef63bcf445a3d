"""The Markov map against brute force (one full forward of P + [v] per v)."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dynsys as ds
from dynsys.checks import MIN_TEMPERATURE
from dynsys.dynamics import markov
from dynsys.dynamics.markov import lazy_orbit, markov_map, suffix_map
from dynsys.dynamics.orbits import orbit_of

CFG = ds.ModelConfig("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
                     num_heads=4, num_kv_heads=2, head_dim=8, max_position_embeddings=4096)


@pytest.fixture(scope="module")
def model():
    return ds.Model(CFG, ds.init_params(CFG, seed=3))


def brute_logits(model, prompt, suffix_rows, offset=0):
    """Logits after P + row for each row, by full forwards (offset 0) at positions 0..n+k−1."""
    assert offset == 0
    rows = np.concatenate([np.tile(prompt, (len(suffix_rows), 1)), suffix_rows], axis=1)
    return np.asarray(ds.forward(model, rows))[:, -1]


def test_full_map_equals_brute_force(model):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 50, seed=0)
    fmap = markov_map(model, prompt, chunk=24, progress=False)
    logits = brute_logits(model, prompt, np.arange(CFG.vocab_size)[:, None])
    np.testing.assert_array_equal(fmap.next, logits.argmax(-1))
    top2 = np.sort(logits, -1)[:, -2:]
    np.testing.assert_allclose(fmap.margin, top2[:, 1] - top2[:, 0], atol=1e-4)
    assert fmap.is_full


def test_ties_break_to_lowest_id():
    """Zero blocks, an embedding of ones, unit norm: every hidden state is all ones, and the
    head makes tokens 3 and 5 tie above the rest. (All logits equal is refused: see
    test_constant_logits_raise_instead_of_mapping_to_token_0.)"""
    cfg = CFG.replace(vocab_size=16)
    params = jax.tree_util.tree_map(np.zeros_like, ds.init_params(cfg, 0))
    params["embed"]["embedding"] = np.ones_like(params["embed"]["embedding"])
    params["final_norm"]["scale"] = np.ones_like(params["final_norm"]["scale"])
    head = np.full_like(params["lm_head"]["kernel"], -1.0)
    head[[3, 5]] = 1.0
    params["lm_head"]["kernel"] = head
    fmap = markov_map(ds.Model(cfg, params), [1, 2, 3], progress=False)
    np.testing.assert_array_equal(fmap.next, 3)
    np.testing.assert_array_equal(fmap.margin, 0)


def test_memory_map_equals_brute_force(model):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 40, seed=1)
    suffixes = np.random.default_rng(0).integers(0, CFG.vocab_size, (10, 3))
    got = suffix_map(model, prompt, suffixes, progress=False)
    np.testing.assert_array_equal(got.next, brute_logits(model, prompt, suffixes).argmax(-1))


def test_offset_matches_explicit_positions(model):
    """f_{P,τ}(v) is the step with v at position n+τ."""
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=2)
    tokens = np.arange(0, CFG.vocab_size, 5)
    fmap = markov_map(model, prompt, tokens, offset=7, progress=False)
    logits, _ = ds.step(model, ds.prefill(model, prompt), tokens[:, None],
                        np.full((len(tokens), 1), 37))
    np.testing.assert_array_equal(fmap.next, np.asarray(logits)[:, 0].argmax(-1))


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 200), st.integers(1, 40))
def test_without_rope_offset_does_not_matter(model, offset, seed):
    nope = model.with_rope(False)
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 20, seed=seed)
    a = markov_map(nope, prompt, offset=0, progress=False)
    b = markov_map(nope, prompt, offset=offset, progress=False)
    np.testing.assert_array_equal(a.next, b.next)
    np.testing.assert_array_equal(a.margin, b.margin)


def test_kernel_rows_are_top_k_softmax(model):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 25, seed=4)
    fmap = markov_map(model, prompt, kernel_k=5, temperature=0.7, progress=False)
    logits = brute_logits(model, prompt, np.arange(CFG.vocab_size)[:, None]) / 0.7
    dense = fmap.kernel.toarray()
    for v in range(0, CFG.vocab_size, 7):
        top = np.argsort(-logits[v], kind="stable")[:5]
        p = np.exp(logits[v, top] - logits[v, top].max())
        np.testing.assert_allclose(dense[v, top], p / p.sum(), atol=1e-5)
        assert np.count_nonzero(dense[v]) == 5
    np.testing.assert_allclose(fmap.kernel.sum(axis=1), 1.0, atol=1e-12)


def test_lazy_orbit_equals_orbit_of_full_map(model):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=5)
    fmap = markov_map(model, prompt, progress=False)
    for start in (0, 17, 63):
        assert lazy_orbit(model, prompt, start) == orbit_of(fmap.next, start)


def test_resume_recomputes_only_missing_chunks(model, tmp_path, monkeypatch):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=6)
    full = markov_map(model, prompt, chunk=16, progress=False, resume_dir=tmp_path)
    chunks = sorted(tmp_path.glob("chunk_*.npz"))
    assert len(chunks) == 4
    chunks[1].unlink()  # as if killed before this chunk was written
    chunks[3].unlink()
    calls = []
    original = markov._map_chunk
    monkeypatch.setattr(markov, "_map_chunk", lambda *a, **k: calls.append(1) or original(*a, **k))
    again = markov_map(model, prompt, chunk=16, progress=False, resume_dir=tmp_path)
    assert len(calls) == 2
    np.testing.assert_array_equal(again.next, full.next)
    other = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=7)
    with pytest.raises(ValueError, match="different computation"):
        markov_map(model, other, chunk=16, progress=False, resume_dir=tmp_path)


def test_bad_input(model):
    prompt = [1, 2, 3]
    for name in ("chunk", "kernel_k"):
        with pytest.raises(ValueError, match=f"{name}=2.5 must be an integer"):
            markov_map(model, prompt, progress=False, **{name: 2.5})
    with pytest.raises(ValueError, match="64"):
        markov_map(model, [1, 64, 2], progress=False)
    with pytest.raises(ValueError, match="empty"):
        markov_map(model, prompt, tokens=np.array([], np.int32), progress=False)
    with pytest.raises(ValueError, match="-1"):
        markov_map(model, prompt, tokens=[0, -1], progress=False)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        markov_map(model, prompt, offset=CFG.max_position_embeddings, progress=False)
    with pytest.raises(ValueError, match="offset"):
        markov_map(model, prompt, offset=-2, progress=False)


def test_resume_refuses_chunks_of_a_model_differing_only_in_its_lm_head(model, tmp_path):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=6)
    markov_map(model, prompt, chunk=16, progress=False, resume_dir=tmp_path)
    other = model.copy()
    other.params["lm_head"]["kernel"] = -other.params["lm_head"]["kernel"]
    with pytest.raises(ValueError, match="different computation"):
        markov_map(other, prompt, chunk=16, progress=False, resume_dir=tmp_path)


def test_prefix_or_map_of_another_prompt_or_model_is_refused(model):
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=6)
    other_prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=7)  # same length
    rows = np.arange(8)[:, None]
    with pytest.raises(ValueError, match="another model or prompt"):
        suffix_map(model, prompt, rows, prefix=ds.prefill(model, other_prompt), progress=False)
    with pytest.raises(ValueError, match="another model or prompt"):
        suffix_map(model, prompt, rows, prefix=ds.prefill(model.with_rope(False), prompt),
                   progress=False)
    with pytest.raises(ValueError, match="another model or prompt"):
        lazy_orbit(model, prompt, 3, prefix=ds.prefill(model, other_prompt))
    same = suffix_map(model, prompt, rows, prefix=ds.prefill(model, prompt), progress=False)
    np.testing.assert_array_equal(same.next, suffix_map(model, prompt, rows, progress=False).next)


def test_offsets_beyond_int32_positions_are_refused(model):
    """Positions are int32: a limit beyond 2**31 is refused with the config, so an offset of
    2**32 + 5 cannot pass the range check and wrap to the map at offset 5."""
    with pytest.raises(ValueError, match="max_position_embeddings=1000000000000 must be"):
        CFG.replace(max_position_embeddings=10**12)
    wide = ds.Model(CFG.replace(max_position_embeddings=2**31), model.params)
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 20, seed=2)
    with pytest.raises(ValueError, match="offset 4294967301 .* exceeds max_position_embed"):
        markov_map(wide, prompt, offset=2**32 + 5, progress=False)


def test_tiny_temperatures_are_refused_or_exact(model):
    """A subnormal temperature (flushed to 0) gave all-NaN kernel rows; the smallest normal
    one gives the greedy map as a kernel: probability 1 on f_P(v)."""
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 20, seed=2)
    with pytest.raises(ValueError, match="temperature=1e-40 must be"):
        markov_map(model, prompt, kernel_k=4, temperature=1e-40, progress=False)
    fmap = markov_map(model, prompt, kernel_k=4, temperature=MIN_TEMPERATURE,
                      progress=False)
    dense = fmap.kernel.toarray()
    np.testing.assert_array_equal(dense.argmax(1), fmap.next)
    np.testing.assert_allclose(dense.max(1), 1.0)


def test_constant_logits_raise_instead_of_mapping_to_token_0(model):
    """Every logit exactly 0 (an embedding scaled to 1e22 overflows inside the RMSNorms): the
    map would be v -> 0 for all v, one cycle, as `dynsys map` printed. (The model itself, at
    the HF initialisation with std 0.02, maps without a refusal in every other test.)"""
    broken = model.copy()
    broken.params["embed"]["embedding"] = broken.params["embed"]["embedding"] * 1e22
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=6)
    with pytest.raises(ds.NonFiniteError, match="constant logits in the map's rows 0"):
        markov_map(broken, prompt, progress=False)


def test_non_finite_model_raises_instead_of_mapping_to_token_0(model):
    broken = model.copy()
    broken.params["blocks_1"]["mlp"]["down"]["kernel"] = (
        broken.params["blocks_1"]["mlp"]["down"]["kernel"].at[0, 0].set(np.inf))
    prompt = ds.prompts.random_tokens(CFG.vocab_size, 30, seed=6)
    with pytest.raises(ds.NonFiniteError, match="non-finite or constant logits in the map"):
        markov_map(broken, prompt, progress=False)
