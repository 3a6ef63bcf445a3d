"""The agreement sweep: values against compare(), and resumption after a kill; the scaling
statistics the studies share."""

import numpy as np
import pytest

import dynsys as ds
from dynsys.data.prompts import make_prompt
from dynsys.runs import open_run
from dynsys.stats import HOLDS, INCONCLUSIVE
from dynsys.studies import sweep
from dynsys.studies.sweep import (
    MIN_PROMPTS,
    agreement_sweep,
    agreement_table,
    exponent,
    exponent_estimate,
    prompt_estimate,
)

CFG = ds.ModelConfig("llama", vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=1,
                     num_heads=2, num_kv_heads=1, head_dim=16, max_position_embeddings=4096)


@pytest.fixture(scope="module")
def model():
    return ds.Model(CFG, ds.init_params(CFG, seed=5))


def test_units_match_compare(model):
    res = agreement_sweep(model, lengths=(40,), G=12, seeds=2, kinds=("random",), ropes=(True,),
                          progress=False)
    prompt = make_prompt("random", CFG.vocab_size, 40, 1)
    trace = np.asarray(ds.generate(model, prompt[None], 12).tokens)[0]
    c = ds.compare(model, prompt, trace, memory_ks=(1,))
    np.testing.assert_array_equal(res[0]["traces"][1], trace)
    np.testing.assert_array_equal(res[0]["agree_markov"][1], c.agree_markov)
    np.testing.assert_array_equal(res[0]["agree_position"][1], c.agree_position)
    table = agreement_table(res, horizons=(4, 12))
    assert [r["G"] for r in table] == [4, 12]
    assert table[1]["agreement"] == pytest.approx(res[0]["agree_markov"].mean())


def test_killed_sweep_resumes_without_recomputing(model, tmp_path, monkeypatch):
    calls = []
    original = sweep._unit

    def dying(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while the third unit runs
        calls.append(args[1:3])
        return original(*args)

    monkeypatch.setattr(sweep, "_unit", dying)
    options = dict(lengths=(16, 32), G=6, seeds=2, ropes=(True,), progress=False)
    run = open_run(tmp_path, "sweep-test", options)
    with pytest.raises(KeyboardInterrupt):
        agreement_sweep(model, run=run, **options)
    assert run.units() == ["rope1_ngram_n16", "rope1_ngram_n32"]
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]
    monkeypatch.setattr(sweep, "_unit", lambda *a: calls.append(a[1:3]) or original(*a))
    res = agreement_sweep(model, run=open_run(tmp_path, "sweep-test", options), **options)
    assert calls == [("ngram", 16), ("ngram", 32), ("random", 16), ("random", 32)]
    fresh = agreement_sweep(model, **options)
    for a, b in zip(res, fresh):
        np.testing.assert_array_equal(a["agree_markov"], b["agree_markov"])


def test_bad_input(model):
    with pytest.raises(ValueError, match="'words'"):
        agreement_sweep(model, kinds=("words",), progress=False)
    with pytest.raises(ValueError, match="G=1"):
        agreement_sweep(model, G=1, progress=False)


def test_exponent_of_a_power_law():
    n = np.array([64, 256, 1024, 4096])
    assert exponent(n, 3.0 * n ** -0.75) == pytest.approx(0.75)
    assert exponent(n, n ** 0.5) == pytest.approx(-0.5)


def test_exponent_estimate_pairs_the_prompts_across_lengths():
    """Prompt k's level at every n is c_k n^−1 with c_k spread over a factor 10: the
    exponent is exactly 1 in every resample, though the levels vary far more than that."""
    n = (64, 256, 1024)
    c = np.random.default_rng(0).uniform(1, 10, MIN_PROMPTS)
    estimate = exponent_estimate(n, tuple(c / m for m in n), threshold=0.9)
    assert estimate.value == pytest.approx(1.0)
    assert estimate.interval == pytest.approx((1.0, 1.0))
    assert estimate.verdict == HOLDS and estimate.text() == "1.00 [1.00, 1.00]"


def test_prompt_estimate_needs_min_prompts():
    x = np.full(MIN_PROMPTS - 1, 5.0)
    small = prompt_estimate((x,), np.mean, 1.0)
    assert (small.value, small.interval, small.verdict) == (5.0, None, INCONCLUSIVE)
    assert small.text() == f"5.00 (no interval: under {MIN_PROMPTS} prompts)"
    assert prompt_estimate((np.full(MIN_PROMPTS, 5.0),), np.mean, 1.0).verdict == HOLDS
