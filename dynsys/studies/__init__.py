"""The paper's experiments E1–E6, each a module with the same face:

    NAME, TITLE
    Config                 frozen dataclass of the experiment's knobs; defaults = paper scale
    SCALES                 {"small": Config(...), "paper": Config()}; small runs in CI
    run(run, config, progress)   compute the units not yet in the run directory, then its tables
    findings(run)          [Finding]: what the stored results say about the argument
    figures(run)           draw the figures from the stored tables and units only

`run_study` opens (or resumes) a run directory and runs one; `render` redraws the figures
of a run directory, or of every run directory under a directory.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
import types
from pathlib import Path

from dynsys import figstyle
from dynsys.runs import Run, RunError, open_run, read_run
from dynsys.studies.finding import Finding
from dynsys.weights import load_config
from dynsys.studies import (e1_loops, e2_agreement, e3_dilution, e4_orbits, e5_cycles,
                            e6_drift)

STUDIES: dict[str, types.ModuleType] = {
    m.NAME: m for m in (e1_loops, e2_agreement, e3_dilution, e4_orbits, e5_cycles, e6_drift)}


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


def _coerce(name: str, key: str, default, value):
    """`value` with the type of the field's default (lists become tuples); else an error."""
    if isinstance(default, tuple) and isinstance(value, (list, tuple)):
        return tuple(_coerce(name, key, default[0], v) for v in value) if default else value
    if type(default) is float and type(value) is int:
        return float(value)
    if type(value) is type(default):
        return value
    raise ValueError(f"{name}: {key}={value!r} must be like the default {default!r}")


def config_for(name: str, scale: str = "small", overrides: dict | None = None):
    """The Config of experiment `name` at `scale`, with `overrides` (unknown keys and wrong
    types are errors naming them)."""
    module = study(name)
    if scale not in module.SCALES:
        raise ValueError(f"scale {scale!r} is not one of {', '.join(module.SCALES)}")
    base = module.SCALES[scale]
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                         f"known: {', '.join(fields)}")
    return dataclasses.replace(base, **{k: _coerce(name, k, fields[k], v)
                                        for k, v in overrides.items()})


def run_study(name: str, out, scale: str = "small", overrides: dict | None = None,
              progress: bool = True, draw: bool = True) -> Run:
    """Run (or resume) experiment `name` into the run directory `out`; draw its figures."""
    module = study(name)
    config = config_for(name, scale, overrides)
    if hasattr(config, "model"):
        load_config(config.model)  # a bad model fails before the run directory is made
    run = open_run(out, module.NAME, config, seeds={"seed": getattr(config, "seed", None)})
    module.run(run, config, progress=progress)
    if draw:
        render_run(run)
    return run


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
    return [f for run in run_dirs(path) for f in study(run.experiment).findings(run)]
