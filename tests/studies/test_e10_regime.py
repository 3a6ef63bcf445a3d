"""E10 (the regime study): the attention split against the recorded weights, a run on a
random-init checkpoint and a tiny trained Markov test bed (tables, findings, figures), and
each claim on synthetic tables where it must hold, fail, or be undecided, and the answer's
rule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from study_helpers import assert_figures

import dynsys as ds
from dynsys.data.prompts import random_tokens
from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE
from dynsys.stats.verdict import Evidence
from dynsys.studies import e10_regime, run_study
from dynsys.studies.e10_regime import measure, tables, verdicts
from dynsys.studies.e10_regime.models import prompts, subject
from dynsys.studies.finding import Finding
from dynsys.testbeds import recipe
from dynsys.testbeds.registry import train_testbed

SMALLER = {"lengths": [16, 48], "G": 8, "horizon": 4, "prompts": 3, "kinds": ["source", "random"],
           "lambdas": [1.0, 0.0], "temperatures": [0.7], "top_ps": [1.0], "dry": 0.5}
MARKOV = {"steps": 3, "batch": 2, "seq_len": 64, "hidden": 32, "ffn": 64, "warmup": 1,
          "checkpoint_every": 3, "save_every": 3, "heldout_windows": 4}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """(run, config): E10 on a 3-step Markov test bed (the verify scale runs it on a
    random-init model)."""
    root = tmp_path_factory.mktemp("testbeds")
    train_testbed(recipe("markov1", "small", MARKOV), root / "markov1-small", root,
                  progress=False)
    overrides = {**SMALLER, "models": ["markov1-small@final"], "root": str(root)}
    run = run_study("e10", tmp_path_factory.mktemp("e10") / "run", "small", overrides,
                    progress=False)
    return run, run.settings(e10_regime.Config)


def test_attention_parts_split_the_recorded_weights():
    model = ds.load("tiny")
    batch = np.stack([random_tokens(512, 20, seed=s) for s in range(2)])
    recorded = ds.generate(model, batch, 6, record="attn_weights").recorded
    weights = np.asarray(recorded["attn_weights"])
    parts = measure.attention_parts(weights, 20)
    assert parts.shape == (2, 5, 4, 4, 4)
    np.testing.assert_allclose(parts[..., 1] + parts[..., 2] + parts[..., 3], 1, atol=1e-5)
    W = weights.shape[-1] - 6
    # step i = 2: the query is generated token 1; generated keys are slots W, W + 1
    np.testing.assert_allclose(parts[:, 1, ..., 3], weights[:, 2, ..., W:W + 2].sum(-1),
                               rtol=1e-6)
    np.testing.assert_allclose(parts[:, 1, ..., 0], weights[:, 2, ..., W - 20], rtol=1e-6)
    # uniform attention gives e = 1
    uniform = np.zeros_like(weights)
    for i in range(6):
        uniform[:, i, ..., W - 20:W + i] = 1 / (20 + i)
    np.testing.assert_allclose(measure.excess(measure.attention_parts(uniform, 20), 20), 1,
                               rtol=1e-5)


def test_tables_follow_the_units(study):
    run, config = study
    rows = run.read_table("prompts")
    models = config.models
    assert len(rows) == 2 * 2 * 3  # kinds × lengths × prompts
    for r in rows:
        i = models.index(r["model"])
        unit = run.load(f"m{i}_{r['kind']}_n{r['n']}")
        e = measure.excess(unit["parts"], r["n"])[r["prompt"]].mean()
        assert r["excess"] == pytest.approx(e, rel=1e-6)
        assert r["disagree_position"] == (~unit["agree_position"][r["prompt"], :3]).sum()
        assert 0 <= r["map_bayes"] <= 1 and r["trace_bayes"] in (True, False)
        assert r["pollution"] == tables.pollution(unit["f_bayes"][r["prompt"]],
                                                  unit["bayes_traces"][r["prompt"]])
    assert {r["lambda"] for r in run.read_table("lambda")} == {0.0, 1.0}
    assert {r["sampler"] for r in run.read_table("sampled")} == {"T=0.7 top_p=1",
                                                                "T=0.7 top_p=1 DRY=0.5"}


def test_forced_markov_unit_iterates_the_map(study):
    """λ = 0 traces take f_{P,t−1} on every step (the forced-Markov mode's contract)."""
    run, _ = study
    unit = run.load("m0_lambda")
    assert unit["agree_position"][1].all()


def test_findings_and_figures(study):
    run, config = study
    found = e10_regime.findings(run)
    for model in config.models:
        mine = [f for f in found if f.claim.startswith(f"{model}: ")]
        kinds = [f.claim.split(": ")[1] for f in mine]
        assert kinds[:3] == ["dilution", "agreement", "forcing"]
        assert sum(f.claim.endswith("the answer, by the rule stated in the code")
                   for f in mine) == 1
    answers = [f for f in found if "the answer" in f.claim]
    # n/g = 48/4 = 12 < 100: never in the regime
    assert all(f.measured.startswith("cannot tell here: n/g reaches 12") for f in answers)
    assert any("Bayes predictor" in f.claim for f in found)
    assert_figures(run, ["e10_regime"])


def test_prompts_of_each_kind(study, tmp_path):
    _, config = study
    s = subject("markov1-small@final", config.root, False)
    source = prompts(s, "source", 3, 40, 1000)
    assert source.shape == (3, 40) and source.max() < 8
    assert s.primary == "source" and s.markov is not None
    with pytest.raises(ValueError, match="is not a preset"):
        subject(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="initializer_range '0' must be"):
        subject("tiny:0")


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match=r"lambdas=\[1.0, 1.5\]: 1.5 is outside"):
        e10_regime.Config(lambdas=(1.0, 1.5))
    with pytest.raises(ValueError, match="horizon=32 must be at most G=16"):
        e10_regime.Config(G=16, horizon=32)
    with pytest.raises(ValueError, match="0 is greedy"):
        e10_regime.Config(temperatures=(0.0, 0.7))


