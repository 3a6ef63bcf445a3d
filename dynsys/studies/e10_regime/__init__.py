"""E10: does decoding become Markov in a trained model with a long prompt, and is that why it
loops?

The argument: with a prompt of n tokens and G generated ones, the generated tokens get a share
of attention that vanishes as n/G grows (dilution), so each greedy step depends on the current
token alone (x_{t+1} = f_{P,t−1}(x_t), a map on token ids) and a finite map must cycle. At
random initialisation dilution holds because attention is uniform; the question is whether it
holds in trained models. Per model (random-init presets, registered test beds, checkpoints:
models.py) and prompt kind, E10 measures, as n grows at fixed G (measure.py):

  1. where the attention goes at each generated token's query: the first token (sink), the
     first SINK tokens, the rest of the prompt and the generated tokens, per layer and head,
     and the excess e of the generated tokens over their uniform share r/(n + r);
  2. agreement of the greedy trace with f_{P,t−1} and f_P per step, against n/g for the
     horizons g of tables.HORIZONS;
  3. loops (terminal period, onset) of the traces;
  4. for a Markov test bed, the known answer: the model's f_P against the Bayes predictor's
     over the whole alphabet, and the Bayes predictor's own trace;
and at the largest n, on the primary prompts: forced-Markov decoding and its dose-response
(the scores of earlier generated keys shifted by log λ, λ in Config.lambdas; λ = 0 iterates
f_{P,t−1}), and sampled decoding (temperature × top-p, and DRY). The claims, their thresholds
and the rule that gives each model's one-line answer are in verdicts.py.

On the size ladder (Config.ladder, with Config.size; size.py): the loop rate at matched
held-out loss against parameters, and the number of MLP neurons whose zeroing halves the loop
rate.

At the largest n, the smallest memory k that explains each greedy step (k = 1: the Markov
map), and, for small V, the sampled-decoding theorem's kernel chain's loop share beside the
sampled one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dynsys.runs import Run
from dynsys.studies.e10_regime import figures as _figures
from dynsys.studies.e10_regime import measure, size, tables, verdicts
from dynsys.studies.e10_regime.models import KINDS, Subject, prompts, subject
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings
from dynsys.testbeds import read_registry

NAME = "e10"
TITLE = "The regime: attention, agreement and loops against n/G on trained models"
PILOT_SEEDS = (0, 0)  # no pilot chose these sizes


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    models: tuple[str, ...] = ("tiny", "tiny:0.1", "markov1-paper@final",
                               "longctx-rope-paper@final", "longctx-nope-paper@final")
    root: str = "runs/testbeds"  # the test-bed registry's directory
    lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 1920)  # n; those with n + G above a
    G: int = 128  # model's context are skipped for it
    horizon: int = 16  # the g of the agreement claim
    prompts: int = 48  # prompts per (model, kind, n)
    prompt_seed: int = 1000
    kinds: tuple[str, ...] = KINDS
    lambdas: tuple[float, ...] = (1.0, 0.5, 0.25, 0.1, 0.0)
    temperatures: tuple[float, ...] = (0.3, 0.7, 1.0)
    top_ps: tuple[float, ...] = (1.0, 0.9)
    dry: float = 0.8  # DRY multiplier of the sampled breaker run (0: none)
    seed: int = 0  # the samplers' seed
    size: bool = True  # run the size ladder (size.py)
    ladder: tuple[str, ...] = ("ladder-1-paper", "ladder-2-paper", "ladder-3-paper")  # KEYs
    ladder_n: int = 384  # the ladder's prompt length (n + G within its context of 512)

    LIMITS = {"lengths": measure.SINK + 1, "G": 4, "horizon": 2,
              "prompts": 2, "prompt_seed": 0, "kinds": KINDS,
              "lambdas": 0.0, "temperatures": 0.0, "top_ps": 0.0, "dry": 0.0, "seed": 0,
              "ladder_n": measure.SINK + 1}

    def __post_init__(self):
        super().__post_init__()
        if self.horizon > self.G:
            raise ValueError(f"horizon={self.horizon} must be at most G={self.G}")
        for name, low, high in (("lambdas", 0, 1), ("top_ps", 0, 1)):
            bad = [x for x in getattr(self, name) if not low <= x <= high or (x == 0 and
                   name == "top_ps")]
            if bad:
                raise ValueError(f"{name}={list(getattr(self, name))}: {bad[0]} is outside "
                                 f"{'(0, 1]' if name == 'top_ps' else '[0, 1]'}")
        if 0 in self.temperatures:
            raise ValueError(f"temperatures={list(self.temperatures)}: 0 is greedy decoding, "
                             "which the sweep already runs")

    def positions(self) -> int:
        return max(self.lengths) + self.G


SCALES = {
    # tiny random init, a Markov test bed trained inside the run if absent (context 256)
    "small": Config(models=("tiny", "markov1-small@final"),
                    lengths=(32, 64, 128, 192, 512, 1024), G=64, horizon=8, prompts=24,
                    lambdas=(1.0, 0.25, 0.0), temperatures=(0.7,), top_ps=(1.0, 0.9),
                    size=False),
    # what `dynsys verify` runs: the tiny random-init model only
    "verify": Config(models=("tiny",), lengths=(64, 256, 1024), G=32, horizon=8, prompts=16,
                     kinds=("random",), lambdas=(1.0, 0.0), temperatures=(0.7,),
                     top_ps=(1.0,), dry=0.0, size=False),
    "paper": Config(),
}


def subjects(config: Config, progress: bool = True) -> list[Subject]:
    """The config's models, loaded (test beds trained first where absent)."""
    return [subject(name, config.root, progress) for name in config.models]


