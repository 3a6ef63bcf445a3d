"""Confirmation: a planted loop neuron, ranked by attribution, zeroed or flipped in
generation breaks its loop; edit trees of one structure; bad input."""

import jax
import numpy as np
import pytest
from surgery_helpers import CFG, PLANT_NEURON, PLANT_TOKEN, G, plant

from dynsys.decode import generate
from dynsys.surgery import confirm, neuron_attribution, neuron_edits

pytest_plugins = ["surgery_fixtures"]  # model, prompts


def test_a_planted_loop_neuron_is_ranked_first_and_confirmed(model, prompts):
    planted = plant(model)
    prompts = prompts.copy()
    prompts[:, -1] = PLANT_TOKEN
    traces = generate(planted, prompts, G).tokens
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


def test_neuron_edits_scale_the_chosen_neurons_only():
    tree = neuron_edits(CFG, [(0, 3), (1, 5)], "flip")
    empty = neuron_edits(CFG, [], "zero")
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(empty)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]
    scales = [x for x in leaves if x.shape == (CFG.intermediate_size,)]
    assert len(scales) == CFG.num_layers
    assert scales[0][3] == -1 and scales[1][5] == -1
    assert (np.delete(scales[0], 3) == 1).all() and (np.delete(scales[1], 5) == 1).all()


def test_bad_input_names_the_value(model, prompts):
    with pytest.raises(ValueError, match="G=1"):
        confirm(model, prompts, 1, [(0, 1)])
    with pytest.raises(ValueError, match=r"index 128 is outside \[0, "):
        confirm(model, prompts, G, [(0, 128)])
    with pytest.raises(ValueError, match=r"layer -1 is outside \[0, "):
        confirm(model, prompts, G, [(-1, 0)])
    with pytest.raises(ValueError, match="k=3"):
        confirm(model, prompts, G, [(0, 1), (1, 2)], ks=(3,))
    with pytest.raises(ValueError, match="op='double'"):
        confirm(model, prompts, G, [(0, 1)], op="double")
