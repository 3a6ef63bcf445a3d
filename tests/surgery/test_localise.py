"""Localising loops: the ablation sweep against models built without the branch, the
attribution gradient against finite differences and generation's own margins, a planted loop
neuron found by both rankings and confirmed by generation, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CONFIGS, random_model

import dynsys.decode.engine
from dynsys.decode import generate, run
from dynsys.nn import Model, norm_layer
from dynsys.nn.cache import empty_rows
from dynsys.nn.sites import edits
from dynsys.surgery.localise import (ablation_sweep, component_means, confirm, loop_margin,
                                     looping, neuron_attribution)

CFG = CONFIGS["neox-rot25"]  # GELU MLP and biases: a branch is removed by zeroing weights
G = 16
BOTH = ("attn_out", "mlp_out")
PLANT_TOKEN, PLANT_NEURON = 42, 7


@pytest.fixture(scope="module")
def model():
    return random_model(CFG, seed=3)


@pytest.fixture(scope="module")
def prompts():
    """Equal lengths 12 (left-padded to the bucket 16, so padding is exercised)."""
    return np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 12)).astype(np.int32)


def identity_tree():
    """Identity edits of the same structure as the sweep's: the same compiled program."""
    return edits({(c, i): {"scale": 1.0, "shift": np.zeros(CFG.hidden_size, np.float32)}
                  for c in BOTH for i in range(CFG.num_layers)}, CFG.num_layers)


def with_params(model, changes):
    """The model with params[block][module][name] replaced."""
    new = model.copy()
    for (block, module, name), value in changes.items():
        new.params[block][module][name] = value
    return new


@pytest.fixture(scope="module")
def sweep(model, prompts):
    before = dynsys.decode.engine._generate._cache_size()
    result = ablation_sweep(model, prompts, G, BOTH, "zero")
    assert dynsys.decode.engine._generate._cache_size() <= before + 1  # one compile serves all
    return result


def test_zero_sweep_equals_models_built_without_the_branch(model, prompts, sweep):
    rows = {(r.layer, r.component): r for r in sweep.rows}
    assert list(rows) == [(i, c) for i in range(CFG.num_layers) for c in BOTH]
    same = identity_tree()
    np.testing.assert_array_equal(sweep.base.traces, generate(model, prompts, G, edits=same))
    zero = jnp.zeros_like
    down = model.params["blocks_1"]["mlp"]["down"]
    no_mlp = with_params(model, {("blocks_1", "mlp", "down"): {"kernel": zero(down["kernel"]),
                                                               "bias": zero(down["bias"])}})
    o = model.params["blocks_0"]["attn"]["o"]
    no_attn = with_params(model, {("blocks_0", "attn", "o"): {"kernel": zero(o["kernel"]),
                                                              "bias": zero(o["bias"])}})
    for key, built in [((1, "mlp_out"), no_mlp), ((0, "attn_out"), no_attn)]:
        np.testing.assert_array_equal(rows[key].result.traces,
                                      generate(built, prompts, G, edits=same))
    for r in sweep.rows:
        assert r.change == pytest.approx(r.result.rate - sweep.base.rate)
        assert r.change_interval[0] <= r.change <= r.change_interval[1]
        assert r.result.interval[0] <= r.result.rate <= r.result.interval[1]
    table = sweep.table()
    assert len(table) == 1 + 2 * CFG.num_layers and table[0]["component"] == "none"
    assert table[0]["loops"] == looping(sweep.base.traces).sum()


def test_mean_sweep_equals_a_constant_branch(model, prompts):
    @jax.jit
    def recorded(params, tokens):
        B, T = tokens.shape
        pos = jnp.broadcast_to(jnp.arange(T), (B, T))
        out = run(CFG, params, tokens, pos, empty_rows(CFG, B, T), jnp.ones((B, T), bool),
                  None, record=True)
        return out.recorded("mlp_out", 1)

    mu = np.asarray(recorded(model.params, prompts)).mean(axis=(0, 1))  # no padding here
    np.testing.assert_allclose(component_means(model, prompts, ("mlp_out",), [1])["mlp_out", 1],
                               mu, rtol=1e-5, atol=1e-6)
    sweep = ablation_sweep(model, prompts, G, BOTH, "mean", layers=[1])
    row = [r for r in sweep.rows if r.component == "mlp_out"][0]
    down = model.params["blocks_1"]["mlp"]["down"]
    constant = with_params(model, {("blocks_1", "mlp", "down"): {
        "kernel": jnp.zeros_like(down["kernel"]), "bias": jnp.asarray(mu)}})
    np.testing.assert_array_equal(row.result.traces,
                                  generate(constant, prompts, G, edits=identity_tree()))


@pytest.fixture(scope="module")
def greedy(model, prompts):
    traces, margins = generate(model, prompts, G, return_margins=True)
    return np.asarray(traces), np.asarray(margins)


def scaled(neuron, factor):
    """Edits scaling one mlp_hidden neuron by `factor` (the structure confirm uses)."""
    scales = np.ones((CFG.num_layers, CFG.intermediate_size), np.float32)
    scales[neuron] = factor
    return edits({("mlp_hidden", i): {"scale": scales[i], "shift": 0.0}
                  for i in range(CFG.num_layers)}, CFG.num_layers)


