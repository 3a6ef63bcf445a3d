"""Several processes on one job (dynsys.distributed): two local processes share a Markov map's
chunks and a study's units through one directory and get the single-process result; a process
killed midway costs only its missing units, which a rerun computes.

Each process is `worker` below, started as its own Python (JAX fixes its processes and devices
when it starts). The model is a random one of conftest.CONFIGS saved as a checkpoint, so that
the workers need neither torch nor transformers.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dynsys import distributed

HERE = Path(__file__).resolve().parent
CHUNK = 32  # 257 rows: 9 chunks, 5 for process 0 and 4 for process 1
E1 = {"ngrams": [1, 2], "length": 16, "new_tokens": 24, "prompts": 4, "batch": 2, "seed": 0}
TIMEOUT = 120


def worker(ckpt: str, prompt_file: str, store: str, run_dir: str, out: str) -> None:
    """One process: (with DYNSYS_COORDINATOR) jax.distributed over loopback and a collective;
    the Markov map of the prompt, chunks shared in `store`; E1 on the checkpoint in
    `run_dir`. With MH_DIE_AFTER=k it stops (and waits to be killed) after its k-th saved
    file, having marked it in MH_MARK."""
    import dynsys.runs

    index, count = distributed.initialize(initialization_timeout=60)
    if os.environ.get(distributed.ENV_COORDINATOR):
        import jax
        import jax.numpy as jnp
        from jax.experimental import multihost_utils

        assert jax.distributed.is_initialized() and jax.device_count() == count
        got = multihost_utils.process_allgather(jnp.array([index]))
        assert got.ravel().tolist() == list(range(count)), got
        print(f"process {index}/{count}: {jax.device_count()} devices, allgather {got.ravel()}",
              flush=True)
    if os.environ.get("MH_DIE_AFTER"):
        save, saved = dynsys.runs.save_npz_atomic, []

        def save_then_stop(path, **arrays):
            save(path, **arrays)
            saved.append(path)
            if len(saved) == int(os.environ["MH_DIE_AFTER"]):
                Path(os.environ["MH_MARK"]).write_text(str(path))
                time.sleep(TIMEOUT)  # killed here

        dynsys.runs.save_npz_atomic = save_then_stop

    from dynsys import studies
    from dynsys.dynamics.markov import markov_map
    from dynsys.io import load

    model = load(ckpt)
    prompt = np.load(prompt_file)["prompt"]
    fmap = markov_map(model, prompt, chunk=CHUNK, resume_dir=store, progress=False)
    np.savez(out, next=fmap.next, margin=fmap.margin)
    if os.environ.get("MH_STUDY", "1") == "1":
        studies.run_study("e1", run_dir, "small", {**E1, "model": ckpt}, progress=False, draw=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp: Path, tag: str, index: int, count: int, env: dict) -> subprocess.Popen:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_multihost as t; "
            f"t.worker(*sys.argv[1:])")
    args = [str(tmp / "ckpt"), str(tmp / "prompt.npz"), str(tmp / f"{tag}-chunks"),
            str(tmp / f"{tag}-run"), str(tmp / f"{tag}-map{index}.npz")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", distributed.ENV_NUM_PROCESSES: str(count),
           distributed.ENV_PROCESS_ID: str(index), distributed.ENV_WAIT: "60", **env}
    env.pop("XLA_FLAGS", None)
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, cwd=HERE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    return [(p.wait(TIMEOUT), p.stdout.read()) for p in procs]


def stored(directory: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime) of every file (atomic writes replace the inode)."""
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in directory.rglob("*.npz")}


