"""Several processes (hosts) on one job: who I am, my share of the work units, waiting for
the others' units, and `jax.distributed` from the environment.

Two ways to run P processes, both configured by the environment:

    DYNSYS_NUM_PROCESSES   P, the number of processes (default 1)
    DYNSYS_PROCESS_ID      this process's index in 0..P-1
    DYNSYS_COORDINATOR     host:port of process 0's coordinator, or "auto" (JAX detects the
                           cluster), for `initialize` only
    DYNSYS_WAIT_S          seconds a process waits for the others' units without any new one
                           appearing before it gives up (default 3600)

1. **Units divided, no collectives** (what maps and studies need). Each process reads
   (index, count) = `process()` from DYNSYS_PROCESS_ID / DYNSYS_NUM_PROCESSES. Work that
   is stored as units in a shared directory (`dynsys.runs.Run.fill`: a study's units;
   `dynsys.runs.chunked` with a store: the Markov map's chunks) is divided by `share`: unit i
   of the full list goes to process i mod P. Each process computes the missing units of its
   share, writes each atomically into the shared directory, then waits (`wait_for`) until
   every unit is there and assembles the whole result itself. Nothing passes between the
   processes but files, so a dead process costs only its missing units: the others give up
   after DYNSYS_WAIT_S seconds without progress (naming what is missing and whose), and a
   rerun (with any number of processes, one included) computes only what is missing.
   Each process first claims its index in the shared directory (`claim`: DIR/.processes/
   <index>.json, flock'ed while the process lives), so that two processes given the same
   index, or processes given different counts, are refused at start with a one-line
   ValueError instead of waiting an hour; a waiting process checks the claims as it polls
   and names the processes that hold none (never started, or ended).
2. **One JAX runtime over all hosts** (`initialize`): `jax.distributed.initialize` with
   the coordinator address, process count and process id from DYNSYS_COORDINATOR,
   DYNSYS_NUM_PROCESSES and DYNSYS_PROCESS_ID (DYNSYS_COORDINATOR=auto: JAX's own
   detection of Cloud TPU slices, SLURM, Open MPI; or JAX_COORDINATOR_ADDRESS). Then
   jax.devices() lists every host's devices, collectives run across hosts (gloo on CPU,
   NCCL on GPU, ICI/DCN on TPU), and `process()` is JAX's process index and count. The
   unit division above works the same inside it.

`import dynsys.distributed` loads no numerical library; JAX is imported by `initialize` only.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

ENV_COORDINATOR = "DYNSYS_COORDINATOR"
ENV_NUM_PROCESSES = "DYNSYS_NUM_PROCESSES"
ENV_PROCESS_ID = "DYNSYS_PROCESS_ID"
ENV_WAIT = "DYNSYS_WAIT_S"
DEFAULT_WAIT_S = 3600.0
POLL_S = 0.2
REPORT_S = 60.0  # a waiting process logs what it waits for this often
CLAIMS = ".processes"  # DIR/.processes/<index>.json: the processes working in DIR
_held: dict[Path, int] = {}  # this process's claim files -> their open, flock'ed descriptors


class Incomplete(TimeoutError):
    """Units of other processes did not appear in time (a process died or stalls): rerun to
    compute them; what is stored is kept. An OSError (TimeoutError), so that the CLI ends with
    it as one line."""


def _env_int(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} must be an integer") from None


def _jax_initialized() -> bool:
    jax = sys.modules.get("jax")
    return jax is not None and jax.distributed.is_initialized()


def process() -> tuple[int, int]:
    """(index, count) of this process: JAX's process index and count once
    `jax.distributed` is initialized, else DYNSYS_PROCESS_ID and DYNSYS_NUM_PROCESSES (both
    or neither; 0 <= index < count), else (0, 1)."""
    if _jax_initialized():
        import jax

        return jax.process_index(), jax.process_count()
    count, index = _env_int(ENV_NUM_PROCESSES), _env_int(ENV_PROCESS_ID)
    if count is None and index is None:
        return 0, 1
    if count is None or index is None:
        raise ValueError(f"set both {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID} (or neither); "
                         f"got {ENV_NUM_PROCESSES}={count}, {ENV_PROCESS_ID}={index}")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"{ENV_PROCESS_ID}={index} must lie in 0..{ENV_NUM_PROCESSES}-1 "
                         f"= 0..{count - 1}")
    return index, count


def share(items: Sequence, where: tuple[int, int] | None = None) -> list:
    """The items of process `where` = (index, count) (default: `process()`): item i goes to
    process i mod count."""
    index, count = process() if where is None else where
    return list(items)[index::count]


def wait_seconds() -> float:
    """DYNSYS_WAIT_S (default 3600): how long to wait without progress."""
    text = os.environ.get(ENV_WAIT, "").strip()
    try:
        value = float(text) if text else DEFAULT_WAIT_S
    except ValueError:
        raise ValueError(f"{ENV_WAIT}={text!r} must be a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{ENV_WAIT}={text!r} must be positive")
    return value


def _claim_file(directory: Path, index: int) -> Path:
    return Path(directory) / CLAIMS / f"{index}.json"


def claim(directory, where: tuple[int, int] | None = None) -> None:
    """Claim index `where` = (index, count) (default `process()`) in the shared `directory`,
    for as long as this process lives: DIR/.processes/<index>.json holds {index, count, pid,
    host, started} under an exclusive flock (the kernel drops it when the process ends, however
    it ends, so a claim left by a dead process is no claim). A one-line ValueError names the
    holder if another live process holds the index, and `check_claims` refuses a live claim
    with another count. Nothing with one process, or where the directory is read-only."""
    index, count = process() if where is None else where
    if count == 1:
        return
    path = _claim_file(directory, index)
    fd = _held.get(path)  # this process's own claim is made again with what it says now
    if fd is None:
        try:
            path.parent.mkdir(exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES):  # nothing can be written there anyway
                return
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0))
            os.close(fd)
            raise ValueError(f"{ENV_PROCESS_ID}={index} is taken in {directory} by another "
                             f"live process ({holder}): give every process its own index"
                             ) from None
        _held[path] = fd
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"index": index, "count": count, "pid": os.getpid(),
                              "host": socket.gethostname(),
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
    try:
        check_claims(directory, (index, count))
    except ValueError:
        os.close(_held.pop(path))  # refused: the index is free again
        raise


def _holder(record: bytes | dict) -> str:
    """'pid P on HOST since T' of a claim (its bytes or its record)."""
    try:
        found = json.loads(record) if isinstance(record, bytes) else record
        return f"pid {found.get('pid')} on {found.get('host')} since {found.get('started')}"
    except (ValueError, AttributeError):
        return "unknown"


def live_claims(directory) -> dict[int, dict]:
    """{index: claim} of the processes that hold a claim in `directory` now (this one's
    included): a claim file whose flock another process holds, or this process holds."""
    found = {}
    for path in sorted((Path(directory) / CLAIMS).glob("*.json")):
        if path not in _held:
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                continue  # nobody holds it: left by a process that ended
            except BlockingIOError:
                pass
            finally:
                os.close(fd)
        try:
            record = json.loads(path.read_text())
            found[int(record["index"])] = record
        except (OSError, ValueError, KeyError, TypeError):
            continue  # being written, or not a claim
    return found


def check_claims(directory, where: tuple[int, int] | None = None) -> None:
    """A one-line ValueError naming the process if a live claim in `directory` (see `claim`)
    was made with another process count than this process's `where` (default `process()`)."""
    index, count = process() if where is None else where
    for other, record in live_claims(directory).items():
        if record.get("count") != count:
            raise ValueError(
                f"process {other} in {directory} runs with {ENV_NUM_PROCESSES}="
                f"{record.get('count')} ({_holder(record)}), "
                f"process {index} with {count}: every process needs the same count")


