"""The ablation sweep against models built without the branch (zero) or with a constant branch
(mean), one compile for the whole sweep, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from surgery_helpers import BOTH, CFG, G, identity_tree, with_params

import dynsys.decode.engine
from dynsys.decode import generate, run
from dynsys.nn.cache import empty_rows
from dynsys.nn.params import param_path, part
from dynsys.surgery import ablation_sweep, component_means, looping

pytest_plugins = ["surgery_fixtures"]  # model, prompts


@pytest.fixture(scope="module")
def sweep(model, prompts):
    before = dynsys.decode.generation._generate._cache_size()
    result = ablation_sweep(model, prompts, G, BOTH, "zero")
    assert dynsys.decode.generation._generate._cache_size() <= before + 1  # one compile serves all
    return result


def test_zero_sweep_equals_models_built_without_the_branch(model, prompts, sweep):
    rows = {(r.layer, r.component): r for r in sweep.rows}
    assert list(rows) == [(i, c) for i in range(CFG.num_layers) for c in BOTH]
    same = identity_tree()
    np.testing.assert_array_equal(sweep.base.traces, generate(model, prompts, G, edits=same).tokens)
    zero = jnp.zeros_like
    down = model.params["blocks_1"]["mlp"]["down"]
    no_mlp = with_params(model, {("blocks_1", "mlp", "down"): {"kernel": zero(down["kernel"]),
                                                               "bias": zero(down["bias"])}})
    o = model.params["blocks_0"]["attn"]["o"]
    no_attn = with_params(model, {("blocks_0", "attn", "o"): {"kernel": zero(o["kernel"]),
                                                              "bias": zero(o["bias"])}})
    for key, built in [((1, "mlp_out"), no_mlp), ((0, "attn_out"), no_attn)]:
        np.testing.assert_array_equal(rows[key].result.traces,
                                      generate(built, prompts, G, edits=same).tokens)
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
    row = next(r for r in sweep.rows if r.component == "mlp_out")
    down = part(model.params, 1, "mlp")["down"]
    constant = with_params(model, {param_path(1, "mlp", "down"): {
        "kernel": jnp.zeros_like(down["kernel"]), "bias": jnp.asarray(mu)}})
    np.testing.assert_array_equal(row.result.traces,
                                  generate(constant, prompts, G, edits=identity_tree()).tokens)


def test_bad_input_names_the_value(model, prompts):
    with pytest.raises(ValueError, match="G=1"):
        ablation_sweep(model, prompts, 1)
    with pytest.raises(ValueError, match="layer=2"):
        ablation_sweep(model, prompts, G, layers=[2])
    with pytest.raises(ValueError, match="'mlp_gate'.*gpt_neox"):
        ablation_sweep(model, prompts, G, components=("mlp_gate",))
    with pytest.raises(ValueError, match="mode='median'"):
        ablation_sweep(model, prompts, G, mode="median")
