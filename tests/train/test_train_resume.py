"""A run killed with SIGKILL midway resumes to the bit-identical state of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from train_helpers import periodic_tokens, tiny_config

from dynsys.train import read_log, train

CONFIG = tiny_config()  # the config of test_train_run: this process compiles its step once
KILL_AFTER = 37  # the child kills itself once the log holds this step (states: every 25)

# Trains in a child process that SIGKILLs itself, from a watcher thread, once the log shows
# step KILL_AFTER: a kill at an arbitrary point between two saved states.
CHILD = """
import os, signal, sys, threading, time
from pathlib import Path
from train_helpers import periodic_tokens, tiny_config
from dynsys.train import train

out, kill_after = Path(sys.argv[1]), int(sys.argv[2])

def watch():
    while True:
        log = out / "log.csv"
        if log.exists() and len(log.read_text().splitlines()) > kill_after + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.001)

threading.Thread(target=watch, daemon=True).start()
train(tiny_config(), periodic_tokens(20_000), periodic_tokens(2_000), out,
      progress=False)
"""


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    tokens, heldout = periodic_tokens(20_000), periodic_tokens(2_000)
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    child = subprocess.run([sys.executable, "-c", CHILD, str(killed), str(KILL_AFTER)],
                           env=env, capture_output=True, timeout=300, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    interrupted_at = read_log(killed / "log.csv")[-1]["step"]
    assert KILL_AFTER <= interrupted_at < CONFIG.steps

    resumed = train(CONFIG, tokens, heldout, killed, progress=False)
    assert resumed.resumed_from is not None and resumed.resumed_from % CONFIG.save_every == 0
    assert KILL_AFTER - CONFIG.save_every < resumed.resumed_from <= interrupted_at
    uninterrupted = train(CONFIG, tokens, heldout, whole, progress=False)
    assert resumed.step == uninterrupted.step == CONFIG.steps

    # Every bit of the final state (parameters, optimizer moments, counters, data position)
    # and of every checkpoint agrees; the log has each step once, with the same numbers.
    for name in ("state/step_0000100/state.safetensors",
                 *(f"checkpoints/{p.name}/model.safetensors" for p in uninterrupted.checkpoints)):
        assert (killed / name).read_bytes() == (whole / name).read_bytes(), name
    assert [p.name for p in resumed.checkpoints] == [p.name for p in uninterrupted.checkpoints]

    def numbers(directory):
        return [{k: v for k, v in row.items() if k != "wall_time"}
                for row in read_log(directory / "log.csv")]

    assert numbers(killed) == numbers(whole)
    assert [row["step"] for row in read_log(killed / "log.csv")] == list(range(CONFIG.steps + 1))
