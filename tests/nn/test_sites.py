"""Named sites: recording and edits as data, at no cost when unused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_model, small

import dynsys.decode
import dynsys.decode.engine
import dynsys.nn
import dynsys.nn.transformer
from dynsys.decode import last_logits, logits, run, step
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import BLOCK_SITES, check_edits, edits
from dynsys.surgery import loop_margin

CFG = small("llama", vocab_size=64, num_kv_heads=2)
NEOX = small("gpt_neox", vocab_size=64, rotary_pct=0.5)


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=1)


def inputs(cfg, B=2, T=5, seed=0):
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    return tokens, np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))


def lowered(cfg, params, tokens, positions):
    def call(p):
        out = run(cfg, p, tokens, positions, empty_rows(cfg, *tokens.shape),
                  jnp.ones(tokens.shape, bool), None)
        return logits(cfg, p, out.hidden)
    return jax.jit(call).lower(params).as_text()


@pytest.mark.parametrize("cfg", [CFG, NEOX], ids=["llama", "neox"])
def test_unused_sites_leave_the_compiled_program_unchanged(cfg, monkeypatch):
    params = random_model(cfg, seed=2).params
    tokens, positions = inputs(cfg)
    with_sites = lowered(cfg, params, tokens, positions)
    monkeypatch.setattr(dynsys.nn.transformer, "site", lambda module, name, x: x)
    assert lowered(cfg, params, tokens, positions) == with_sites


def test_recorded_sites_are_the_model_s_own_values(model):
    tokens, positions = inputs(CFG)
    out = run(CFG, model.params, tokens, positions, empty_rows(CFG, *tokens.shape),
              jnp.ones(tokens.shape, bool), None, record=True)
    rec = out.recorded
    for layer in range(CFG.num_layers):
        for name in BLOCK_SITES:
            assert rec(name, layer).shape[:2] == tokens.shape
        np.testing.assert_allclose(rec("resid_mid", layer) + rec("mlp_out", layer),
                                   rec("resid_post", layer), rtol=1e-6, atol=1e-6)
    x_prev = rec("embed_out")
    np.testing.assert_allclose(rec("resid_mid", 0), x_prev + rec("attn_out", 0), atol=1e-6)
    final = dynsys.nn.norm_layer(CFG).apply({"params": model.params["final_norm"]},
                                               rec("resid_post", CFG.num_layers - 1))
    np.testing.assert_allclose(final, out.hidden, atol=1e-6)
    with pytest.raises(KeyError, match="not recorded"):
        run(CFG, model.params, tokens, positions, empty_rows(CFG, *tokens.shape),
            jnp.ones(tokens.shape, bool), None, record=True).recorded("query", 99)


def test_attention_weights_after_a_shared_prefix_list_its_slots_first(model):
    """Rows after a shared prefix (capacity 32, 20 tokens): "attn_weights" holds the prefix's
    32 slots (0 beyond its length), then the rows' own; they equal the last query's weights
    in a full forward of the prompt and the row's token."""
    n, B = 20, 3
    prompt, (v, _) = inputs(CFG, 1, n, seed=4)[0][0], inputs(CFG, B, 1, seed=5)
    prefix = dynsys.decode.prefill(model, prompt)
    assert prefix.capacity == 32
    after = run(CFG, model.params, v, np.full((B, 1), n), empty_rows(CFG, B, 1),
                jnp.ones((B, 1), bool), prefix, record=True).recorded
    seq = np.concatenate([np.tile(prompt, (B, 1)), v], 1)
    whole = run(CFG, model.params, seq, np.tile(np.arange(n + 1), (B, 1)),
                empty_rows(CFG, B, n + 1), jnp.ones((B, n + 1), bool), None, record=True).recorded
    for layer in range(CFG.num_layers):
        ours = np.asarray(after("attn_weights", layer))
        full = np.asarray(whole("attn_weights", layer))
        assert ours.shape == (B, 1, CFG.num_heads, 33)
        np.testing.assert_allclose(ours[..., :n], full[:, -1:, :, :n], atol=1e-6)
        np.testing.assert_array_equal(ours[..., n:32], 0)
        np.testing.assert_allclose(ours[..., 32], full[:, -1:, :, n], atol=1e-6)


def test_edits_equal_the_same_change_made_to_the_weights(model):
    """Zeroing layer 0's MLP branch = zero down projection; flipping neuron 7's activation in
    layer 1 = negating column 7 of its down projection."""
    tokens, positions = inputs(CFG)
    down0 = model.params["blocks_0"]["mlp"]["down"]["kernel"]
    down1 = model.params["blocks_1"]["mlp"]["down"]["kernel"]
    edited = model.copy()
    edited.params["blocks_0"]["mlp"]["down"]["kernel"] = down0 * 0
    edited.params["blocks_1"]["mlp"]["down"]["kernel"] = down1.at[:, 7].multiply(-1)
    flip = np.ones(CFG.intermediate_size, np.float32)
    flip[7] = -1
    tree = edits({("mlp_out", 0): {"scale": 0.0}, ("mlp_hidden", 1): {"scale": flip}},
                 CFG.num_layers)
    np.testing.assert_allclose(step(model, None, tokens, positions, edits=tree)[0],
                               step(edited, None, tokens, positions)[0], atol=1e-5)
    greedy = dynsys.decode.generate(model, tokens, 6, edits=tree).tokens
    np.testing.assert_array_equal(greedy, dynsys.decode.generate(edited, tokens, 6).tokens)