def test_attribution_is_the_derivative_of_the_loop_margin(model, prompts, greedy):
    traces, margins = greedy
    att = neuron_attribution(model, prompts, traces)
    assert att.used.size >= 2 and (att.period > 0).all()
    np.testing.assert_array_equal(att.used, np.flatnonzero(looping(traces)))
    # teacher-forced margins are generation's own (KV cache, left padding)
    expected = [margins[b, o + p:].sum() for b, o, p in zip(att.used, att.onset, att.period)]
    np.testing.assert_allclose(att.margin, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loop_margin(model, prompts, traces)[att.used], att.margin,
                               rtol=1e-5, atol=1e-5)
    # a_{l,j} = d/dα Σ_b M_b with neuron (l, j) scaled by α, at α = 1 (central differences)
    used = prompts[att.used], traces[att.used]
    ranking = att.ranked()
    eps = 1e-2
    for layer, neuron, score in [*ranking[:2], ranking[-1], ranking[len(ranking) // 2]]:
        up, down = (loop_margin(model, *used, scaled((layer, neuron), 1 + s * eps)).sum()
                    for s in (1, -1))
        assert (up - down) / (2 * eps) == pytest.approx(score, rel=1e-2, abs=2e-3)
    assert ranking[0].score >= ranking[1].score >= ranking[-1].score
    assert len(ranking) == CFG.num_layers * CFG.intermediate_size


def plant(model):
    """Neuron 7 of layer 0 fires on token 42 alone (its up row is the normalised input of 42,
    bias −8) and its down column pushes 42's logit: a self-sustaining unigram loop."""
    p = model.copy().params
    x = norm_layer(CFG).apply({"params": p["blocks_0"]["norm2"]},
                              p["embed"]["embedding"][PLANT_TOKEN])
    mlp = p["blocks_0"]["mlp"]
    mlp["up"] = {"kernel": mlp["up"]["kernel"].at[PLANT_NEURON].set(2 * x / jnp.linalg.norm(x)),
                 "bias": mlp["up"]["bias"].at[PLANT_NEURON].set(-8.0)}
    push = p["lm_head"]["kernel"][PLANT_TOKEN] * p["final_norm"]["scale"]
    push = push - push.mean()
    mlp["down"] = {"kernel": mlp["down"]["kernel"].at[:, PLANT_NEURON].set(
        5 * push / jnp.linalg.norm(push)), "bias": mlp["down"]["bias"]}
    return Model(CFG, p)


def test_a_planted_loop_neuron_is_ranked_first_and_confirmed(model, prompts):
    planted = plant(model)
    prompts = prompts.copy()
    prompts[:, -1] = PLANT_TOKEN
    traces, _ = generate(planted, prompts, G, return_margins=True)
    assert (np.asarray(traces) == PLANT_TOKEN).all()
    att = neuron_attribution(planted, prompts, traces)
    for method in ("grad_x_act", "onset_diff"):
        assert att.ranked(method, 1)[0][:2] == (0, PLANT_NEURON), method
    found = confirm(planted, prompts, G, att.ranked(top=4), "zero", ks=(1, 4))
    assert found.before.rate == 1.0
    assert found.rows[0].neurons == ((0, PLANT_NEURON),)
    assert found.rows[0].change < 0 and found.rows[0].result.rate < 1.0
    assert not (found.rows[0].result.traces == PLANT_TOKEN).all(axis=1).any()
    assert [r["k"] for r in found.table()] == [1, 4]
    flipped = confirm(planted, prompts, G, [(0, PLANT_NEURON)], "flip", ks=(1,)).rows[0]
    assert flipped.op == "flip" and flipped.change < 0
    assert (flipped.result.traces[:, 0] != PLANT_TOKEN).all()  # 42 now pushes 42 away


def test_bad_input_names_the_value(model, prompts):
    with pytest.raises(ValueError, match="G=1"):
        ablation_sweep(model, prompts, 1)
    with pytest.raises(ValueError, match="layer=2"):
        ablation_sweep(model, prompts, G, layers=[2])
    with pytest.raises(ValueError, match="'mlp_gate'.*gpt_neox"):
        ablation_sweep(model, prompts, G, components=("mlp_gate",))
    with pytest.raises(ValueError, match="mode='median'"):
        ablation_sweep(model, prompts, G, mode="median")
    with pytest.raises(ValueError, match="neuron=128"):
        confirm(model, prompts, G, [(0, 128)])
    with pytest.raises(ValueError, match="layer=-1"):
        confirm(model, prompts, G, [(-1, 0)])
    with pytest.raises(ValueError, match="k=3"):
        confirm(model, prompts, G, [(0, 1), (1, 2)], ks=(3,))
    with pytest.raises(ValueError, match="op='double'"):
        confirm(model, prompts, G, [(0, 1)], op="double")
    with pytest.raises(ValueError, match="G=1"):
        neuron_attribution(model, prompts, np.zeros((8, 1), np.int32))
    with pytest.raises(ValueError, match="none of the 8 traces loops"):
        neuron_attribution(model, prompts, np.tile(np.arange(G, dtype=np.int32), (8, 1)))
    with pytest.raises(ValueError, match="8 prompts but 2 traces"):
        neuron_attribution(model, prompts, np.zeros((2, G), np.int32))
