"""Judging a fix: rates and losses against a brute-force recomputation (loop and collapse
flags, per-window losses by a numpy softmax, the paired t interval by hand), an identity edit
changing nothing, a planted loop neuron zeroed changing the loop rate and the attractors of the
Markov map (the edited model's greedy trace leaves the attractor), and bad input."""

import importlib
import math
from collections import Counter

import numpy as np
import pytest
from conftest import CONFIGS, random_model
from scipy import stats
from surgery_helpers import CFG, PLANT_NEURON, PLANT_TOKEN, G, plant

from dynsys.decode import forward, generate
from dynsys.surgery import NeuronEdit, apply_edit
from dynsys.surgery.attractors import attractor_change
from dynsys.surgery.judge import (
    Baseline,
    collapsing,
    judge,
    loss_change,
    rate_changes,
    window_losses,
)

pytest_plugins = ["surgery_fixtures"]  # model, prompts


@pytest.fixture(scope="module")
def windows():
    return np.random.default_rng(1).integers(0, CFG.vocab_size, (6, 11)).astype(np.int32)


@pytest.fixture(scope="module")
def planted(model):
    return plant(model)


@pytest.fixture(scope="module")
def unplanted(planted):
    """The planted neuron zeroed by a weight edit."""
    return apply_edit(planted, NeuronEdit(((0, PLANT_NEURON),), "zero"))


