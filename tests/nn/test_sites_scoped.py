"""Scoped edits (steps, positions) and activation patching, against transformers with a hook
and against teacher-forced forward passes; new scope values reuse the compiled program."""

import numpy as np
import pytest
import torch

import dynsys.decode.generation
from dynsys.decode import generate, run, step
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import edits, patch


def tokens(model, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, model.config.vocab_size, shape)


def forced_greedy(model, prompt, trace, tree):
    """The greedy tokens of a teacher-forced forward pass over prompt + trace[:-1] under the
    (positions-scoped) edit `tree`: argmax at positions n − 1 .. n + G − 2."""
    seq = np.concatenate([prompt, trace[:-1]])[None]
    logits = np.asarray(step(model, None, seq, np.arange(seq.shape[1])[None], edits=tree)[0])
    return logits[0, len(prompt) - 1:].argmax(-1)


def test_an_edit_from_step_t_on_changes_only_those_steps_and_never_recompiles(model_of):
    """Tokens before step t are the unedited ones; every token is the teacher-forced argmax
    with the edit at the positions of steps >= t (p − 1 + i); t = 0, 4, 9 and two [B, G]
    masks run one compiled program each form."""
    model = model_of("llama-g1")
    L, G, n = model.config.num_layers, 12, 16
    prompts = tokens(model, 2, n, seed=3)
    plain = np.asarray(generate(model, prompts, G).tokens)
    compiled = dynsys.decode.generation._generate._cache_size
    counts = []
    for t in (0, 4, 9):
        tree = edits({("mlp_out", 1): {"scale": 0.0, "steps": t}}, L)
        out = np.asarray(generate(model, prompts, G, edits=tree).tokens)
        counts.append(compiled())
        np.testing.assert_array_equal(out[:, :t], plain[:, :t])
        scope = np.arange(n + G) >= n - 1 + t
        for b in range(2):
            forced = edits({("mlp_out", 1): {"scale": 0.0, "positions": scope}}, L)
            np.testing.assert_array_equal(out[b], forced_greedy(model, prompts[b], out[b],
                                                                forced))
        if t == 0:
            assert not np.array_equal(out, plain)
    assert counts[0] == counts[1] == counts[2]
    rng = np.random.default_rng(0)
    for _ in range(2):
        mask = rng.random((2, G)) < 0.5
        tree = edits({("mlp_out", 1): {"scale": 0.0, "steps": mask}}, L)
        out = np.asarray(generate(model, prompts, G, edits=tree).tokens)
        for b in range(2):
            scope = np.zeros(n + G, bool)
            scope[n - 1 + np.flatnonzero(mask[b])] = True
            forced = edits({("mlp_out", 1): {"scale": 0.0, "positions": scope}}, L)
            np.testing.assert_array_equal(out[b], forced_greedy(model, prompts[b], out[b],
                                                                forced))
    assert compiled() == counts[0] + 1  # the mask form: one more program, for both masks


def test_patching_the_last_block_s_output_gives_the_source_run(model_of):
    """Activation patching across prompts (ragged): the target run, with the source run's
    recorded resid_post of the last block written in at every step, has the source's tokens,
    log-probabilities and recorded values, to 1e-5."""
    model = model_of("llama-g2-narrow")
    L, G = model.config.num_layers, 10
    source_prompts = [tokens(model, 12, seed=1), tokens(model, 16, seed=2)]
    target_prompts = [tokens(model, 12, seed=3), tokens(model, 16, seed=4)]
    source = generate(model, source_prompts, G, top_logprobs=4, record="resid_post")
    target = generate(model, target_prompts, G, top_logprobs=4, record="resid_post")
    assert not np.array_equal(np.asarray(source.tokens), np.asarray(target.tokens))
    patched = generate(model, target_prompts, G, top_logprobs=4, record="resid_post",
                       edits=patch(source.recorded, [("resid_post", L - 1)], L))
    np.testing.assert_array_equal(np.asarray(patched.tokens), np.asarray(source.tokens))
    np.testing.assert_allclose(np.asarray(patched.logprobs), np.asarray(source.logprobs),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(patched.recorded["resid_post"][:, :, L - 1]),
                               np.asarray(source.recorded["resid_post"][:, :, L - 1]),
                               atol=1e-5)


