"""Run directories: one experiment's config, provenance, tables and arrays on disk.

    run.json           format, experiment, config, inputs (digests of what the run reads
                       besides its config, e.g. {"model": digest of the weights}),
                       provenance (of the first session), resumed (of every later session)
    units/NAME.npz     one finished unit of work each
    tables/NAME.csv    tables derived from the units
    figures/NAME.pdf   figures drawn from the tables and units only (and .png)

A run is reopened only with the same experiment, config and inputs, by a dynsys that reads
its format; anything else is an error and nothing on disk is changed. A run.json without
`inputs` (written before they were recorded) is resumed with a warning, and the inputs of
that session are recorded. Every file is written to a temporary name in its directory and
renamed (`atomic_path`; a failed write removes the temporary file), so a killed run leaves
only finished units and a rerun recomputes nothing that was finished. A unit file that cannot
be read (truncated or damaged) is moved aside to units/NAME.npz.corrupt-TIME with a warning
and counts as missing, so the next fill recomputes it.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import re
import socket
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from rich import get_console
from rich.progress import Progress

from dynsys import DISTRIBUTION, distributed

FORMAT = 1  # bump when the layout or meaning of a run directory changes
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*")
_PACKAGES = (DISTRIBUTION, "jax", "jaxlib", "flax", "numpy", "scipy", "networkx", "matplotlib")
log = logging.getLogger(__name__)


class RunError(ValueError):
    """A run directory that cannot be opened as asked (nothing was written)."""


class UnreadableFile(ValueError):
    """A file that is not a readable .npz archive (truncated, damaged, or another format)."""


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temporary name beside `path` to write to: renamed to `path` when the block ends, and
    removed if the block (or the rename) fails, so `path` is as it was or complete."""
    path = Path(path)
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())  # processes on other hosts
    tmp = path.with_name(f".{path.stem}.{host}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_file_target(path) -> Path:
    """`path` as a Path if a file can be written there (ValueError naming it otherwise): it is
    not a directory and its directory exists. Check before the work whose result it will
    hold."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the name of the {path.suffix} file to "
                         "write")
    if not path.parent.is_dir():
        raise ValueError(f"{path.parent} (the directory of {path}) is not a directory")
    return path


def check_npz_target(path) -> Path:
    """`check_file_target(path)` for an .npz archive: its name must end in .npz (np.savez
    appends .npz to any other name)."""
    if Path(path).suffix != ".npz":
        raise ValueError(f"{path} does not end in .npz; an .npz archive is written there")
    return check_file_target(path)


def save_npz_atomic(path: Path, **arrays: np.ndarray) -> None:
    """np.savez through `atomic_path`, to a `check_npz_target`: `path` is absent, as it was,
    or complete."""
    with atomic_path(check_npz_target(path)) as tmp:
        np.savez(tmp, **arrays)


def load_npz(path) -> dict[str, np.ndarray]:
    """Every array of the .npz archive `path`, read in full (so its checksums are checked).
    FileNotFoundError if it is absent; UnreadableFile naming it if it is not a readable .npz
    archive (truncated, damaged, an .npy array or another format)."""
    path = Path(path)
    try:
        saved = np.load(path, allow_pickle=False)
        if isinstance(saved, np.ndarray):
            raise UnreadableFile(f"{path} holds a single .npy array, not an .npz archive")
        with saved:
            return {k: saved[k] for k in saved.files}
    except UnreadableFile:
        raise
    except (ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UnreadableFile(f"{path} cannot be read as an .npz archive "
                             f"({type(e).__name__}: {e})") from None


CHUNK_TAG = "__chunk__"  # the array of a stored chunk naming its computation and rows


def chunked(total: int, chunk: int, compute, *, store: Path | None = None,
            fingerprint: str = "", description: str = "", progress: bool = True,
            share: tuple[int, int] | None = None) -> list[dict[str, np.ndarray]]:
    """[compute(start, stop) for each chunk of rows [start, stop) of range(total)], in order,
    with a progress bar over rows.

    With `store` (a directory), each finished chunk is saved there atomically and a rerun
    with the same `fingerprint` (what the chunks depend on) loads it instead of computing it
    again; a directory holding another fingerprint is an error, and an unreadable chunk, or
    one that does not carry this fingerprint and its rows (copied from another store), is
    computed again.

    With a store and several processes (dynsys.distributed: DYNSYS_NUM_PROCESSES, or
    jax.distributed), chunk i is computed by process i mod P (`share` = (index, count)
    overrides that); each process then waits for the others' chunks in the shared store and
    returns them all. Without a store every process computes every chunk.
    """
    index, count = ((distributed.process() if share is None else share) if store is not None
                    else (0, 1))
    if store is not None:
        store = Path(store)
        store.mkdir(parents=True, exist_ok=True)
        meta = store / "chunks.json"
        try:
            held = json.loads(meta.read_text()).get("fingerprint", fingerprint)
        except (FileNotFoundError, ValueError, AttributeError):  # none, or damaged: rewritten
            held = fingerprint  # (each chunk carries its own fingerprint)
        if held != fingerprint:
            raise ValueError(f"{store} holds chunks of a different computation (model, prompt, "
                             "rows, offsets, chunk or kernel differ); use another directory")
        distributed.claim(store, (index, count))
        with atomic_path(meta) as tmp:
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "rows": total,
                                       "chunk": chunk}))
    starts = range(0, total, chunk)

    def name(start: int) -> str:
        return f"chunk_{start // chunk:06d}.npz"

    def tag(start: int) -> np.ndarray:
        """What a chunk file carries (as CHUNK_TAG) to be taken for rows [start, stop)."""
        return np.array(f"{fingerprint} rows {start}..{min(start + chunk, total)}")

    def load(start: int) -> dict[str, np.ndarray] | None:
        """The stored chunk at `start`, or None: absent, unreadable or another's."""
        try:
            part = load_npz(store / name(start))
        except (FileNotFoundError, UnreadableFile):
            return None
        return part if str(part.pop(CHUNK_TAG, None)) == str(tag(start)) else None

    def computed(start: int) -> dict[str, np.ndarray]:
        part = compute(start, min(start + chunk, total))
        if store is not None:
            save_npz_atomic(store / name(start), **part, **{CHUNK_TAG: tag(start)})
        return part

    mine = set(distributed.share(starts, (index, count)))
    parts = {}
    # A transient bar only on a terminal: written to a file or pipe it cannot vanish, and rich
    # ends each such bar with a blank line (E9's maps, one bar per map, printed a hundred).
    with Progress(disable=not progress or not get_console().is_terminal, transient=True) as bar:
        task = bar.add_task(description, total=total)
        for start in starts:
            if start not in mine:
                continue
            part = load(start) if store is not None else None
            parts[start] = computed(start) if part is None else part
            bar.advance(task, min(start + chunk, total) - start)
    if count > 1:  # the other processes' chunks, from the shared store
        others = [s for s in starts if s not in mine]
        owners = {name(s): i % count for i, s in enumerate(starts)}
        distributed.wait_for(lambda: [name(s) for s in others if not (store / name(s)).exists()],
                             f"{store}: process {index} of {count}", owner=owners.get,
                             claims=store, where=(index, count))
        for start in others:  # damaged or another's: compute it here
            part = load(start)
            parts[start] = computed(start) if part is None else part
    return [parts[start] for start in starts]


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
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
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


def set_aside(path: Path, reason: str) -> Path:
    """Move a damaged unit to NAME.npz.corrupt-TIME beside it, with a warning giving `reason`:
    it then counts as missing, and a rerun computes it again."""
    aside = path.with_name(f"{path.name}.corrupt-{datetime.datetime.now():%Y%m%dT%H%M%S%f}")
    os.replace(path, aside)
    log.warning("%s; moved to %s and counted as missing", reason, aside)
    return aside


class Unit(dict):
    """A stored unit's arrays {name: array}. An array asked for that it does not hold (a
    readable .npz with other arrays: another computation's, or tampered with) makes it a
    damaged unit: the file is set aside and RunError says so, in one line; a rerun computes
    it again (it was a KeyError)."""

    def __init__(self, arrays: dict[str, np.ndarray], path: Path):
        super().__init__(arrays)
        self.path = path

    def __missing__(self, key):
        reason = (f"{self.path} holds no array {key!r} (it holds {sorted(self)}): not this "
                  "computation's unit")
        if self.path.exists():
            set_aside(self.path, reason)
        raise RunError(f"{reason}; set aside: rerun to compute it again")


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

    def _unit(self, unit: str) -> Path:
        return self.path / "units" / f"{_check_name(unit)}.npz"

    def _read(self, unit: str) -> Unit | None:
        """The arrays of `unit`; None if it is not stored, or if it cannot be read: then the
        file is moved aside to units/NAME.npz.corrupt-TIME, with a warning."""
        path = self._unit(unit)
        try:
            return Unit(load_npz(path), path)
        except FileNotFoundError:
            return None
        except UnreadableFile as e:
            set_aside(path, str(e))
            return None

    def has(self, unit: str) -> bool:
        """Whether `unit` is stored and readable (it is read in full; see `_read`)."""
        return self._read(unit) is not None

    def save(self, unit: str, **arrays) -> None:
        save_npz_atomic(self._unit(unit), **{k: np.asarray(v) for k, v in arrays.items()})

    def load(self, unit: str) -> Unit:
        """The arrays of `unit` (a `Unit`: asking it for an array it lacks is a damaged unit);
        RunError if it is not stored or cannot be read (see `_read`)."""
        arrays = self._read(unit)
        if arrays is None:
            raise RunError(f"{self.path} has no readable unit {unit!r} (finished: "
                           f"{self.units()}; an unreadable one is moved aside)")
        return arrays

    def fill(self, keys, name, compute, description: str, progress: bool = True) -> None:
        """Save compute(*key) (a dict of arrays) as unit name(*key) for every key whose unit
        is not stored yet or cannot be read (see `has`), in order, with a progress bar over
        the missing ones.

        With several processes (dynsys.distributed), key i is computed by process i mod P
        only, and every process returns once all units are stored (each written atomically
        into this shared directory); see `distributed.wait_for` for a process that died."""
        keys = list(keys)
        index, count = distributed.process()
        todo = [key for key in distributed.share(keys, (index, count))
                if not self.has(name(*key))]
        with Progress(disable=not progress or not todo) as bar:
            for key in bar.track(todo, description=description):
                self.save(name(*key), **compute(*key))
        if count > 1:
            owners = {name(*key): i % count for i, key in enumerate(keys)}
            distributed.wait_for(lambda: [name(*key) for key in keys
                                          if not self._unit(name(*key)).exists()],
                                 f"{self.path}: process {index} of {count}", owner=owners.get,
                                 claims=self.path, where=(index, count))

    def units(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "units").glob("*.npz")
                      if not p.name.startswith("."))

    def settings(self, cls):
        """The run's settings as `cls` (the experiment's Config, a settings dataclass; the
        stored lists become its tuples again), so that readers use typed fields."""
        return cls(**self.config)

    def _table(self, name: str) -> Path:
        return self.path / "tables" / f"{_check_name(name)}.csv"

    def has_table(self, name: str) -> bool:
        """Whether table `name` was written."""
        return self._table(name).exists()

    def write_table(self, name: str, rows: list[dict]) -> Path:
        """rows (dicts with the same keys) as CSV, written atomically."""
        if not rows:
            raise RunError(f"table {name!r} has no rows")
        path = self._table(name)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return path

    def read_table(self, name: str) -> list[Row]:
        """The CSV's rows (`Row`s), with ints, floats and booleans parsed back. A table that
        `write_table` cannot have written (not UTF-8 CSV, a header and no rows, a row with more
        or fewer fields than the header) is a one-line RunError naming it."""
        path = self._table(name)
        if not path.exists():
            raise RunError(f"{self.path} has no table {name!r}")
        damaged = f"is damaged: rerun the study to write {path.name} again"
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (UnicodeDecodeError, csv.Error) as e:
            raise RunError(f"{path} is not a CSV table ({type(e).__name__}: {e}); it "
                           f"{damaged}") from None
        if not rows:
            raise RunError(f"{path} has no rows; it {damaged}")
        for i, row in enumerate(rows, 2):
            if None in row or None in row.values():
                raise RunError(f"{path} line {i} has {'more' if None in row else 'fewer'} "
                               f"fields than its header; it {damaged}")
        return [Row({k: _parse(v) for k, v in row.items()}, path) for row in rows]


