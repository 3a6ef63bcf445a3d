"""Neuron attribution: the gradient against finite differences of the loop margin and against
generation's own margins, a planted loop neuron ranked first by both methods, and bad input."""

import numpy as np
import pytest
from surgery_helpers import CFG, PLANT_NEURON, PLANT_TOKEN, G, plant, scaled

from dynsys.decode import generate
from dynsys.surgery import loop_margin, looping, neuron_attribution

pytest_plugins = ["surgery_fixtures"]  # model, prompts


@pytest.fixture(scope="module")
def greedy(model, prompts):
    out = generate(model, prompts, G, return_margins=True)
    return np.asarray(out.tokens), np.asarray(out.margins)


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


def test_a_planted_loop_neuron_is_ranked_first(model, prompts):
    planted = plant(model)
    prompts = prompts.copy()
    prompts[:, -1] = PLANT_TOKEN
    traces = generate(planted, prompts, G).tokens
    assert (np.asarray(traces) == PLANT_TOKEN).all()
    att = neuron_attribution(planted, prompts, traces)
    for method in ("grad_x_act", "onset_diff"):
        assert att.ranked(method, 1)[0][:2] == (0, PLANT_NEURON), method


def test_bad_input_names_the_value(model, prompts):
    with pytest.raises(ValueError, match="G=1"):
        neuron_attribution(model, prompts, np.zeros((8, 1), np.int32))
    with pytest.raises(ValueError, match="none of the 8 traces loops"):
        neuron_attribution(model, prompts, np.tile(np.arange(G, dtype=np.int32), (8, 1)))
    with pytest.raises(ValueError, match="8 prompts but 2 traces"):
        neuron_attribution(model, prompts, np.zeros((2, G), np.int32))
    with pytest.raises(ValueError, match="method='max'"):
        neuron_attribution(model, prompts, generate(model, prompts, G).tokens).ranked("max")