def test_patching_reproduces_a_step_scoped_edit(model_of):
    """The values an edit at steps >= 3 gave an early site, patched into an unedited run of
    the same prompts from step 3 on, give that edited run: tokens, log-probabilities and a
    later site, to 1e-5."""
    model = model_of("llama-g2-narrow")
    L, G = model.config.num_layers, 10
    prompts = [tokens(model, 9, seed=5), tokens(model, 16, seed=6)]
    record = ("mlp_out", "resid_post")
    edited = generate(model, prompts, G, top_logprobs=3, record=record,
                      edits=edits({("mlp_out", 0): {"scale": 0.1, "steps": 3}}, L))
    plain = generate(model, prompts, G, top_logprobs=3, record=record)
    patched = generate(model, prompts, G, top_logprobs=3, record=record,
                       edits=patch(edited.recorded, [("mlp_out", 0)], L, steps=3))
    np.testing.assert_array_equal(np.asarray(patched.tokens), np.asarray(edited.tokens))
    for got, want in ((patched.logprobs, edited.logprobs),
                      (patched.recorded["resid_post"], edited.recorded["resid_post"])):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert not np.allclose(np.asarray(plain.recorded["resid_post"][:, 3:]),
                           np.asarray(edited.recorded["resid_post"][:, 3:]), atol=1e-3)


@pytest.mark.parametrize("name", ["llama-g4-tied-llama3", "neox-rot25"])
def test_patching_one_position_equals_transformers_with_a_hook(name, pair):
    """Causal tracing in one forward pass: block 0's output at position j of the corrupted
    sequence replaced by the clean one's (a "positions" scope and "values"), equal to
    transformers with a forward hook on its layer 0 doing the same, to 1e-4."""
    model, hf = pair(name)
    cfg, (B, T), j = model.config, (2, 10), 4
    clean, corrupted = tokens(model, B, T, seed=7), tokens(model, B, T, seed=8)
    positions = np.broadcast_to(np.arange(T), (B, T))
    recorded = run(cfg, model.params, clean, positions, empty_rows(cfg, B, T),
                   np.ones((B, T), bool), None, record=True).recorded("resid_post", 0)
    tree = edits({("resid_post", 0): {"scale": 0.0, "values": recorded,
                                      "positions": np.arange(T) == j}}, cfg.num_layers)
    ours = np.asarray(step(model, None, corrupted, positions, edits=tree)[0])
    with torch.no_grad():
        clean_hidden = hf(torch.as_tensor(clean), output_hidden_states=True).hidden_states[1]

    def hook(module, args, output):
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        hidden[:, j] = clean_hidden[:, j]
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = hf.base_model.layers[0].register_forward_hook(hook)
    try:
        with torch.no_grad():
            theirs = hf(torch.as_tensor(corrupted)).logits.numpy()
    finally:
        handle.remove()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    unpatched = np.asarray(step(model, None, corrupted, positions)[0])
    np.testing.assert_allclose(ours[:, :j], unpatched[:, :j], atol=1e-5)
    assert not np.allclose(ours[:, j:], unpatched[:, j:], atol=1e-3)


def test_bad_scopes_name_the_problem(model_of):
    model = model_of("llama-g1")
    L, prompts = model.config.num_layers, tokens(model, 2, 8)
    cases = [({"steps": np.ones(5, bool)}, r"'steps' has shape \(5,\)"),
             ({"steps": np.ones((3, 4), bool)}, r"'steps' has shape \(3, 4\)"),
             ({"positions": np.ones(4)}, "positions must be a bool mask"),
             ({"positions": np.ones((3, 9), bool)}, r"'positions' has shape \(3, 9\)"),
             ({"values": np.zeros((2, 3, 64))}, r"'values' has shape \(2, 3, 64\)"),
             ({"steps": -1}, "steps=-1")]
    for scope, message in cases:
        with pytest.raises(ValueError, match=message):
            generate(model, prompts, 4, edits=edits({("mlp_out", 0): scope}, L))
    steps_only = edits({("mlp_out", 0): {"steps": 2}}, L)
    with pytest.raises(ValueError, match=r"optionally \['positions', 'values'\]"):
        step(model, None, prompts, np.broadcast_to(np.arange(8), (2, 8)), edits=steps_only)
    with pytest.raises(ValueError, match="'unknown' was not recorded"):
        patch({"resid_post": np.zeros((2, 4, L, 64))}, [("unknown", 0)], L)