# --- the claims on synthetic tables -------------------------------------------------------------

LENGTHS = (64, 256, 1024)


def prompt_table(slope: float, prompts: int, spread: float = 0.1, seed: int = 0,
                 disagree: int = 0, agreeing: int | None = None) -> list[dict]:
    """Rows whose excess grows like n^slope with multiplicative noise, and whose first
    `agreeing` prompts (default all) agree with f_{P,t−1} on every step at the largest n."""
    rng = np.random.default_rng(seed)
    agreeing = prompts if agreeing is None else agreeing
    return [{"model": "m", "kind": "random", "n": n, "prompt": k, "steps": 15,
             "excess": float((n / 64) ** slope * np.exp(spread * rng.normal())),
             "disagree_position": 0 if k < agreeing else 1 + disagree}
            for n in LENGTHS for k in range(prompts)]


def lambda_table(forced: list[bool], normal: list[bool]) -> list[dict]:
    return [{"model": "m", "lambda": lam, "prompt": k, "period": 2 * int(loop)}
            for lam, loops in ((0.0, forced), (1.0, normal)) for k, loop in enumerate(loops)]


@pytest.mark.parametrize("slope, prompts, spread, expected", [
    (0.0, 24, 0.1, HOLDS),        # bounded: e flat in n
    (1.0, 24, 0.1, FAILS),        # recency: e grows like n
    (0.5, 24, 0.1, INCONCLUSIVE),  # on the threshold
    (0.0, 4, 0.1, INCONCLUSIVE),  # too few prompts for a bootstrap
])
def test_dilution_claim(slope, prompts, spread, expected):
    assert verdicts.dilution("m", prompt_table(slope, prompts, spread)).verdict == expected


@pytest.mark.parametrize("prompts, agreeing, expected", [
    (48, 48, HOLDS),  # 48/48: exact lower bound 0.926
    (48, 30, FAILS),  # 30/48 = 0.62: upper bound 0.76
    (24, 23, INCONCLUSIVE),
])
def test_agreement_claim(prompts, agreeing, expected):
    found = verdicts.agreement("m", prompt_table(0.0, prompts, agreeing=agreeing))
    assert found.verdict == expected and "n=1024, g=16, n/g=64" in found.claim


@pytest.mark.parametrize("forced, normal, expected", [
    ([True] * 30 + [False] * 30, [True] * 30 + [False] * 30, HOLDS),
    ([True] * 60, [False] * 60, FAILS),
    ([True] * 12 + [False] * 8, [True] * 10 + [False] * 10, INCONCLUSIVE),
])
def test_forcing_claim(forced, normal, expected):
    assert verdicts.forcing("m", lambda_table(forced, normal)).verdict == expected


def test_answer_rule():
    held = dict.fromkeys(verdicts.CLAIMS, HOLDS)
    assert verdicts.answer("m", held, 120).measured.startswith("the argument holds here")
    assert verdicts.answer("m", held, 50).measured.startswith("cannot tell here: n/g")
    failed = {**held, "agreement": FAILS}
    assert verdicts.answer("m", failed, 120).measured.startswith(
        "the argument fails here (agreement fails)")
    open_ = {**held, "forcing": INCONCLUSIVE}
    assert verdicts.answer("m", open_, 120).measured.startswith(
        "cannot tell here (forcing undecided)")


