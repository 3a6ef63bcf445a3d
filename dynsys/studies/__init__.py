"""The paper's experiments E1–E9 (E7 and E8 train their own models, through training.py; E9
works on E7's), each a module with the same face:

    NAME, TITLE
    Config                 frozen dataclass of the experiment's knobs; defaults = paper scale.
                           A settings.Settings: its types and LIMITS are checked when it is
                           made. config.model names the model; config.positions() is the
                           length of a unit's longest sequence, which the model must hold
    SCALES                 {"small": Config(...), "paper": Config()}; small runs in CI
    run(run, config, progress)   compute the units not yet in the run directory, then its tables
    findings(run)          [Finding]: what the stored results say about the argument
    figures(run)           draw the figures from the stored tables and units only

`run_study` checks the settings and the model, then opens (or resumes) a run directory and
runs one; `render` redraws the figures of a run directory, or of every run directory under a
directory. Every run of E1–E6 also stores its model's attention concentration (table
"attention": dynsys.theory.concentration on ATTENTION_PROMPTS random prompts of up to
ATTENTION_LENGTH tokens), reported beside its findings, so that a trivial test bed (nearly
uniform attention, as at random initialisation) is visible. E7 and E8 train their own models
and probe them at every checkpoint instead.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
from pathlib import Path

import numpy as np

from dynsys import distributed, figstyle
from dynsys.data.prompts import random_tokens
from dynsys.io import checkpoint_digest, load, load_config
from dynsys.runs import Run, RunError, open_run, read_run
from dynsys.studies import (
    e1_loops,
    e2_agreement,
    e3_dilution,
    e4_orbits,
    e5_cycles,
    e6_drift,
    e7_training,
    e8_paths,
    e9_surgery,
    e10_regime,
    finding,
)
from dynsys.studies.finding import Finding
from dynsys.studies.training import Training
from dynsys.theory.concentration import attention_concentration

ATTENTION = "attention"  # the table of a run's attention concentration
ATTENTION_PROMPTS, ATTENTION_LENGTH = 8, 512

STUDIES: dict[str, types.ModuleType] = {
    m.NAME: m for m in (e1_loops, e2_agreement, e3_dilution, e4_orbits, e5_cycles, e6_drift,
                        e7_training, e8_paths, e9_surgery, e10_regime)}


def study(name: str) -> types.ModuleType:
    if name not in STUDIES:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(STUDIES)}")
    return STUDIES[name]


def read_overrides(path) -> dict:
    """Experiment settings from a JSON or TOML file (a flat table of Config fields)."""
    path = Path(path)
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: "
                         f"{e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a table of settings, not {type(data).__name__}")
    return data


def config_for(name: str, scale: str = "small", overrides: dict | None = None):
    """The Config of experiment `name` at `scale`, with `overrides` (JSON values: lists for
    tuples). Unknown keys and settings outside the Config's types and limits are errors
    naming them (see dynsys.studies.settings)."""
    module = study(name)
    if scale not in module.SCALES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(module.SCALES)}")
    return with_overrides(module.SCALES[scale], overrides, name)


def with_overrides(base, overrides: dict | None, name: str):
    """The settings `base` (a frozen Settings dataclass) with `overrides`; unknown keys and
    values outside the types and limits are errors naming them, prefixed by `name`."""
    fields = [f.name for f in dataclasses.fields(base)]
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(fields)}")
    try:
        return dataclasses.replace(base, **overrides)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def model_digest(name: str, config) -> str:
    """The digest of the weights of config.model (dynsys.io.checkpoint_digest, which
    checks that each safetensors header reads), after checking without loading weights that
    its config.json reads and its max_position_embeddings holds config.positions()."""
    limit = load_config(config.model).max_position_embeddings
    if config.positions() > limit:
        raise ValueError(f"{name}: these settings need {config.positions()} positions (the "
                         f"longest prompt and the tokens after it); the model {config.model} "
                         f"has max_position_embeddings={limit}")
    return checkpoint_digest(config.model)


def prompt_seeds(module: types.ModuleType, config) -> dict:
    """The prompt seeds [first, end) a run draws and those of the pilot that chose its size
    (module.PILOT_SEEDS), for a study whose Config has prompt_seed; else {}."""
    if not hasattr(config, "prompt_seed"):
        return {}
    return {"prompts": [config.prompt_seed, config.prompt_seed + config.prompts],
            "pilot_prompts": list(module.PILOT_SEEDS)}


def run_study(name: str, out, scale: str = "small", overrides: dict | None = None,
              progress: bool = True, draw: bool = True) -> Run:
    """Run (or resume) experiment `name` into the run directory `out`; draw its figures.

    The settings and the model are checked first (config_for, model_digest; a study of
    several models states its inputs itself, module.inputs(config, progress)), so that a bad
    one fails before the run directory is made. The model's digest is one of the run's
    inputs: resuming with other weights under the same name is refused."""
    module = study(name)
    config = config_for(name, scale, overrides)
    seeds = {"seed": getattr(config, "seed", None), **prompt_seeds(module, config)}
    index, count = distributed.process()
    if isinstance(config, Training) and count > 1:
        raise ValueError(f"{name} trains its model, which runs in one process (this is process "
                         f"{index} of {count}): run it in one process first, then the rest "
                         "with several; nothing was written")
    inputs = (module.inputs(config, progress) if hasattr(module, "inputs")
              else {"model": model_digest(name, config)})
    run = open_run(out, module.NAME, config, seeds=seeds, inputs=inputs)
    module.run(run, config, progress=progress)
    if hasattr(config, "model") and not isinstance(config, Training):
        write_attention(run, config)
    if draw:
        render_run(run)
    return run


def write_attention(run: Run, config) -> None:
    """The table ATTENTION of the model config.model: per layer, the concentration of the last
    token's attention over n = min(config.positions(), ATTENTION_LENGTH) keys, for
    ATTENTION_PROMPTS prompts of i.i.d. uniform ids (seed 0): mean excess n·max a, its
    largest value over prompts and heads, mean score s.d. and mean entropy / ln n."""
    model = load(config.model, seed=getattr(config, "seed", 0))
    n = min(config.positions(), ATTENTION_LENGTH, model.config.max_position_embeddings)
    prompts = np.stack([random_tokens(model.config.vocab_size, n, seed=i)
                        for i in range(ATTENTION_PROMPTS)])
    found = attention_concentration(model, prompts)
    run.write_table(ATTENTION, [{"layer": row.pop("layer"), "keys": n, **row}
                                for row in found.layers()])


def attention_finding(run: Run) -> Finding:
    """What the ATTENTION table says about the test bed (a measurement, no verdict)."""
    rows = run.read_table(ATTENTION)
    return Finding(
        run.experiment, f"the test bed: attention concentration of the model (last token of "
                        f"{ATTENTION_PROMPTS} random prompts of {rows[0]['keys']} tokens; "
                        "uniform attention gives excess 1, s.d. 0, entropy 1)",
        f"excess n·max a {np.mean([r['excess'] for r in rows]):.2f} (largest head "
        f"{max(r['max_excess'] for r in rows):.1f}), score s.d. "
        f"{np.mean([r['score_sd'] for r in rows]):.3f}, entropy/ln n "
        f"{np.mean([r['entropy'] for r in rows]):.3f}, mean over {len(rows)} layers", None)


def render_run(run: Run) -> list[Path]:
    with figstyle.style():
        return study(run.experiment).figures(run)


def run_dirs(path) -> list[Run]:
    """The run directory `path`, or every run directory directly under it."""
    path = Path(path)
    if (path / "run.json").exists():
        return [read_run(path)]
    runs = [read_run(p) for p in sorted(path.iterdir()) if (p / "run.json").exists()] \
        if path.is_dir() else []
    if not runs:
        raise RunError(f"{path} is not a run directory and holds none")
    return runs


def render(path) -> list[Path]:
    """Redraw the figures of the run directory `path` (or of every run directory in it)."""
    return [p for run in run_dirs(path) for p in render_run(run)]


def findings(path) -> list[Finding]:
    """The findings of the run directory `path` (or of every run directory in it), each run's
    attention concentration after its findings when it has one."""
    return [f for run in run_dirs(path) for f in _run_findings(run)]


def _run_findings(run: Run) -> list[Finding]:
    return [*study(run.experiment).findings(run),
            *([attention_finding(run)] if run.has_table(ATTENTION) else [])]


def report(path) -> list[dict]:
    """The findings of `path` (as `findings`) as report rows (dynsys.studies.finding.report):
    each tested claim corrected for multiplicity within its experiment, with the seeds its
    run recorded."""
    runs = run_dirs(path)
    seeds = {run.experiment: run.meta.get("provenance", {}).get("seeds", {}) for run in runs}
    return finding.report([f for run in runs for f in _run_findings(run)], seeds)