def test_new_edit_values_reuse_the_compiled_program(model):
    tokens, positions = inputs(CFG, seed=3)
    step(model, None, tokens, positions, edits=edits({("heads", 1): {"scale": 0.5}}, 2))
    compiled = dynsys.decode.engine._step._cache_size()
    a = step(model, None, tokens, positions, edits=edits({("heads", 1): {"scale": 0.25}}, 2))[0]
    b = step(model, None, tokens, positions, edits=edits({("heads", 1): {"scale": 2.0}}, 2))[0]
    assert dynsys.decode.engine._step._cache_size() == compiled
    assert not np.allclose(a, b)


def test_bad_edits_name_the_problem():
    with pytest.raises(ValueError, match="layer=5"):
        edits({("mlp_out", 5): {"scale": 0.0}}, 2)
    with pytest.raises(ValueError, match="unknown site 'mlp_gate'"):
        edits({("mlp_gate", 0): {"scale": 0.0}}, 2)
    with pytest.raises(ValueError, match="per layer"):
        edits({("mlp_out", None): {"scale": 0.0}}, 2)
    with pytest.raises(ValueError, match="'bias'"):
        edits({("mlp_out", 0): {"bias": 0.0}}, 2)
    with pytest.raises(ValueError, match="'attn_weights' is recorded only"):
        edits({("attn_weights", 0): {"scale": 0.0}}, 2)


@pytest.mark.parametrize("layer", [True, 0.0, "0"])
def test_layers_must_be_true_integers(layer):
    """True and 0.0 pass a range check but would build "blocks_True" / "blocks_0.0", which
    flax ignores: the edit would silently do nothing."""
    with pytest.raises(ValueError, match=f"layer={layer!r} of site 'mlp_hidden' must be an"):
        edits({("mlp_hidden", layer): {"scale": 0.0}}, 2)
    assert "blocks_1" in edits({("mlp_hidden", np.int64(1)): {"scale": 0.0}}, 2)


def hand_built(path: tuple[str, ...], leaf=None) -> dict:
    tree = leaf if leaf is not None else {"scale": 0.0, "shift": 0.0}
    for key in reversed(path):
        tree = {key: tree}
    return tree


@pytest.mark.parametrize("path, leaf, message", [
    (("blocks_0", "mlp", "mlp_hiden"), None, "blocks_0/mlp/mlp_hiden is not a site"),
    (("blocks_2", "mlp", "mlp_hidden"), None, "blocks_2 is not a site of this model"),
    (("blocks_0", "attn", "mlp_hidden"), None, "blocks_0/attn/mlp_hidden is not a site"),
    (("blocks_0", "mlp_hidden"), None, "blocks_0/mlp_hidden is not a site"),
    (("embed_out",), {"scale": 0.0}, "embed_out must hold 'scale' and 'shift'"),
    (("blocks_1", "mlp"), 0.0, "blocks_1/mlp is a float, not a mapping"),
    (("blocks_0", "attn", "attn_weights"), None, "'attn_weights' is recorded only"),
], ids=["misspelled", "missing-layer", "wrong-owner", "no-owner", "no-shift", "not-a-tree",
        "record-only"])
def test_hand_built_edit_trees_are_checked_against_the_model_s_sites(model, path, leaf,
                                                                      message):
    """Every entry point taking edits refuses a tree naming a site the model does not have
    (flax would ignore it: an ablation that never happened reads as "no effect"): generate,
    step, run (under every other model call: the shared-prefix step of the maps, the theory's
    probes) and surgery's loop margin."""
    tokens, positions = inputs(CFG)
    tree = hand_built(path, leaf)
    with pytest.raises(ValueError, match=message):
        step(model, None, tokens, positions, edits=tree)
    with pytest.raises(ValueError, match=message):
        dynsys.decode.generate(model, tokens, 4, edits=tree)
    with pytest.raises(ValueError, match=message):
        loop_margin(model, tokens, np.zeros((2, 4), np.int32), edits=tree)
    with pytest.raises(ValueError, match=message):  # the one call every model call goes through
        run(CFG, model.params, tokens, positions, empty_rows(CFG, *tokens.shape),
            jnp.ones(tokens.shape, bool), None, tree)
    with pytest.raises(ValueError, match=message):
        last_logits(CFG, model.params, dynsys.decode.prefill(model, tokens[0]), tokens[:, :1],
                    positions[:, :1] + 5, tree)
    good = hand_built(("blocks_1", "mlp", "mlp_hidden"))
    check_edits(good, CFG.num_layers)