def same_run(got: Path, want: Path) -> None:
    """Every unit's arrays and every table equal."""
    from dynsys.runs import load_npz

    units = sorted(p.name for p in (want / "units").glob("*.npz"))
    assert units and units == sorted(p.name for p in (got / "units").glob("*.npz"))
    for name in units:
        a, b = load_npz(got / "units" / name), load_npz(want / "units" / name)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name}:{key}")
    tables = sorted(p.name for p in (want / "tables").glob("*.csv"))
    assert tables == sorted(p.name for p in (got / "tables").glob("*.csv"))
    for name in tables:
        assert (got / "tables" / name).read_text() == (want / "tables" / name).read_text(), name


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The checkpoint, the prompt and the single-process map and E1 run."""
    from conftest import CONFIGS, random_model

    from dynsys import studies
    from dynsys.dynamics.markov import markov_map
    from dynsys.io import load, save_hf

    tmp = tmp_path_factory.mktemp("multihost")
    save_hf(random_model(CONFIGS["llama-g1"], seed=5), tmp / "ckpt")
    model = load(tmp / "ckpt")
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, 24).astype(np.int32)
    np.savez(tmp / "prompt.npz", prompt=prompt)
    saved = {k: os.environ.pop(k) for k in (distributed.ENV_NUM_PROCESSES,
                                            distributed.ENV_PROCESS_ID) if k in os.environ}
    try:
        fmap = markov_map(model, prompt, chunk=CHUNK, progress=False)
        studies.run_study("e1", tmp / "one-run", "small", {**E1, "model": str(tmp / "ckpt")},
                          progress=False, draw=False)
    finally:
        os.environ.update(saved)
    return tmp, fmap


def test_share_and_process_from_the_environment(monkeypatch):
    monkeypatch.delenv(distributed.ENV_NUM_PROCESSES, raising=False)
    monkeypatch.delenv(distributed.ENV_PROCESS_ID, raising=False)
    assert distributed.process() == (0, 1)
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "3")
    with pytest.raises(ValueError, match="set both"):
        distributed.process()
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
    with pytest.raises(ValueError, match="must lie in 0..DYNSYS_NUM_PROCESSES-1 = 0..2"):
        distributed.process()
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
    assert distributed.process() == (1, 3)
    assert distributed.share(range(8)) == [1, 4, 7]
    with pytest.raises(distributed.Incomplete, match=r"2 unit\(s\).*\(a, b\).*rerun"):
        distributed.wait_for(lambda: ["a", "b"], "demo", timeout=0.3)


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one(reference):
    tmp, fmap = reference
    env = {distributed.ENV_COORDINATOR: f"127.0.0.1:{free_port()}"}
    done = finish([start(tmp, "jd", i, 2, env) for i in range(2)])
    for rc, out in done:
        assert rc == 0, out[-4000:]
    assert "process 1/2: 2 devices, allgather [0 1]" in done[1][1]
    for i in range(2):
        got = np.load(tmp / f"jd-map{i}.npz")
        np.testing.assert_array_equal(got["next"], fmap.next)
        np.testing.assert_array_equal(got["margin"], fmap.margin)
    same_run(tmp / "jd-run", tmp / "one-run")


@pytest.mark.slow
def test_a_killed_process_costs_only_its_missing_units(reference):
    tmp, fmap = reference
    mark = tmp / "killed.mark"
    quick = {"MH_STUDY": "0", distributed.ENV_WAIT: "3"}  # the survivor gives up after 3 s
    procs = [start(tmp, "kill", 0, 2, quick),
             start(tmp, "kill", 1, 2, {**quick, "MH_DIE_AFTER": "2", "MH_MARK": str(mark)})]
    deadline = time.monotonic() + TIMEOUT
    while not mark.exists():
        assert procs[1].poll() is None and time.monotonic() < deadline, procs[1].stdout.read()
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGKILL)  # after its 2nd of 4 chunks
    (rc0, out0), (rc1, _) = finish(procs)
    assert rc1 == -signal.SIGKILL
    assert rc0 != 0 and "Incomplete" in out0 and "rerun" in out0, out0[-3000:]
    before = stored(tmp / "kill-chunks")
    assert len(before) == 7  # 5 of process 0, 2 of process 1
    done = finish([start(tmp, "kill", i, 2, {"MH_STUDY": "0"}) for i in range(2)])
    for rc, out in done:
        assert rc == 0, out[-4000:]
    after = stored(tmp / "kill-chunks")
    assert len(after) == 9 and all(after[k] == v for k, v in before.items())  # not redone
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp / f"kill-map{i}.npz")["next"], fmap.next)


def test_a_run_left_incomplete_is_completed_by_any_number_of_processes(tmp_path, monkeypatch):
    """Process 0 of 2 fills its share (units 0, 2, 4) and gives up waiting for process 1,
    which never came; one process then computes only units 1, 3, 5."""
    from dynsys.runs import open_run

    calls = []

    def compute(i):
        calls.append(i)
        return {"x": np.full(3, i)}

    def name(i):
        return f"u{i}"

    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "0")
    run = open_run(tmp_path / "r", "demo", {"units": 6})
    monkeypatch.setenv(distributed.ENV_WAIT, "0.5")
    with pytest.raises(distributed.Incomplete, match=r"process 0 of 2: 3 unit\(s\)"):
        run.fill([(i,) for i in range(6)], name, compute, "demo", progress=False)
    assert calls == [0, 2, 4]
    monkeypatch.delenv(distributed.ENV_NUM_PROCESSES)
    monkeypatch.delenv(distributed.ENV_PROCESS_ID)
    run = open_run(tmp_path / "r", "demo", {"units": 6})
    run.fill([(i,) for i in range(6)], name, compute, "demo", progress=False)
    assert calls == [0, 2, 4, 1, 3, 5]
    assert [int(run.load(name(i))["x"][0]) for i in range(6)] == list(range(6))


def test_process_one_opens_the_run_of_process_zero(tmp_path, monkeypatch):
    from dynsys.runs import RunError, open_run

    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, "2")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
    monkeypatch.setenv(distributed.ENV_WAIT, "0.3")
    with pytest.raises(distributed.Incomplete, match="waits for process 0"):
        open_run(tmp_path / "r", "demo", {"n": 1})
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "0")
    open_run(tmp_path / "r", "demo", {"n": 1})
    before = (tmp_path / "r" / "run.json").read_text()
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "1")
    assert open_run(tmp_path / "r", "demo", {"n": 1}).config == {"n": 1}
    with pytest.raises(RunError, match="another config"):
        open_run(tmp_path / "r", "demo", {"n": 2})
    assert (tmp_path / "r" / "run.json").read_text() == before  # process 1 writes nothing


def test_a_wait_names_the_missing_process_and_reports_progress(tmp_path, monkeypatch, caplog):
    """Only process 0 of 3 started: it waited silently, then named no process."""
    from dynsys import runs

    monkeypatch.setenv(distributed.ENV_WAIT, "0.6")
    monkeypatch.setattr(distributed, "REPORT_S", 0.2)
    with caplog.at_level("WARNING", logger="dynsys.distributed"), \
            pytest.raises(distributed.Incomplete, match=r"4 unit\(s\) of processes 1, 2 still"):
        runs.chunked(6, 1, lambda a, b: {"x": np.arange(a, b)}, store=tmp_path,
                     fingerprint="f", progress=False, share=(0, 3))
    assert "waiting for 4 unit(s) of processes 1, 2" in caplog.text
    assert "processes 1, 2 not running (no live claim" in caplog.text
    # two processes now: process 0 adds chunks 2 and 4; 3 is there; 1 and 5 are process 1's
    with pytest.raises(distributed.Incomplete, match=r"2 unit\(s\) of process 1 still"):
        runs.chunked(6, 1, lambda a, b: {"x": np.arange(a, b)}, store=tmp_path,
                     fingerprint="f", progress=False, share=(0, 2))


def hold_claim(directory: Path, index: int, count: int) -> int:
    """Another live process's claim, as `distributed.claim` makes it: the claim file written
    and flock'ed through a descriptor of its own (close it to end that process)."""
    path = directory / distributed.CLAIMS / f"{index}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.pwrite(fd, json.dumps({"index": index, "count": count, "pid": 4242,
                              "host": "elsewhere", "started": "2026-01-01T00:00:00"}).encode(), 0)
    return fd