def wait_for(missing: Callable[[], list[str]], what: str, timeout: float | None = None,
             owner: Callable[[str], int] | None = None, claims=None,
             where: tuple[int, int] | None = None) -> None:
    """Return once missing() (the names still absent, e.g. other processes' units) is empty.
    The clock restarts whenever the list shrinks; every REPORT_S seconds the wait is logged,
    and after `timeout` seconds (default `wait_seconds()`) without progress Incomplete is
    raised naming what is missing and, given `owner` (name -> process index), whose it is.
    Given `claims` (the shared directory of `claim`), each poll checks its live claims against
    this process's `where` (`check_claims`), and the owners that hold none are named so."""
    timeout = wait_seconds() if timeout is None else timeout
    left = missing()
    since = reported = time.monotonic()

    def owners() -> list[int]:
        return sorted({owner(name) for name in left}) if owner is not None else []

    def whose() -> str:
        if owner is None:
            return "other processes"
        return f"process{'es' if len(owners()) > 1 else ''} {', '.join(map(str, owners()))}"

    def absent() -> str:
        """'; process(es) I not running (...)' for the owners holding no live claim."""
        live = live_claims(claims) if claims is not None else {}
        if claims is None or not (gone := [i for i in owners() if i not in live]):
            return ""
        return (f"; process{'es' if len(gone) > 1 else ''} {', '.join(map(str, gone))} not "
                f"running (no live claim in {Path(claims) / CLAIMS}: never started, or ended)")

    while left:
        if claims is not None:
            check_claims(claims, where)
        if time.monotonic() - since > timeout:
            shown = ", ".join(left[:8]) + (f" and {len(left) - 8} more" if len(left) > 8 else "")
            raise Incomplete(f"{what}: {len(left)} unit(s) of {whose()} still missing "
                             f"after {timeout:g} s without progress ({shown}){absent()}; a "
                             "process died or stalls. What is stored is kept: rerun (with any "
                             "number of processes) to compute only what is missing")
        if time.monotonic() - reported > REPORT_S:
            reported = time.monotonic()
            log.warning("%s: waiting for %d unit(s) of %s (%.0f s without progress; giving "
                        "up after %g s)%s", what, len(left), whose(), reported - since, timeout,
                        absent())
        time.sleep(POLL_S)
        now = missing()
        if len(now) < len(left):
            since = time.monotonic()
        left = now