def test_answers_use_the_corrected_verdicts():
    """Three raw holds, two of which do not survive Holm over the family (p = 0.03 and 0.04
    become 0.06), answer 'cannot tell', naming those two."""
    def held(p):
        return Finding("e10", "c", "m", HOLDS,
                       test=Evidence(0.5, (0.4, 0.6), 10, 0.3, "above", p, HOLDS, 0.95))

    claims = {"m": dict(zip(verdicts.CLAIMS, (held(0.001), held(0.03), held(0.04))))}
    (found,) = verdicts.answers(claims, {"m": 120.0})
    assert found.measured == ("cannot tell here (agreement, forcing undecided); dilution "
                              "holds, agreement inconclusive, forcing inconclusive")


def test_top_p_rows_cut_as_the_sampler_cuts():
    """Rows cut by top_p_rows keep exactly the tokens the sampler can draw."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 8)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for top_p in (0.5, 0.9, 1.0):
        cut = measure.top_p_rows(probs, top_p)
        np.testing.assert_allclose(cut.sum(-1), 1)
        sampler = ds.Sampler(temperature=1.0, top_p=top_p)
        kind, values = sampler.kind, sampler.values
        drawn = np.stack([np.asarray(ds.decode.sampling.select(
            jnp.asarray(logits), jax.random.PRNGKey(s), kind, values)) for s in range(400)])
        for row in range(6):
            assert set(drawn[:, row]) <= set(np.flatnonzero(cut[row] > 0))
            assert (cut[row] > 0).sum() == len(set(drawn[:, row])) or top_p == 1.0


def test_chain_loops_of_a_deterministic_and_a_uniform_kernel():
    cycle = np.roll(np.eye(5), 1, axis=1)  # v -> v + 1 mod 5: every path loops
    assert measure.chain_loops(cycle, 2, 40, 16, np.random.default_rng(0)) == 1.0
    uniform = np.full((64, 64), 1 / 64)  # a 3-fold repeat at the end is rare
    assert measure.chain_loops(uniform, 0, 40, 64, np.random.default_rng(0)) < 0.1


def test_memory_one_is_agreement_with_the_map(study):
    """A step's smallest memory is 1 exactly where the trace takes f_{P,t−1}(x_t) (two
    computations: the memory windows and the sweep's map agreement)."""
    run, config = study
    smallest = run.load("m0_memory")["smallest"]
    agree = run.load(f"m0_source_n{max(config.lengths)}")["agree_position"]
    np.testing.assert_array_equal(smallest == 1, agree)
    rows = run.read_table("memory")
    assert sum(r["steps"] for r in rows) == pytest.approx(1)
    # E5's test against the full map: a terminal cycle is a cycle of f_P
    unit = run.load(f"m0_source_n{max(config.lengths)}")
    flags = run.load("m0_memory")["cycle_of_map"]
    model = subject(config.models[0], config.root, False).model
    prompts_ = prompts(subject(config.models[0], config.root, False), "source",
                       config.prompts, max(config.lengths), config.prompt_seed)
    for k, (trace, period) in enumerate(zip(unit["traces"], unit["period"])):
        if period == 0:
            assert flags[k] == -1
            continue
        cycle = trace[len(trace) - period:]
        f = ds.markov_map(model, prompts_[k], progress=False).next
        assert flags[k] == int((f[cycle] == np.roll(cycle, -1)).all())
    assert rows[0]["looping"] == (flags >= 0).sum()
    assert any("smallest memory k" in f.claim for f in e10_regime.findings(run))


def test_pollution_counts_the_steps_that_leave_the_map():
    """The Bayes trace's first step is the Bayes f_P of its first token (no generated counts
    yet), so the pollution of a trace is over the later steps only."""
    from dynsys.testbeds.markov import MarkovSource, bayes_map, bayes_trace
    source = MarkovSource(8, 1, 0.1)
    for prompt in source.windows("heldout", 6, 40, 0):
        f, trace = bayes_map(source, prompt), bayes_trace(source, prompt, 30)
        assert trace[1] == f[trace[0]]
        assert tables.pollution(f, trace) == np.mean(f[trace[:-1]] != trace[1:])
    assert tables.pollution(np.array([1, 2, 0]), np.array([0, 1, 2, 0])) == 0.0
    assert tables.pollution(np.array([1, 2, 0]), np.array([0, 1, 1, 2])) == pytest.approx(1 / 3)


def test_one_kernel_serves_every_temperature(study):
    """The T = 1 kernel to the power 1/T, renormalised, is the kernel the map gives at T."""
    _, config = study
    s = subject(config.models[0], config.root, False)
    prompt = prompts(s, "source", 1, 32, 0)
    base = measure.unit_kernels(s, prompt)[0]
    for T in (0.3, 0.7):
        tempered = base ** (1 / T)
        direct = ds.markov_map(s.model, prompt[0], kernel_k=s.model.config.vocab_size,
                               temperature=T, progress=False).kernel.toarray()
        np.testing.assert_allclose(tempered / tempered.sum(-1, keepdims=True), direct,
                                   atol=1e-5)
