"""The experiment registry: settings, refusals, and a run killed midway that resumes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from study_helpers import CFG, save_checkpoint

import dynsys as ds
from dynsys import studies
from dynsys.io import checkpoint_digest
from dynsys.runs import RunError
from dynsys.studies import e2_agreement, sweep
from dynsys.studies.settings import Settings

MICRO_E2 = {"lengths": [16, 24, 32, 40, 48, 56], "G": 4, "prompts": 2, "kinds": ["random"]}


def test_every_study_has_the_same_face():
    for name, module in studies.STUDIES.items():
        assert name == module.NAME and module.TITLE
        # a study may have a smaller "verify" scale, the one `dynsys verify` runs
        assert set(module.SCALES) - {"verify"} == {"small", "paper"}
        assert module.SCALES["paper"] == module.Config()
        config = module.Config()
        assert isinstance(config, Settings)
        # one model (config.model), or several whose digests module.inputs states
        assert getattr(config, "model", None) or callable(getattr(module, "inputs", None))
        assert all(config.positions() > 0 for config in module.SCALES.values())
        for fn in ("run", "findings", "figures"):
            assert callable(getattr(module, fn))


def test_settings_are_checked():
    config = studies.config_for("e2", "small", {"G": 8, "lengths": [64, 128]})
    assert config.G == 8 and config.lengths == (64, 128)
    reinit = studies.config_for("e6", "small", {"initializer_range": 1})
    assert type(reinit.initializer_range) is float
    with pytest.raises(ValueError, match=r"prompts=0 must be >= 1"):
        e2_agreement.Config(prompts=0)  # no Config with a bad setting exists
    with pytest.raises(ValueError, match=r"unknown setting\(s\) 'steps'.*known: model"):
        studies.config_for("e2", "small", {"steps": 3})
    with pytest.raises(ValueError, match=r"e2: G='8' must be an integer"):
        studies.config_for("e2", "small", {"G": "8"})
    with pytest.raises(ValueError, match=r"lengths=\[64, 1\.5\] must be a non-empty list of "
                                         "integers"):
        studies.config_for("e2", "small", {"lengths": [64, 1.5]})
    with pytest.raises(ValueError, match="scale 'huge'"):
        studies.config_for("e2", "huge")
    with pytest.raises(ValueError, match="unknown experiment 'e99'"):
        studies.study("e99")


@pytest.mark.parametrize("name, overrides, message", [
    ("e1", {"batch": 0}, "e1: batch=0 must be >= 1"),
    ("e1", {"repeats": 1}, "e1: repeats=1 must be >= 2"),
    ("e1", {"ngrams": []}, "e1: ngrams=[] must be a non-empty list of integers"),
    ("e1", {"ngrams": [2, 0]}, r"e1: ngrams=[2, 0] must hold only values >= 1"),
    ("e1", {"ngrams": [2, 2]}, "e1: ngrams=[2, 2] repeats 2"),
    ("e1", {"new_tokens": 0}, "e1: new_tokens=0 must be >= 1"),
    ("e1", {"top": 0}, "e1: top=0 must be >= 1"),
    ("e1", {"length": -5}, "e1: length=-5 must be >= 8"),  # twice the longest N-gram, 4
    ("e1", {"ngrams": [300], "length": 8}, "e1: length=8 must be >= 600"),
    ("e2", {"G": -1}, "e2: G=-1 must be >= 4"),
    ("e2", {"prompts": 0}, "e2: prompts=0 must be >= 1"),
    ("e2", {"lengths": []}, "e2: lengths=[] must be a non-empty list of integers"),
    ("e2", {"lengths": [64, 0]}, "e2: lengths=[64, 0] must hold only values >= 1"),
    ("e2", {"seed": -1}, "e2: seed=-1 must be >= 0"),
    ("e2", {"seed": 2**64}, "e2: seed=18446744073709551616 must be an integer in"),
    ("e2", {"ngram": 0}, "e2: ngram=0 must be >= 1"),
    ("e2", {"kinds": ["words"]},
     "e2: kinds=['words'] must hold only values in ('ngram', 'random')"),
    ("e2", {"model": ""}, "e2: model='' must be a non-empty string"),
    ("e2", {"G": True}, "e2: G=True must be an integer"),
    ("e3", {"G": 1}, "e3: G=1 must be >= 2"),
    ("e4", {"shuffles": 0}, "e4: shuffles=0 must be >= 1"),
    ("e4", {"null_samples": 0}, "e4: null_samples=0 must be >= 1"),
    ("e5", {"repeats": 1}, "e5: repeats=1 must be >= 2"),
    ("e5", {"G": 1}, "e5: G=1 must be >= 2"),
    ("e6", {"offsets": 2}, "e6: offsets=2 must be >= 3"),
    ("e6", {"initializer_range": -0.1}, "e6: initializer_range=-0.1 must be >= 0"),
    ("e6", {"periods": [1, 1.0]}, "e6: periods=[1, 1.0] must be a non-empty list of integers"),
])
def test_every_setting_is_checked_before_the_run_directory_exists(tmp_path, name, overrides,
                                                                  message):
    with pytest.raises(ValueError) as error:
        studies.run_study(name, tmp_path / "r", "small", overrides, progress=False)
    assert message in str(error.value)
    assert not (tmp_path / "r").exists()


def test_settings_that_overflow_the_model_context_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"e2: .*40016 positions.*max_position_embeddings="
                                         r"32768"):
        studies.run_study("e2", tmp_path / "r", "small", {"lengths": [40000]}, progress=False)
    assert not (tmp_path / "r").exists()


def test_an_unreadable_checkpoint_fails_before_the_run_directory_exists(tmp_path_factory,
                                                                       tmp_path):
    ckpt = save_checkpoint(tmp_path_factory, seed=1)
    (ckpt / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(ValueError, match=f"{ckpt / 'model.safetensors'} is not a readable "
                                         "safetensors file"):
        studies.run_study("e2", tmp_path / "r", "small", {"model": str(ckpt), "lengths": [16]},
                          progress=False)
    assert not (tmp_path / "r").exists()


def test_resume_refuses_a_checkpoint_overwritten_with_other_weights(tmp_path_factory, tmp_path):
    ckpt = save_checkpoint(tmp_path_factory, seed=1)
    settings = {"model": str(ckpt), "lengths": [16], "G": 4, "prompts": 2, "kinds": ["random"]}
    run = studies.run_study("e2", tmp_path / "r", "small", settings, progress=False, draw=False)
    first = checkpoint_digest(ckpt)
    assert run.meta["inputs"] == {"model": first}
    ds.save_hf(ds.Model(CFG, ds.init_params(CFG, seed=2)), ckpt)  # other weights, same path
    second = checkpoint_digest(ckpt)
    before = (tmp_path / "r" / "run.json").read_text()
    with pytest.raises(RunError, match=f"model: '{first}' there, '{second}' now"):
        studies.run_study("e2", tmp_path / "r", "small", settings, progress=False)
    assert (tmp_path / "r" / "run.json").read_text() == before


def test_settings_files(tmp_path):
    (tmp_path / "s.toml").write_text('G = 8\nkinds = ["ngram"]\n')
    (tmp_path / "s.json").write_text('{"G": 8, "kinds": ["ngram"]}')
    read = studies.read_overrides
    assert read(tmp_path / "s.toml") == read(tmp_path / "s.json")
    (tmp_path / "bad.json").write_text('{"G": 8,')
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        studies.read_overrides(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="table of settings, not list"):
        studies.read_overrides(tmp_path / "list.json")


def test_bad_model_fails_before_the_run_directory_exists(tmp_path):
    with pytest.raises(ValueError, match="'nope' is neither a preset"):
        studies.run_study("e2", tmp_path / "r", overrides={"model": "nope"}, progress=False)
    assert not (tmp_path / "r").exists()


def test_killed_run_resumes_without_recomputing(tmp_path, monkeypatch):
    out = tmp_path / "e2"
    cmd = [sys.executable, "-m", "dynsys.cli", "run", "e2", "--out", str(out)]
    for key, value in MICRO_E2.items():
        cmd += ["--set", f"{key}={json.dumps(value)}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not list((out / "units").glob("[!.]*.npz")) and time.time() < deadline:
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in (out / "units").glob("[!.]*.npz")}
    total = 2 * len(MICRO_E2["lengths"])
    assert 0 < len(finished) < total
    assert not (out / "tables" / "agreement.csv").exists()

    computed = []
    original = sweep._unit
    monkeypatch.setattr(sweep, "_unit", lambda model, kind, n, *a: computed.append(
        sweep.unit_name(model.config.use_rope, kind, n) + ".npz") or original(model, kind, n, *a))
    run = studies.run_study("e2", out, "small", MICRO_E2, progress=False)
    assert len(computed) == total - len(finished) and not set(computed) & set(finished)
    for name, mtime in finished.items():
        assert (out / "units" / name).stat().st_mtime_ns == mtime
    assert len(run.units()) == total and len(run.meta["resumed"]) == 1
    rows = run.read_table("agreement")
    assert {r["n"] for r in rows} == set(MICRO_E2["lengths"])
    assert (out / "figures" / "e2_agreement.pdf").stat().st_size > 0

    with pytest.raises(RunError, match="another config"):
        studies.run_study("e2", out, "small", {**MICRO_E2, "G": 5}, progress=False)
    assert len(list((out / "units").glob("[!.]*.npz"))) == total


def test_render_redraws_from_stored_results_only(tmp_path, monkeypatch):
    run = studies.run_study("e2", tmp_path / "e2", "small",
                            {**MICRO_E2, "lengths": [16, 32]}, progress=False, draw=False)
    assert not list(run.figures.iterdir())
    monkeypatch.setattr(sweep, "_unit", lambda *a: pytest.fail("render recomputed a unit"))
    paths = studies.render(tmp_path)  # a directory of run directories
    assert sorted(p.name for p in paths) == ["e2_agreement.pdf", "e2_agreement.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert paths[0].read_bytes().startswith(b"%PDF")
    with pytest.raises(RunError, match="holds none"):
        studies.render(tmp_path / "e2" / "figures")


def test_a_training_study_under_several_processes_writes_nothing(tmp_path, monkeypatch):
    """E7 trains its model in one process: under two it is refused before the run directory
    exists (it used to leave run.json and empty folders behind)."""
    monkeypatch.setenv("DYNSYS_NUM_PROCESSES", "2")
    monkeypatch.setenv("DYNSYS_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="e7 trains its model, which runs in one process "
                                         r"\(this is process 0 of 2\)"):
        studies.run_study("e7", tmp_path / "run", "small", progress=False)
    assert not (tmp_path / "run").exists()