class Row(dict):
    """A table's row {column: value}; a column asked for that the table lacks (a damaged or
    foreign table) is a one-line RunError naming the table, not a KeyError."""

    def __init__(self, values: dict, path: Path):
        super().__init__(values)
        self.path = path

    def __missing__(self, key):
        raise RunError(f"{self.path} has no column {key!r} (its columns: {', '.join(self)}); "
                       f"it is damaged or another study's: rerun the study to write it again")


def _parse(text: str):
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# run.json's fields that are read, and what each must hold (a damaged or hand-edited file
# otherwise ends in an AttributeError).
_META_FIELDS = {"experiment": str, "config": dict, "inputs": dict, "provenance": dict,
                "resumed": list}


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads((path / "run.json").read_text())
    except FileNotFoundError:
        raise RunError(f"{path} is not a run directory (no run.json)") from None
    except json.JSONDecodeError as e:
        raise RunError(f"{path / 'run.json'} is not valid JSON: {e}") from None
    if not isinstance(meta, dict):
        raise RunError(f"{path / 'run.json'} holds {type(meta).__name__}, not a JSON object")
    for key, kind in _META_FIELDS.items():
        if key in meta and not isinstance(meta[key], kind):
            raise RunError(f"{path / 'run.json'}'s field {key!r} holds "
                           f"{type(meta[key]).__name__}, not {kind.__name__}")
    if meta.get("format") != FORMAT:
        writer = meta.get("provenance", {}).get("packages", {}).get("dynsys")
        raise RunError(f"{path} was written in run format {meta.get('format')!r} (dynsys "
                       f"{writer}); this dynsys reads format {FORMAT}. Nothing was changed; "
                       "use another directory or the dynsys version that wrote it")
    for key in ("experiment", "config"):
        if key not in meta:
            raise RunError(f"{path / 'run.json'} lacks the field {key!r}")
    return meta


