"""Run directories: provenance, atomic units, tables, resumption and refusals."""

import dataclasses
import json

import numpy as np
import pytest

from dynsys import runs
from dynsys.runs import FORMAT, RunError, open_run, read_run


@dataclasses.dataclass(frozen=True)
class Settings:
    n: int = 3
    lengths: tuple[int, ...] = (8, 16)


def test_new_run_records_config_and_provenance(tmp_path):
    run = open_run(tmp_path / "r", "demo", Settings(), seeds={"seed": 7})
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["format"] == FORMAT and meta["experiment"] == "demo"
    assert meta["config"] == {"n": 3, "lengths": [8, 16]} == run.config
    prov = meta["provenance"]
    assert prov["seeds"] == {"seed": 7}
    assert prov["packages"]["numpy"] == np.__version__
    assert prov["devices"] and prov["python"].count(".") == 2
    assert prov["git_commit"] is None or len(prov["git_commit"]) == 40


def test_units_and_tables_round_trip(tmp_path):
    run = open_run(tmp_path, "demo", Settings())
    a = np.arange(12, dtype=np.int32).reshape(3, 4)
    run.save("u_n8", traces=a, mask=a > 4)
    assert run.has("u_n8") and not run.has("u_n16") and run.units() == ["u_n8"]
    back = run.load("u_n8")
    np.testing.assert_array_equal(back["traces"], a)
    assert back["mask"].dtype == bool
    rows = [{"n": 8, "share": 0.25, "rope": True, "kind": "ngram"},
            {"n": 16, "share": 1.0, "rope": False, "kind": "random"}]
    run.write_table("summary", rows)
    assert read_run(tmp_path).read_table("summary") == rows
    assert not [p for p in tmp_path.rglob("*") if "tmp" in p.name]
    with pytest.raises(RunError, match="no unit 'u_n16'"):
        run.load("u_n16")
    with pytest.raises(RunError, match="'../escape'"):
        run.save("../escape", x=a)


def test_resume_needs_same_experiment_and_config(tmp_path):
    run = open_run(tmp_path, "demo", Settings())
    run.save("u", x=np.zeros(2))
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(RunError, match=r"n: 3 there, 4 now"):
        open_run(tmp_path, "demo", Settings(n=4))
    with pytest.raises(RunError, match="holds experiment 'demo'"):
        open_run(tmp_path, "other", Settings())
    assert (tmp_path / "run.json").read_text() == before
    again = open_run(tmp_path, "demo", Settings())
    assert again.units() == ["u"] and len(again.meta["resumed"]) == 1


def test_incompatible_or_foreign_directories_are_refused(tmp_path):
    open_run(tmp_path / "old", "demo", Settings())
    meta = json.loads((tmp_path / "old" / "run.json").read_text())
    meta["format"] = FORMAT + 1
    (tmp_path / "old" / "run.json").write_text(json.dumps(meta))
    with pytest.raises(RunError, match=f"format {FORMAT + 1}.*Nothing was changed"):
        open_run(tmp_path / "old", "demo", Settings())
    with pytest.raises(RunError, match="format"):
        read_run(tmp_path / "old")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        open_run(tmp_path / "busy", "demo", Settings())
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["notes.txt"]
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "run.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        read_run(tmp_path / "broken")
    with pytest.raises(RunError, match="no run.json"):
        read_run(tmp_path / "busy")


def test_atomic_save_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "unit.npz"
    runs.save_npz_atomic(path, x=np.ones(3))

    def dying(file, **arrays):
        open(file, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.np, "savez", dying)
    with pytest.raises(KeyboardInterrupt):
        runs.save_npz_atomic(path, x=np.zeros(3))
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["x"], np.ones(3))