def inputs(config: Config, progress: bool = True) -> dict[str, str]:
    """What a resumed run must find again: each model's weights' digest; ValueError for a
    model that no prompt length fits."""
    found = {}
    for s in subjects(config, progress):
        if not lengths(s, config):
            raise ValueError(f"e10: no prompt length of {list(config.lengths)} fits model "
                             f"{s.name!r} ({s.context} positions) with G={config.G}")
        found[s.name] = s.digest
    return found


def lengths(s: Subject, config: Config) -> tuple[int, ...]:
    """The prompt lengths n with n + G within the model's context."""
    return tuple(n for n in config.lengths if n + config.G <= s.context)


def kinds(s: Subject, config: Config) -> tuple[str, ...]:
    return tuple(k for k in config.kinds if k in s.kinds)


def run(run: Run, config: Config, progress: bool = True) -> None:
    found = subjects(config, progress)
    drawn = {}

    def drawn_prompts(i: int, kind: str) -> np.ndarray:
        if (i, kind) not in drawn:
            drawn[i, kind] = prompts(found[i], kind, config.prompts, max(lengths(found[i],
                                     config)), config.prompt_seed)
        return drawn[i, kind]

    sweep = [(i, kind, n) for i, s in enumerate(found) for kind in kinds(s, config)
             for n in lengths(s, config)]
    run.fill(sweep, _sweep_name, lambda i, kind, n: measure.sweep_unit(
        found[i], drawn_prompts(i, kind)[:, :n], config.G), "E10 sweep", progress)
    last = [(i,) for i, s in enumerate(found)]

    def primary(i: int) -> np.ndarray:
        return drawn_prompts(i, found[i].primary)

    run.fill(last, lambda i: f"m{i}_lambda", lambda i: measure.lambda_unit(
        found[i], primary(i), config.G, config.lambdas), "E10 forced-Markov", progress)
    def swept(i: int) -> tuple[np.ndarray, np.ndarray]:
        """The prompts and greedy traces of the sweep at the largest n, primary kind (or the
        first kind the config runs, if it does not run the primary one)."""
        kind = found[i].primary if found[i].primary in kinds(found[i], config) else \
            kinds(found[i], config)[0]
        n = max(lengths(found[i], config))
        return drawn_prompts(i, kind)[:, :n], run.load(_sweep_name(i, kind, n))["traces"]

    run.fill(last, lambda i: f"m{i}_memory", lambda i: measure.memory_unit(found[i], *swept(i)),
             "E10 memory", progress)
    chosen = measure.samplers(config.temperatures, config.top_ps, config.dry)
    run.fill(last, lambda i: f"m{i}_sampled", lambda i: measure.sampled_unit(
        found[i], primary(i), config.G, chosen, config.seed), "E10 sampled", progress)
    if config.size:
        steps, losses = size.ladder(config.ladder, config.root, progress)
        run.fill([(key,) for key in config.ladder], lambda key: f"size_{key}",
                 lambda key: size.unit(key, steps[key], config.root, config.ladder_n,
                                       config.prompts, config.G, config.prompt_seed),
                 "E10 size ladder", progress)
        write_size_tables(run, config, steps, losses)
    write_tables(run, config, found, [label for label, _ in chosen])
    run.write_table("summary", summary_rows(run))


def _sweep_name(i: int, kind: str, n: int) -> str:
    return f"m{i}_{kind}_n{n}"


def write_tables(run: Run, config: Config, found: list[Subject], labels: list[str]) -> None:
    rows = {name: [] for name in ("prompts", "layers", "masses", "agreement", "lambda",
                                  "memory", "sampled")}
    for i, s in enumerate(found):
        for kind in kinds(s, config):
            for n in lengths(s, config):
                unit = run.load(_sweep_name(i, kind, n))
                rows["prompts"] += tables.prompt_rows(s.name, kind, n, unit, config.horizon)
                rows["layers"] += tables.layer_rows(s.name, kind, n, unit)
                rows["masses"] += tables.attention_rows(s.name, kind, n, unit)
                rows["agreement"] += tables.agreement_rows(s.name, kind, n, unit)
        rows["lambda"] += tables.lambda_rows(s.name, config.lambdas, run.load(f"m{i}_lambda"))
        rows["memory"] += tables.memory_rows(s.name, run.load(f"m{i}_memory"))
        rows["sampled"] += tables.sampled_rows(s.name, labels, run.load(f"m{i}_sampled"))
    for name, table in rows.items():
        run.write_table(name, table)