def brute_loops(trace, k=3):
    G = len(trace)
    return any(all(trace[t] == trace[t - p] for t in range(G - (k - 1) * p, G))
               for p in range(1, G // k + 1))


def brute_collapse(trace, delimiter, window):
    entries, cur = [], []
    for x in [*trace, delimiter]:
        if x == delimiter:
            if cur:
                entries.append(tuple(cur))
            cur = []
        else:
            cur.append(x)
    if len(entries) < 2 * window or len(set(entries[:window])) < window / 2:
        return False
    return Counter(entries[-window:]).most_common(1)[0][1] > window / 2


def test_collapse_flags_follow_the_definition():
    D = 0
    diverse = [1, 2, 3, 4]
    traces = [[y for x in [*diverse, 9, 9, 9, 5] for y in (x, D)],  # collapses onto (9,)
              [y for x in [*diverse, 9, 5, 9, 5] for y in (x, D)],  # alternation: no majority
              [y for x in [7] * 8 for y in (x, D)],                 # never diverse
              [3, 4, D, 5, D, 6] + [0] * 10]                        # too few entries
    traces = np.array([t[:16] + [D] * (16 - len(t[:16])) for t in traces])
    got = collapsing(traces, D, window=4)
    assert got.tolist() == [brute_collapse(t, D, 4) for t in traces] == [True, False, False,
                                                                         False]


def test_rates_against_brute_force(planted, unplanted, prompts):
    prompts = prompts.copy()
    prompts[::2, -1] = PLANT_TOKEN  # half the prompts fall into the planted loop
    loop, col = rate_changes(planted, unplanted, prompts, G, delimiter=5, window=2)
    x0, x1 = (np.asarray(generate(m, prompts, G).tokens) for m in (planted, unplanted))
    for rc, flag in [(loop, lambda t: brute_loops(t)), (col, lambda t: brute_collapse(t, 5, 2))]:
        b, a = [flag(t) for t in x0], [flag(t) for t in x1]
        assert rc.flags_before.tolist() == b and rc.flags_after.tolist() == a
        assert rc.before == np.mean(b) and rc.after == np.mean(a)
        assert rc.change == pytest.approx(np.mean(a) - np.mean(b))
        assert rc.change_interval[0] <= rc.change <= rc.change_interval[1]
        ks = stats.binomtest(int(sum(a)), len(a)).proportion_ci(method="exact")
        assert rc.after_interval == pytest.approx((ks.low, ks.high))
    assert loop.before >= 0.5 and loop.change < 0


def test_window_losses_against_a_numpy_softmax(model, windows):
    lg = np.asarray(forward(model, windows[:, :-1]), np.float64)
    logp = lg - lg.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, windows[:, 1:, None], -1)[..., 0].mean(1)
    np.testing.assert_allclose(window_losses(model, windows, batch=4), expected, rtol=1e-5)


def test_loss_change_is_a_paired_interval(planted, unplanted, windows):
    t = loss_change(planted, unplanted, windows)
    delta = window_losses(unplanted, windows) - window_losses(planted, windows)
    assert t.change == pytest.approx(delta.mean()) and t.change != 0
    half = stats.t.ppf(0.975, delta.size - 1) * delta.std(ddof=1) / math.sqrt(delta.size)
    assert t.change_interval == pytest.approx((delta.mean() - half, delta.mean() + half))
    boot = loss_change(planted, unplanted, windows, method="bootstrap")
    assert boot.change == pytest.approx(t.change)
    assert boot.change_interval[0] <= boot.change <= boot.change_interval[1]
    assert t.row()["quantity"] == "heldout_loss"



def test_an_identity_edit_changes_nothing(model, prompts, windows):
    same = apply_edit(model, NeuronEdit(((0, 1), (1, 2)), "scale", 1.0))
    j = judge(model, same, prompts, G, windows, prompts[:1], delimiter=5, window=2,
              sampled=[np.asarray(generate(model, prompts[:1], G).tokens)])
    for rc in j.rates:
        assert rc.change == 0 and rc.change_interval[0] <= 0 <= rc.change_interval[1]
    assert j.loss.change == 0 and j.loss.change_interval == (0.0, 0.0)
    att = j.attractors[0]
    assert att.vanished == att.appeared == () and att.before.cycles == att.after.cycles
    np.testing.assert_array_equal(att.before.basins, att.after.basins)
    after_greedy, sampled = j.surfaces[0]
    np.testing.assert_array_equal(after_greedy.distances, sampled.distances)
    table = j.table()
    assert [r["part"] for r in table][:3] == ["rate", "rate", "loss"]
    assert all(r["change"] == 0 for r in table if "change" in r)


def test_a_zeroed_loop_neuron_changes_the_rate_and_the_attractor(planted, unplanted, prompts,
                                                                  windows):
    prompts = prompts.copy()
    prompts[:, -1] = PLANT_TOKEN
    j = judge(planted, unplanted, prompts, G, windows, prompts[:2])
    loop = j.rates[0]
    assert loop.before == 1.0 and loop.change < 0
    assert loop.change_interval[0] <= loop.change
    for att, (after_greedy,) in zip(j.attractors, j.surfaces):
        assert (PLANT_TOKEN,) in att.before.cycles
        assert (PLANT_TOKEN,) in att.vanished
        assert after_greedy.cycle == (PLANT_TOKEN,)
        assert after_greedy.on < 1.0 and after_greedy.elsewhere > 0  # it left the attractor
    assert j.loss.change != 0
    alone = attractor_change(planted, unplanted, prompts[0])
    assert alone.vanished == j.attractors[0].vanished
    assert alone.appeared == j.attractors[0].appeared


def test_a_stored_baseline_gives_the_same_judgement_from_the_after_model_alone(
        planted, unplanted, prompts, windows, monkeypatch):
    baseline = Baseline.of(planted, prompts, G, windows, prompts[:2])
    fresh = judge(planted, unplanted, prompts, G, windows, prompts[:2], delimiter=5, window=2)
    maps = []
    module = importlib.import_module("dynsys.surgery.judge")  # the package's judge is the function
    real = module.markov_map
    monkeypatch.setattr(module, "markov_map",
                        lambda m, *a, **kw: maps.append(m) or real(m, *a, **kw))
    stored = judge(planted, unplanted, prompts, G, windows, prompts[:2], baseline=baseline,
                   delimiter=5, window=2)
    assert maps == [unplanted, unplanted]  # the before model's maps are not recomputed
    assert stored.table() == fresh.table()
    np.testing.assert_array_equal(stored.loss.losses_before, window_losses(planted, windows))
    with pytest.raises(ValueError, match=r"baseline traces has shape \(8, 16\); these inputs "
                                         r"need \(4, 16\)"):
        judge(planted, unplanted, prompts[:4], G, windows, prompts[:2], baseline=baseline)
    with pytest.raises(ValueError, match=r"baseline maps has shape \(2, "):
        judge(planted, unplanted, prompts, G, windows, prompts[:1], baseline=baseline)


def test_bad_input_names_the_value(model, prompts, windows):
    with pytest.raises(ValueError, match="G=1"):
        rate_changes(model, model, prompts, 1)
    with pytest.raises(ValueError, match="delimiter=999"):
        rate_changes(model, model, prompts, G, delimiter=999)
    with pytest.raises(ValueError, match="window=0"):
        collapsing(np.zeros((2, G), int), 0, window=0)
    with pytest.raises(ValueError, match="method='median'"):
        loss_change(model, model, windows, method="median")
    with pytest.raises(ValueError, match="1 window"):
        loss_change(model, model, windows[:1])
    with pytest.raises(ValueError, match=r"windows must be 2-D.*\(11,\)"):
        loss_change(model, model, windows[0])
    with pytest.raises(ValueError, match="1 sampled trace sets but 2 map prompts"):
        judge(model, model, prompts, G, windows, prompts[:2], sampled=[np.zeros((1, G), int)])
    with pytest.raises(ValueError, match="vocab_size=100"):
        rate_changes(model, random_model(CONFIGS["neox-rot50-tied-seq"]), prompts, G)