def _differences(old: dict, new: dict) -> str:
    """'key: old there, new now' for every key whose value differs."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys)


def open_run(path, experiment: str, config, seeds: dict | None = None,
             inputs: dict | None = None) -> Run:
    """Create the run directory `path`, or reopen it to resume.

    `inputs` identifies what the run reads besides its config (a mapping of names to digests,
    e.g. {"model": the checkpoint's digest}). Reopening needs the same experiment, config (a
    dataclass or mapping) and inputs; a difference raises RunError naming it, and nothing is
    written. A resumed session's provenance is appended to run.json's `resumed` list. A new
    run whose run.json cannot be written leaves no directory behind.

    With several processes (dynsys.distributed) sharing `path`, process 0 creates or resumes
    it as above; every other process waits for its run.json, checks it the same way and
    writes nothing (the provenance is process 0's). Each claims its index in `path` once
    run.json exists (`distributed.claim`: a duplicate index or another count is refused).
    """
    path = Path(path)
    config = _plain(config)
    inputs = _plain(inputs or {})
    index, count = distributed.process()
    if index > 0:
        distributed.wait_for(lambda: [] if (path / "run.json").exists() else ["run.json"],
                             f"{path}: process {index} of {count} waits for process 0",
                             owner=lambda _: 0)
    if (path / "run.json").exists():
        distributed.claim(path, (index, count))
        meta = _read_meta(path)
        if meta["experiment"] != experiment:
            raise RunError(f"{path} holds experiment {meta['experiment']!r}, not "
                           f"{experiment!r}; nothing was changed")
        if meta["config"] != config:
            raise RunError(f"{path} was run with another config "
                           f"({_differences(meta['config'], config)}); nothing was changed; "
                           "use another directory to run this config")
        if "inputs" not in meta:
            log.warning("%s records no inputs (it predates them); resuming it with %s",
                        path / "run.json", inputs)
            meta["inputs"] = inputs
        elif meta["inputs"] != inputs:
            raise RunError(f"{path} was run on other inputs "
                           f"({_differences(meta['inputs'], inputs)}); nothing was changed; "
                           "use another directory to run on these")
        if index > 0:
            for sub in ("units", "tables", "figures"):
                (path / sub).mkdir(exist_ok=True)
            return Run(path=path, experiment=experiment, config=config, meta=meta)
        meta.setdefault("resumed", []).append(provenance(seeds))
    elif path.exists() and any(path.iterdir()):
        raise RunError(f"{path} exists, is not empty and is not a run directory; "
                       "nothing was changed")
    else:
        meta = {"format": FORMAT, "experiment": experiment, "config": config, "inputs": inputs,
                "provenance": provenance(seeds), "resumed": []}
    text = json.dumps(meta, indent=1)  # a value JSON cannot hold fails here, before any write
    made = [p for p in (path, *path.parents) if not p.exists()]  # deepest first
    try:
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / "run.json") as tmp:
            tmp.write_text(text)
    except BaseException:
        for directory in made:  # only what this call created, still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    for sub in ("units", "tables", "figures"):
        (path / sub).mkdir(exist_ok=True)
    distributed.claim(path, (index, count))
    return Run(path=path, experiment=experiment, config=config, meta=meta)


def read_run(path) -> Run:
    """An existing run directory, read-only use (figures, tables)."""
    path = Path(path)
    meta = _read_meta(path)
    return Run(path=path, experiment=meta["experiment"], config=meta["config"], meta=meta)