def write_size_tables(run: Run, config: Config, steps: dict[str, int],
                      losses: dict[str, list[tuple[int, float]]]) -> None:
    """Tables "size" (rung, checkpoint: loop rate at matched loss and at the end) and "neurons"
    (rung, k: loop rate after zeroing the top k neurons)."""
    rows = {"size": [], "neurons": []}
    for key in config.ladder:
        params = read_registry(config.root)[key]["summary"]["params"]
        made = size.rows(key, params, steps[key], losses[key], run.load(f"size_{key}"))
        rows["size"] += made[0]
        rows["neurons"] += made[1]
    for name, table in rows.items():
        run.write_table(name, table)


def findings(run: Run) -> list[Finding]:
    config = run.settings(Config)
    prompt_rows, lambda_rows = run.read_table("prompts"), run.read_table("lambda")
    layer_rows = run.read_table("layers")
    sampled_rows = run.read_table("sampled")
    claims, reach, out = {}, {}, []
    for model in config.models:
        kind = "source" if tables.select(prompt_rows, model=model, kind="source") else "random"
        rows = tables.select(prompt_rows, model=model, kind=kind)
        claims[model] = verdicts.model_findings(model, rows, tables.select(lambda_rows,
                                                                          model=model))
        reach[model] = max(r["n"] for r in rows) / config.horizon
        out += claims[model].values()
        out.append(verdicts.layer_finding(model, tables.select(layer_rows, model=model,
                                                               kind=kind)))
        out.append(verdicts.sampled_finding(model, tables.select(sampled_rows, model=model)))
        if run.has_table("memory"):
            out.append(verdicts.memory_finding(model, tables.select(
                run.read_table("memory"), model=model)))
        if rows[0]["map_bayes"] != "":  # a Markov test bed
            out.append(_ground_truth(model, rows))
    if config.size and run.has_table("size"):
        out += size.findings(run.read_table("size"), run.read_table("neurons"),
                             {key: run.load(f"size_{key}")["loops_matched"]
                              for key in config.ladder})
    return out + verdicts.answers(claims, reach)


def summary_rows(run: Run) -> list[dict]:
    """One row per model: the claims' estimates and raw verdicts, the loop shares of normal
    and forced-Markov decoding and of sampling at temperature 0.7 (top-p 1), and the answer."""
    config = run.settings(Config)
    found = findings(run)
    sampled, lambdas = run.read_table("sampled"), run.read_table("lambda")
    rows = []
    for model in config.models:
        mine = {f.claim.split(": ")[1]: f for f in found if f.claim.startswith(f"{model}: ")}
        normal, forced = (tables.loop_share(tables.select(lambdas, model=model,
                                                          **{"lambda": lam}))
                          for lam in (1.0, 0.0))
        warm = [r for r in tables.select(sampled, model=model)
                if r["sampler"] == "T=0.7 top_p=1"]
        answer = next(f for f in found if f.claim == f"{model}: the answer, by the rule "
                                                     "stated in the code")
        rows.append({
            "model": model,
            **{f"{c}_estimate": (mine[c].test.estimate if mine[c].test else "")
               for c in verdicts.CLAIMS},
            **{f"{c}_verdict": mine[c].verdict for c in verdicts.CLAIMS},
            "loops_normal": normal, "loops_forced": forced,
            "loops_sampled_T0.7": tables.loop_share(warm) if warm else "",
            "answer": answer.measured.split(";")[0]})
    return rows


def _ground_truth(model: str, rows: list[dict]) -> Finding:
    """The Markov test bed's known answer, as a description per n."""
    parts = []
    for n in sorted({r["n"] for r in rows}):
        sel = tables.select(rows, n=n)
        parts.append(f"n={n}: map {np.mean([r['map_bayes'] for r in sel]):.2f}, traces "
                     f"{np.mean([r['trace_bayes'] for r in sel]):.2f}, pollution "
                     f"{np.mean([r['pollution'] for r in sel]):.3f}")
    return Finding(NAME, f"{model}: the trained model's f_P equals the Bayes predictor's "
                         "(share of the alphabet), its trace the Bayes trace (share of "
                         "prompts), and the Bayes trace leaves the Bayes f_P (share of steps: "
                         "the generated tokens' counts, predicted to fall like G/n)",
                   "; ".join(parts), None)


def figures(run: Run):
    return _figures.draw(run)