def as_process(monkeypatch, index: int, count: int) -> None:
    monkeypatch.setenv(distributed.ENV_NUM_PROCESSES, str(count))
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, str(index))


def test_a_duplicate_index_and_another_count_are_refused_at_start(tmp_path, monkeypatch):
    """The same id twice, and counts 2 against 3: each waited an hour in silence."""
    from dynsys.runs import open_run

    as_process(monkeypatch, 0, 2)
    open_run(tmp_path / "r", "demo", {"n": 1})
    other = hold_claim(tmp_path / "r", 1, 2)
    try:
        as_process(monkeypatch, 1, 2)
        taken = r"DYNSYS_PROCESS_ID=1 is taken .*\(pid 4242 on elsewhere since"
        with pytest.raises(ValueError, match=taken):
            open_run(tmp_path / "r", "demo", {"n": 1})
    finally:
        os.close(other)  # that process ends: its index is free
    as_process(monkeypatch, 2, 3)
    with pytest.raises(ValueError, match=r"^process 0 in .* runs with DYNSYS_NUM_PROCESSES=2"
                                         r".*process 2 with 3: every process needs the same"):
        open_run(tmp_path / "r", "demo", {"n": 1})
    assert not any(path.stat().st_size == 0 or (path.name == "2.json" and
                   distributed.live_claims(tmp_path / "r").get(2))
                   for path in (tmp_path / "r" / distributed.CLAIMS).iterdir())
    as_process(monkeypatch, 1, 2)  # a claim left by a process that ended is no claim
    assert open_run(tmp_path / "r", "demo", {"n": 1}).config == {"n": 1}
    assert set(distributed.live_claims(tmp_path / "r")) == {0, 1}


