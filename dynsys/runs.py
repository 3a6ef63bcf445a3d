"""Run directories: one experiment's config, provenance, tables and arrays on disk.

    run.json           format, experiment, config, provenance (of the first session),
                       resumed (provenance of every later session)
    units/NAME.npz     one finished unit of work each, written atomically
    tables/NAME.csv    tables derived from the units
    figures/NAME.pdf   figures drawn from the tables and units only (and .png)

A run is reopened only with the same experiment and config, by a dynsys that reads its
format; anything else is an error and nothing on disk is changed. Units are written to a
temporary file and renamed, so a killed run leaves only finished units and a rerun
recomputes nothing that was finished.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.progress import Progress

FORMAT = 1  # bump when the layout or meaning of a run directory changes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
_PACKAGES = ("dynsys", "jax", "jaxlib", "flax", "numpy", "scipy", "networkx", "matplotlib")


class RunError(ValueError):
    """A run directory that cannot be opened as asked (nothing was written)."""


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez to a temporary name, then rename: `path` is absent or complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def provenance(seeds: dict | None = None) -> dict:
    """Git commit of the dynsys source (and whether it had local changes), package
    versions, Python, platform, JAX devices, time, command line and seeds."""
    source = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(source), *args], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    import jax  # deferred: reading a run's provenance should not need a backend

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "devices": [f"{d.platform}:{d.device_kind}" for d in jax.devices()],
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": sys.argv,
        "seeds": seeds or {},
    }


def _plain(config) -> dict:
    """A dataclass or mapping as JSON-plain data (tuples become lists)."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return json.loads(json.dumps(data))


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RunError(f"name {name!r} must match {_NAME.pattern} (it becomes a file name)")
    return name


@dataclasses.dataclass(frozen=True)
class Run:
    """An opened run directory (see the module docstring)."""

    path: Path
    experiment: str
    config: dict
    meta: dict

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    def has(self, unit: str) -> bool:
        return (self.path / "units" / f"{_check_name(unit)}.npz").exists()

    def save(self, unit: str, **arrays) -> None:
        save_npz_atomic(self.path / "units" / f"{_check_name(unit)}.npz",
                        **{k: np.asarray(v) for k, v in arrays.items()})

    def load(self, unit: str) -> dict[str, np.ndarray]:
        path = self.path / "units" / f"{_check_name(unit)}.npz"
        if not path.exists():
            raise RunError(f"{self.path} has no unit {unit!r} (finished: {self.units()})")
        with np.load(path, allow_pickle=False) as saved:
            return {k: saved[k] for k in saved.files}

    def fill(self, keys, name, compute, description: str, progress: bool = True) -> None:
        """Save compute(*key) (a dict of arrays) as unit name(*key) for every key whose unit
        is not stored yet, in order, with a progress bar over the missing ones."""
        todo = [key for key in keys if not self.has(name(*key))]
        with Progress(disable=not progress or not todo) as bar:
            for key in bar.track(todo, description=description):
                self.save(name(*key), **compute(*key))

    def units(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "units").glob("*.npz")
                      if not p.name.startswith("."))

    def write_table(self, name: str, rows: list[dict]) -> Path:
        """rows (dicts with the same keys) as CSV, written atomically."""
        if not rows:
            raise RunError(f"table {name!r} has no rows")
        path = self.path / "tables" / f"{_check_name(name)}.csv"
        tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        return path

    def read_table(self, name: str) -> list[dict]:
        """The CSV's rows, with ints, floats and booleans parsed back."""
        path = self.path / "tables" / f"{_check_name(name)}.csv"
        if not path.exists():
            raise RunError(f"{self.path} has no table {name!r}")
        with open(path, newline="") as f:
            return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is not a run directory (no run.json)") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path / 'run.json'} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise RunError(f"{path / 'run.json'} holds {type(meta).__name__}, not a JSON object")
    if meta.get("format") != FORMAT:
        writer = meta.get("provenance", {}).get("packages", {}).get("dynsys")
        raise RunError(f"{path} was written in run format {meta.get('format')!r} (dynsys "
                       f"{writer}); this dynsys reads format {FORMAT}. Nothing was changed; "
                       "use another directory or the dynsys version that wrote it")
    for key in ("experiment", "config"):
        if key not in meta:
            raise RunError(f"{path / 'run.json'} lacks the field {key!r}")
    return meta


def open_run(path, experiment: str, config, seeds: dict | None = None) -> Run:
    """Create the run directory `path`, or reopen it to resume.

    Reopening needs the same experiment and config (a dataclass or mapping); a difference
    raises RunError naming it, and nothing is written. A resumed session's provenance is
    appended to run.json's `resumed` list.
    """
    path = Path(path)
    config = _plain(config)
    if (path / "run.json").exists():
        meta = _read_meta(path)
        if meta["experiment"] != experiment:
            raise RunError(f"{path} holds experiment {meta['experiment']!r}, not "
                           f"{experiment!r}; nothing was changed")
        if meta["config"] != config:
            keys = sorted(k for k in set(config) | set(meta["config"])
                          if config.get(k) != meta["config"].get(k))
            diff = ", ".join(f"{k}: {meta['config'].get(k)!r} there, {config.get(k)!r} now"
                             for k in keys)
            raise RunError(f"{path} was run with another config ({diff}); nothing was "
                           "changed; use another directory to run this config")
        meta.setdefault("resumed", []).append(provenance(seeds))
    elif path.exists() and any(path.iterdir()):
        raise RunError(f"{path} exists, is not empty and is not a run directory; "
                       "nothing was changed")
    else:
        meta = {"format": FORMAT, "experiment": experiment, "config": config,
                "provenance": provenance(seeds), "resumed": []}
    for sub in ("units", "tables", "figures"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    tmp = path / f".run.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path / "run.json")
    return Run(path=path, experiment=experiment, config=config, meta=meta)


def read_run(path) -> Run:
    """An existing run directory, read-only use (figures, tables)."""
    path = Path(path)
    meta = _read_meta(path)
    return Run(path=path, experiment=meta["experiment"], config=meta["config"], meta=meta)