def initialize(**options) -> tuple[int, int]:
    """`jax.distributed.initialize` from the environment; returns `process()`.

    DYNSYS_COORDINATOR=host:port (process 0's host; any free port) with DYNSYS_NUM_PROCESSES
    and DYNSYS_PROCESS_ID: those three. DYNSYS_COORDINATOR=auto: JAX's cluster detection
    (Cloud TPU slices, SLURM, Open MPI, Kubernetes/GKE). DYNSYS_COORDINATOR unset but JAX's
    own JAX_COORDINATOR_ADDRESS set: that address, with DYNSYS_NUM_PROCESSES and
    DYNSYS_PROCESS_ID where set (else detected). Neither: nothing is initialized (one
    process, or units divided by DYNSYS_PROCESS_ID / DYNSYS_NUM_PROCESSES alone). Call it
    before anything else touches JAX's devices; `options` go to jax.distributed.initialize
    (e.g. initialization_timeout, local_device_ids)."""
    import jax

    if jax.distributed.is_initialized():
        return process()
    coordinator = os.environ.get(ENV_COORDINATOR, "").strip() or None
    count, index = _env_int(ENV_NUM_PROCESSES), _env_int(ENV_PROCESS_ID)
    if coordinator == "auto":
        jax.distributed.initialize(**options)
    elif coordinator is not None:
        if count is None or index is None:
            raise ValueError(f"{ENV_COORDINATOR}={coordinator} needs {ENV_NUM_PROCESSES} and "
                             f"{ENV_PROCESS_ID} too")
        process()  # checks the pair
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=count,
                                   process_id=index, **options)
    elif os.environ.get("JAX_COORDINATOR_ADDRESS"):
        jax.distributed.initialize(num_processes=count, process_id=index, **options)
    return process()
