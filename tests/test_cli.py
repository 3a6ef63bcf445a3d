"""The command line: each subcommand on tiny settings, and its refusals of bad input."""

import dataclasses

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

import dynsys as ds
from dynsys import cli
from dynsys.cli import app
from dynsys.studies import e2_agreement

MICRO = ["--set", "lengths=[16, 32]", "--set", "G=4", "--set", "prompts=2",
         "--set", 'kinds=["random"]']
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Table cells on one line, so that claims can be found in the output."""
    monkeypatch.setattr(cli, "console", Console(width=400))


def invoke(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def says(result, text: str) -> bool:
    """Whether the output contains text, ignoring rich's line wrapping."""
    return "".join(text.split()) in "".join(result.output.split())


def test_run_then_figures(tmp_path):
    out = tmp_path / "e2"
    result = invoke("run", "e2", "--out", str(out), *MICRO)
    assert result.exit_code == 0, result.output
    assert says(result, "agreement with f_P") and says(result, f"wrote {out}")
    assert (out / "tables" / "agreement.csv").exists()
    for f in (out / "figures").iterdir():
        f.unlink()
    result = invoke("figures", str(tmp_path))
    assert result.exit_code == 0 and says(result, "e2_agreement.pdf")
    assert (out / "figures" / "e2_agreement.png").stat().st_size > 0
    # the same directory with other settings: refused, nothing touched
    before = (out / "run.json").read_text()
    result = invoke("run", "e2", "--out", str(out), *MICRO, "--set", "G=5")
    assert result.exit_code == 2 and says(result, "G: 4 there, 5 now")
    assert (out / "run.json").read_text() == before


def test_verify_runs_the_small_scale_and_prints_the_verdict(tmp_path, monkeypatch):
    micro = dataclasses.replace(e2_agreement.SCALES["small"], lengths=(16, 32), G=4, prompts=2,
                                kinds=("random",))
    monkeypatch.setitem(e2_agreement.SCALES, "small", micro)
    result = invoke("verify", "--out", str(tmp_path), "-e", "e2")
    assert result.exit_code == 0, result.output
    assert says(result, "grows towards 1") and says(result, "tested claims hold")
    assert (tmp_path / "e2" / "figures" / "e2_agreement.pdf").exists()


def test_map_and_orbits(tmp_path):
    out = tmp_path / "map.npz"
    result = invoke("map", "--kind", "random", "--length", "24", "--prompt-seed", "3",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    with np.load(out) as saved:
        nxt, prompt = saved["next"], saved["prompt"]
    expected = ds.markov_map(ds.load("tiny"), prompt, progress=False).next
    np.testing.assert_array_equal(nxt, expected)
    cycles = ds.orbits(nxt).n_cycles
    result = invoke("orbits", str(out), "--shuffles", "2")
    assert result.exit_code == 0 and says(result, f"{cycles} cycles (length:basin")
    assert says(result, "random mapping")


@pytest.mark.parametrize("args, message", [
    (["run", "e7"], "unknown experiment 'e7'"),
    (["run", "e2", "--set", "steps=3"], "unknown setting(s) 'steps'"),
    (["run", "e2", "--set", "G"], "--set 'G' must look like key=value"),
    (["run", "e2", "--set", "model=nope"], "'nope' is neither a preset"),
    (["run", "e2", "--scale", "huge"], "scale 'huge'"),
    (["figures", "/nonexistent/run"], "is not a run directory"),
    (["map", "--model", "nope"], "'nope' is neither a preset"),
    (["map", "--kind", "words", "--length", "8"], "prompt kind 'words'"),
    (["generate", "--rope", "sideways"], "rope='sideways'"),
])
def test_bad_input_is_named(tmp_path, args, message):
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "r")]
                                          if args[0] == "run" else [])])
    assert result.exit_code == 2
    assert says(result, message)
    assert not (tmp_path / "r").exists()


def test_orbits_rejects_a_file_without_a_map(tmp_path):
    np.savez(tmp_path / "other.npz", values=np.arange(3))
    result = runner.invoke(app, ["orbits", str(tmp_path / "other.npz")])
    assert result.exit_code == 2 and says(result, "next is not a file in the archive")
