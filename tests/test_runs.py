"""Run directories: provenance, atomic units, tables, resumption and refusals."""

import dataclasses
import json
import pathlib

import matplotlib.pyplot as plt
import numpy as np
import pytest

from dynsys import figstyle, runs
from dynsys.runs import FORMAT, RunError, open_run, read_run
from dynsys.studies import settings


@dataclasses.dataclass(frozen=True)
class Settings:
    n: int = 3
    lengths: tuple[int, ...] = (8, 16)


@dataclasses.dataclass(frozen=True)
class Checked(settings.Settings):
    """A study-style Config: lists are taken as tuples when it is made."""

    n: int = 3
    lengths: tuple[int, ...] = (8, 16)


def test_a_run_gives_back_its_typed_settings_and_says_which_tables_it_has(tmp_path):
    run = open_run(tmp_path, "demo", Checked(n=5, lengths=(4,)))
    back = read_run(tmp_path)
    assert back.config == {"n": 5, "lengths": [4]}  # JSON: a list
    assert back.settings(Checked) == Checked(n=5, lengths=(4,))
    assert back.settings(Checked).lengths == (4,)
    assert not run.has_table("summary")
    run.write_table("summary", [{"n": 1}])
    assert run.has_table("summary") and not run.has_table("other")
    with pytest.raises(RunError, match="'../escape'"):
        run.has_table("../escape")


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
    with pytest.raises(RunError, match="no readable unit 'u_n16'"):
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


@pytest.mark.parametrize("field, value, kind", [
    ("resumed", {}, "dict, not list"), ("provenance", "edited", "str, not dict"),
    ("config", [], "list, not dict")])
def test_a_tampered_run_json_is_refused_naming_the_field(tmp_path, field, value, kind):
    """"resumed": {} or a string provenance ended in an AttributeError."""
    open_run(tmp_path / "r", "demo", Settings())
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    meta[field] = value
    if field == "provenance":
        meta["format"] = FORMAT + 1  # the format message reads the provenance
    (tmp_path / "r" / "run.json").write_text(json.dumps(meta))
    before = (tmp_path / "r" / "run.json").read_text()
    with pytest.raises(RunError, match=f"field '{field}' holds {kind}"):
        open_run(tmp_path / "r", "demo", Settings())
    assert (tmp_path / "r" / "run.json").read_text() == before