def test_a_count_mismatch_appearing_while_waiting_ends_the_wait(tmp_path, monkeypatch):
    held = []

    def compute(a, b):
        if not held:  # process 1 starts with another count while process 0 computes
            held.append(hold_claim(tmp_path, 1, 3))
        return {"x": np.arange(a, b)}

    monkeypatch.setenv(distributed.ENV_WAIT, "30")
    try:
        with pytest.raises(ValueError, match="process 1 in .* DYNSYS_NUM_PROCESSES=3"):
            runs_chunked(tmp_path, compute, (0, 2))
    finally:
        os.close(held[0])


def runs_chunked(store: Path, compute, share: tuple[int, int]):
    from dynsys import runs

    return runs.chunked(6, 1, compute, store=store, fingerprint="f", progress=False,
                        share=share)


def test_a_process_that_never_started_is_named_in_one_line(tmp_path, monkeypatch):
    """Only process 0 of 2 started `dynsys map` (its map stood for by 4 chunks of a cheap
    computation in the same store: 1 and 3 are process 1's): the CLI ends with one line naming
    process 1 (it was an Incomplete traceback)."""
    from typer.testing import CliRunner

    from dynsys import cli, runs

    def markov_map(net, prompt, offset, resume_dir):
        return runs.chunked(4, 1, lambda a, b: {"x": np.arange(a, b)}, store=resume_dir,
                            fingerprint="f", progress=False)

    as_process(monkeypatch, 0, 2)
    monkeypatch.setenv(distributed.ENV_WAIT, "0.5")
    monkeypatch.setattr("dynsys.dynamics.markov.markov_map", markov_map)
    result = CliRunner().invoke(cli.app, ["map", "--length", "8", "--out",
                                          str(tmp_path / "map.npz")])
    last = result.output.strip().splitlines()[-1]  # after the progress bar
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert last.startswith("error: ") and "2 unit(s) of process 1 still missing" in last
    assert "process 1 not running (no live claim" in last
    assert not (tmp_path / "map.npz").exists()