def test_atomic_save_leaves_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "unit.npz"
    runs.save_npz_atomic(path, x=np.ones(3))

    def dying(file, **arrays):
        pathlib.Path(file).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(runs.np, "savez", dying)
    with pytest.raises(KeyboardInterrupt):
        runs.save_npz_atomic(path, x=np.zeros(3))
    with np.load(path) as saved:
        np.testing.assert_array_equal(saved["x"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["unit.npz"]  # no temporary file left


def test_unreadable_units_are_moved_aside_and_count_as_missing(tmp_path, caplog):
    run = open_run(tmp_path, "demo", Settings())
    for name in ("cut", "junk", "fine", "late"):
        run.save(name, x=np.arange(50))
    units = tmp_path / "units"
    whole = (units / "cut.npz").read_bytes()
    (units / "cut.npz").write_bytes(whole[:len(whole) // 2])  # truncated
    (units / "junk.npz").write_bytes(b"not an npz archive")
    computed = []

    def compute(name):
        computed.append(name)
        return {"x": np.arange(50) + 1}

    run.fill([("cut",), ("junk",), ("fine",)], lambda name: name, compute, "demo",
             progress=False)
    assert computed == ["cut", "junk"]
    for name in ("cut", "junk"):
        assert len(list(units.glob(f"{name}.npz.corrupt-*"))) == 1
        assert any(name in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
        np.testing.assert_array_equal(run.load(name)["x"], np.arange(50) + 1)
    np.testing.assert_array_equal(run.load("fine")["x"], np.arange(50))
    assert run.units() == ["cut", "fine", "junk", "late"]
    (units / "late.npz").write_bytes(whole[:100])
    assert not run.has("late") and list(units.glob("late.npz.corrupt-*"))
    run.save("late", x=np.zeros(1))
    (units / "late.npz").write_bytes(b"")
    with pytest.raises(RunError, match="no readable unit 'late'"):
        run.load("late")
    assert len(list(units.glob("late.npz.corrupt-*"))) == 2
    assert "late.npz.corrupt-" in caplog.records[-1].getMessage()
    assert run.units() == ["cut", "fine", "junk"]


def test_a_unit_with_other_arrays_is_a_damaged_unit(tmp_path, caplog):
    """A readable .npz holding other arrays (another computation's) was a KeyError wherever
    the study read it; now one line, the file set aside, and a rerun computes it again."""
    run = open_run(tmp_path, "demo", Settings())
    run.save("u", other=np.arange(3))
    unit = run.load("u")
    assert unit["other"].tolist() == [0, 1, 2] and unit.get("traces") is None
    with pytest.raises(RunError, match=r"u.npz holds no array 'traces' \(it holds \['other'\]\)"
                                       r".*rerun to compute it again"):
        unit["traces"]
    assert not run.has("u") and len(list((tmp_path / "units").glob("u.npz.corrupt-*"))) == 1
    assert "u.npz.corrupt-" in caplog.records[-1].getMessage()
    run.fill([("u",)], lambda name: name, lambda name: {"traces": np.ones(2)}, "demo",
             progress=False)
    assert run.load("u")["traces"].tolist() == [1.0, 1.0]


def test_failed_writes_leave_no_temporary_files(tmp_path, monkeypatch):
    run = open_run(tmp_path / "r", "demo", Settings())
    with pytest.raises(ValueError, match="fields not in fieldnames"):
        run.write_table("mixed", [{"a": 1}, {"b": 2}])  # fails after the header is written
    assert not list((tmp_path / "r" / "tables").iterdir())

    def full_disk(file, **arrays):
        pathlib.Path(file).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs.np, "savez", full_disk)
    with pytest.raises(OSError, match="No space"):
        run.save("u", x=np.zeros(3))
    assert not list((tmp_path / "r" / "units").iterdir())


def test_a_run_json_that_cannot_be_written_leaves_no_directory(tmp_path):
    with pytest.raises(TypeError, match="not JSON serializable"):
        open_run(tmp_path / "r", "demo", Settings(), seeds={"seed": object()})
    assert not (tmp_path / "r").exists()
    open_run(tmp_path / "r", "demo", Settings(), seeds={"seed": 1})  # the retry is not refused
    with pytest.raises(TypeError, match="not JSON serializable"):
        open_run(tmp_path / "r", "demo", Settings(), seeds={"seed": object()})
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "figures", "run.json", "tables", "units"]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["resumed"] == []


def test_figures_are_written_atomically(tmp_path, monkeypatch):
    fig, axes = figstyle.figure()
    axes[0][0].plot([0, 1], [1, 0])
    savefig = fig.savefig

    def full_disk(path, **kwargs):
        if str(path).endswith(".png"):
            pathlib.Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        savefig(path, **kwargs)

    monkeypatch.setattr(fig, "savefig", full_disk)
    with pytest.raises(OSError, match="No space"):
        figstyle.save(fig, tmp_path, "plot")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.pdf"]
    assert (tmp_path / "plot.pdf").read_bytes().startswith(b"%PDF")
    assert not plt.fignum_exists(fig.number)


def test_resume_needs_the_same_inputs(tmp_path, caplog):
    open_run(tmp_path, "demo", Settings(), inputs={"model": "aaa"})
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(RunError, match="model: 'aaa' there, 'bbb' now"):
        open_run(tmp_path, "demo", Settings(), inputs={"model": "bbb"})
    assert (tmp_path / "run.json").read_text() == before
    assert open_run(tmp_path, "demo", Settings(), inputs={"model": "aaa"}).meta["inputs"] == {
        "model": "aaa"}
    # a run.json from before inputs were recorded: resumed, and the inputs of now adopted
    meta = json.loads(before)
    del meta["inputs"]
    (tmp_path / "run.json").write_text(json.dumps(meta))
    again = open_run(tmp_path, "demo", Settings(), inputs={"model": "bbb"})
    assert again.meta["inputs"] == {"model": "bbb"}
    assert json.loads((tmp_path / "run.json").read_text())["inputs"] == {"model": "bbb"}
    assert any("records no inputs" in r.getMessage() for r in caplog.records)


def test_a_chunk_from_another_computation_or_place_is_computed_again(tmp_path):
    """Only chunks.json carried the fingerprint: a chunk_000001.npz copied from another
    prompt's store (or another chunk's file) was taken as this computation's rows."""
    def rows_of(offset):
        def compute(start, stop):
            calls.append(start)
            return {"x": np.arange(start, stop) + offset}
        return compute

    calls = []
    mine = runs.chunked(12, 4, rows_of(0), store=tmp_path / "a", fingerprint="a",
                        progress=False)
    runs.chunked(12, 4, rows_of(100), store=tmp_path / "b", fingerprint="b", progress=False)
    (tmp_path / "a" / "chunk_000001.npz").write_bytes(
        (tmp_path / "b" / "chunk_000001.npz").read_bytes())  # another prompt's rows 4..8
    (tmp_path / "a" / "chunk_000002.npz").write_bytes(
        (tmp_path / "a" / "chunk_000000.npz").read_bytes())  # this one's rows 0..4
    calls.clear()
    again = runs.chunked(12, 4, rows_of(0), store=tmp_path / "a", fingerprint="a",
                         progress=False)
    assert calls == [4, 8]
    for a, b in zip(again, mine):
        assert a.keys() == {"x"}
        np.testing.assert_array_equal(a["x"], b["x"])
    calls.clear()
    runs.chunked(12, 4, rows_of(0), store=tmp_path / "a", fingerprint="a", progress=False)
    assert calls == []  # the recomputed chunks were stored with their tags


@pytest.mark.parametrize("damage", ["[]", "{", '{"rows": 12}'])
def test_a_damaged_chunks_json_is_rewritten(tmp_path, damage):
    """chunks.json holding a list was an AttributeError; each chunk carries its own
    fingerprint, so the stored chunks still count."""
    calls = []

    def compute(start, stop):
        calls.append(start)
        return {"x": np.arange(start, stop)}

    first = runs.chunked(12, 4, compute, store=tmp_path, fingerprint="a", progress=False)
    (tmp_path / "chunks.json").write_text(damage)
    calls.clear()
    again = runs.chunked(12, 4, compute, store=tmp_path, fingerprint="a", progress=False)
    assert calls == [] and json.loads((tmp_path / "chunks.json").read_text())["fingerprint"] == "a"
    for a, b in zip(again, first):
        np.testing.assert_array_equal(a["x"], b["x"])


def test_a_damaged_table_is_a_one_line_error(tmp_path):
    run = open_run(tmp_path, "demo", Settings())
    run.write_table("t", [{"step": 1, "ok": True, "x": 0.5}])
    assert run.read_table("t") == [{"step": 1, "ok": True, "x": 0.5}]
    with pytest.raises(RunError, match=r"t.csv has no column 'loss' \(its columns: step, ok, x"):
        run.read_table("t")[0]["loss"]
    for text, message in [(b"step,ok\n", "has no rows"), (b"\xff\xfe\x00", "not a CSV table"),
                          (b"step,ok\n1,True,3\n", "line 2 has more fields"),
                          (b"step,ok\n1\n", "line 2 has fewer fields")]:
        (tmp_path / "tables" / "t.csv").write_bytes(text)
        with pytest.raises(RunError, match=f"t.csv .*{message}.*rerun the study"):
            run.read_table("t")


def test_chunked_prints_nothing_to_a_file_or_pipe(monkeypatch):
    """Its transient bar cannot vanish from a file, and rich ended each with a blank line:
    verify's log got one per E9 map (about a hundred)."""
    import io

    import rich
    from rich.console import Console

    out = io.StringIO()
    monkeypatch.setattr(rich, "_console", Console(file=out, force_terminal=False))
    parts = runs.chunked(4, 2, lambda a, b: {"rows": np.arange(a, b)}, description="rows")
    assert [p["rows"].tolist() for p in parts] == [[0, 1], [2, 3]]
    assert out.getvalue() == ""
