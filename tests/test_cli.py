"""The command line: each subcommand on tiny settings, and its refusals of bad input."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

import dynsys as ds
from dynsys import cli, io, studies
from dynsys.cli import app
from dynsys.data import prompts
from dynsys.dynamics import markov
from dynsys.runs import open_run
from dynsys.studies import e2_agreement
from dynsys.surgery.edit import OPS

MICRO = ["--set", "lengths=[16, 32]", "--set", "G=4", "--set", "prompts=2",
         "--set", 'kinds=["random"]']
runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Table cells on one line, so that claims can be found in the output."""
    monkeypatch.setattr(cli, "console", Console(width=400))


@pytest.fixture()
def narrow(monkeypatch):
    """A 40-column terminal: an error must still be one line."""
    monkeypatch.setattr(cli, "console", Console(width=40))
    monkeypatch.setattr(cli, "errors", Console(stderr=True, width=40), raising=False)


def refused(result, *named) -> None:
    """Exit status 2, no traceback, and one line of output: `error: ...` naming each of
    `named`."""
    assert result.exit_code == 2, (result.exception, result.output)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in named:
        assert str(text) in lines[0], (text, lines[0])


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
    assert says(result, "grows towards 1") and says(result, "tested claims:")
    assert says(result, "checks:") and says(result, "manipulation checks:")
    assert says(result, "Holm")
    assert (tmp_path / "e2" / "figures" / "e2_agreement.pdf").exists()
    written = json.loads((tmp_path / "findings.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "docs" / "findings.schema.json")
                        .read_text())
    jsonschema.validate(written, schema)
    assert {r["experiment"] for r in written["findings"]} == {"e2"}
    assert (tmp_path / "findings.csv").exists()
    # a rerun resumes (nothing recomputed) and prints the same findings as JSON on stdout
    result = invoke("verify", "--out", str(tmp_path), "-e", "e2", "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["findings"] == written["findings"]


def test_map_and_orbits(tmp_path):
    out = tmp_path / "map.npz"
    result = invoke("map", "--kind", "random", "--length", "24", "--prompt-seed", "3",
                    "--out", str(out))
    assert result.exit_code == 0, result.output
    with np.load(out) as saved:
        nxt, prompt = saved["next"], saved["prompt"]
    expected = ds.markov_map(ds.load("tiny"), prompt, progress=False).next
    np.testing.assert_array_equal(nxt, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.npz"]  # no map.chunks left
    cycles = ds.orbits(nxt).n_cycles
    result = invoke("orbits", str(out), "--shuffles", "2")
    assert result.exit_code == 0 and says(result, f"{cycles} cycles (length:basin")
    assert says(result, "random mapping")


@pytest.mark.parametrize("out, message", [
    ("m/map.txt", "does not end in .npz"), ("taken.npz", "is a directory"),
    ("missing/map.npz", "is not a directory")])
def test_map_checks_out_before_computing(tmp_path, monkeypatch, out, message):
    """A bad --out failed only after the whole map, with a misleading rename error, and left
    a temporary (np.savez appends .npz to its name) behind."""
    (tmp_path / "m").mkdir()
    (tmp_path / "taken.npz").mkdir()
    monkeypatch.setattr(markov, "markov_map", lambda *a, **k: pytest.fail("computed"))
    result = invoke("map", "--length", "8", "--out", str(tmp_path / out))
    assert result.exit_code == 2 and says(result, str(tmp_path / out)) and says(result, message)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["m", "taken.npz"]


def test_generate_refuses_more_prompts_than_memory_holds_before_making_them(monkeypatch):
    monkeypatch.setattr(prompts, "repeated_ngram", lambda *a, **k: pytest.fail("made"))
    result = invoke("generate", "--prompts-per-n", "300000")
    assert result.exit_code == 2 and says(result, "1200000 prompts of 256 tokens (padded)")


@pytest.mark.parametrize("content", ["[]", "null", '"llama"', ""])
def test_a_checkpoint_whose_config_json_is_not_an_object_is_named(tmp_path, content):
    """An AttributeError traceback before; now one line naming the file, and no run
    directory."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text(content)
    result = invoke("run", "e2", "--set", f"model={tmp_path / 'ckpt'}", "--out",
                    str(tmp_path / "r"))
    assert result.exit_code == 2 and says(result, str(tmp_path / "ckpt" / "config.json"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["run", "e99"], "'e99' is not one of 'e1', 'e2'"),
    (["run", "e2", "--set", "steps=3"], "unknown setting(s) 'steps'"),
    (["run", "e2", "--set", "G"], "--set 'G' must look like key=value"),
    (["run", "e2", "--set", "model=nope"], "'nope' is neither a preset"),
    (["run", "e2", "--scale", "huge"], "'huge' is not one of 'small', 'verify', 'paper'"),
    (["figures", "/nonexistent/run"], "is not a run directory"),
    (["map", "--model", "nope"], "'nope' is neither a preset"),
    (["map", "--kind", "words", "--length", "8"], "'words' is not one of 'ngram', 'random'"),
    (["map", "--rope", "both"], "'both' is not one of 'on', 'off'"),
    (["generate", "--rope", "sideways"], "'sideways' is not one of 'on', 'off', 'both'"),
])
def test_bad_input_is_named(tmp_path, args, message):
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "r")]
                                          if args[0] == "run" else [])])
    assert result.exit_code == 2
    assert says(result, message)
    assert not (tmp_path / "r").exists()


@pytest.fixture()
def garbage_checkpoint(tmp_path):
    """A checkpoint directory with a good config.json and a model.safetensors of garbage."""
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(ds.to_hf_config(ds.preset("tiny"))))
    (ckpt / "model.safetensors").write_bytes(b"garbage" * 10)
    return ckpt


@pytest.mark.parametrize("command", [
    ["map", "--length", "8", "--out", "{out}/map.npz", "--model"],
    ["generate", "--model"],
    ["sweep", "--out", "{out}/sweep", "--model"],
    ["run", "e2", "--out", "{out}/run", "--set", "model={ckpt}"],
])
def test_a_corrupt_checkpoint_is_refused(garbage_checkpoint, tmp_path, narrow, command):
    out = tmp_path / "out"
    out.mkdir()
    args = [a.format(out=out, ckpt=garbage_checkpoint) for a in command]
    if args[-1] == "--model":
        args.append(str(garbage_checkpoint))
    refused(runner.invoke(app, args), garbage_checkpoint / "model.safetensors")
    assert not list(out.iterdir())


@pytest.mark.parametrize("experiment, setting", [
    ("e1", "batch=0"), ("e2", "prompts=0"), ("e2", "lengths=[]"), ("e2", "G=-1"),
    ("e6", "offsets=2"), ("e4", "kinds=[\"words\"]")])
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, narrow, experiment,
                                                             setting):
    result = runner.invoke(app, ["run", experiment, "--out", str(tmp_path / "r"),
                                 "--set", setting])
    refused(result, setting.replace('"', "'"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("content, named", [
    ('{"G": 8,', "s.json is not valid JSON"),
    (None, "s.json"),
    ("[1, 2]", "s.json must hold a table of settings"),
    ('{"G": -1}', "G=-1"),
])
def test_a_bad_settings_file_is_refused(tmp_path, narrow, content, named):
    if content is not None:
        (tmp_path / "s.json").write_text(content)
    result = runner.invoke(app, ["run", "e2", "--out", str(tmp_path / "r"),
                                 "--config", str(tmp_path / "s.json")])
    refused(result, named)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name, write, named", [
    ("float.npz", lambda p: np.savez(p, next=np.arange(5.0)), "dtype float64"),
    ("range.npz", lambda p: np.savez(p, next=np.array([0, 5, 1])), "f[1] = 5"),
    ("negative.npz", lambda p: np.savez(p, next=np.array([0, -1])), "f[1] = -1"),
    ("square.npz", lambda p: np.savez(p, next=np.zeros((2, 2), int)), "1-D"),
    ("other.npz", lambda p: np.savez(p, values=np.arange(3)), "no array 'next'"),
    ("map.npy", lambda p: np.save(p, np.arange(3)), "not an .npz"),
    ("cut.npz", lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "cannot be read"),
    ("empty.npz", lambda p: p.write_bytes(b""), "cannot be read"),
    ("missing.npz", lambda p: None, "No such file"),
])
def test_orbits_refuses_a_bad_map_file(tmp_path, narrow, name, write, named):
    path = tmp_path / name
    write(path)
    before = sorted(tmp_path.iterdir())
    refused(runner.invoke(app, ["orbits", str(path)]), path, named)
    assert sorted(tmp_path.iterdir()) == before


def read_only(directory):
    """`directory` made read-only; the test is skipped where that does not stop writes (root)."""
    directory.chmod(0o555)
    try:
        (directory / "probe").touch()
    except PermissionError:
        return directory
    (directory / "probe").unlink()
    directory.chmod(0o755)
    pytest.skip("permissions do not stop writes here (running as root?)")


def test_run_refuses_a_read_only_out_directory(tmp_path, narrow):
    parent = tmp_path / "ro"
    parent.mkdir()
    read_only(parent)
    try:
        refused(runner.invoke(app, ["run", "e2", "--out", str(parent / "run"), *MICRO]),
                parent / "run", "Permission denied")
        assert not list(parent.iterdir())
    finally:
        parent.chmod(0o755)


def test_figures_refuses_a_read_only_figures_directory(tmp_path, narrow):
    run = open_run(tmp_path / "run", "e2", e2_agreement.SCALES["small"])
    run.write_table("agreement", [
        {"rope": rope, "kind": "random", "n": n, "G": 4, "agreement": 0.5, "stderr": 0.1,
         "agreement_position": 0.5} for rope in (True, False) for n in (16, 32)])
    read_only(run.figures)
    try:
        refused(runner.invoke(app, ["figures", str(run.path)]), run.figures,
                "Permission denied")
        assert not list(run.figures.iterdir())
    finally:
        os.chmod(run.figures, 0o755)


def test_train_writes_checkpoints_through_time_and_resumes(tmp_path, narrow):
    out = tmp_path / "train"
    tiny = ("--set", "steps=3", "--set", "checkpoint_every=2", "--set", "hidden=32",
            "--set", "ffn=64")
    result = invoke("train", "--out", str(out), *tiny)
    assert result.exit_code == 0, result.output
    steps = sorted(p.name for p in (out / "train" / "checkpoints").iterdir())
    assert steps == ["step_0000000", "step_0000001", "step_0000002", "step_0000003"]
    assert (out / "train" / "checkpoints" / "step_0000003" / "tokenizer.json").exists()
    log = (out / "train" / "log.csv").read_text()
    again = invoke("train", "--out", str(out), *tiny)  # finished: nothing is trained again
    assert again.exit_code == 0 and (out / "train" / "log.csv").read_text() == log
    refused(invoke("train", "--out", str(tmp_path / "x"), "--scale", "huge"), "huge")
    assert not (tmp_path / "x").exists()


def test_generate_text_prints_ids_beside_their_text(tmp_path):
    """--text encodes with the checkpoint's tokenizer, and the continuation printed is
    generate's, as ids and as their decoded text; a model without a tokenizer is refused."""
    from conftest import CONFIGS, random_model

    from dynsys.data import english, train_tokenizer
    from dynsys.nn import Model

    tokenizer = train_tokenizer(english().documents[:20], 257)
    base = random_model(CONFIGS["llama-g1"])
    ds.save_hf(Model(base.config, base.params, tokenizer), tmp_path / "ckpt")
    ids = tokenizer.encode("The with statement").ids
    expected = np.asarray(ds.generate(base, np.asarray([ids]), 6).tokens)[0]
    result = runner.invoke(app, ["generate", "--model", str(tmp_path / "ckpt"), "--text",
                                 "The with statement", "--new-tokens", "6"])
    assert result.exit_code == 0, result.output
    assert says(result, " ".join(map(str, ids))) and says(result, "The with statement")
    assert says(result, " ".join(map(str, expected)))
    assert says(result, tokenizer.decode(expected.tolist(), skip_special_tokens=False).strip())
    refused(runner.invoke(app, ["generate", "--text", "hello"]), "--text needs a checkpoint")


@pytest.mark.parametrize("table", [
    b"rope,kind,n,G,agreement\n",  # header only
    b"\x89PNG\r\n\x1a\n\x00\x00garbage\xff\xfe",  # not text
    b"rope,kind,n\nTrue,random\n",  # a row shorter than its header
    b"a,b\n1,2\n",  # another table's columns
])
def test_figures_of_a_damaged_table_is_one_line(tmp_path, table):
    """`dynsys figures` on a header-only or garbage CSV ended in a traceback (IndexError,
    UnicodeDecodeError, TypeError, KeyError)."""
    run = open_run(tmp_path / "e2", "e2", {"G": 4})
    (run.path / "tables" / "agreement.csv").write_bytes(table)
    refused(invoke("figures", str(tmp_path / "e2")), "agreement.csv", "rerun the study")
    assert not any((run.path / "figures").iterdir())


def test_run_on_a_mis_shaped_checkpoint_makes_no_run_directory(tmp_path):
    """`run e2 --set model=<bad shapes>` made the run directory, then failed loading."""
    ckpt = tmp_path / "ckpt"
    model = ds.load("tiny")
    ds.save_hf(model, ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] //= 2
    (ckpt / "config.json").write_text(json.dumps(config))
    result = invoke("run", "e2", "--out", str(tmp_path / "run"), *MICRO, "--set",
                    f"model={ckpt}")
    refused(result, "mlp.gate_proj.weight has shape")
    assert not (tmp_path / "run").exists()


SAMPLED = ["--temperature", "0.8", "--top-k", "5", "--top-p", "0.9", "--repetition-penalty",
           "1.3", "--no-repeat-ngram-size", "3", "--dry-multiplier", "0.8", "--dry-base", "2",
           "--dry-allowed-length", "3", "--dry-sequence-breaker", "1",
           "--dry-sequence-breaker", "2", "--dry-penalty-last-n", "12"]


def test_generate_takes_every_sampler_setting_and_writes_the_traces(tmp_path):
    """Every Sampler field is an option; --json, --out .npz and --out .jsonl hold the traces
    that ds.generate gives with that Sampler, and the same ones."""
    from dynsys.data.prompts import repeated_ngram
    from dynsys.decode.sampling import Sampler

    args = ["generate", "--rope", "on", "--ngram", "2", "--prompts-per-n", "2", "--length",
            "16", "--new-tokens", "8", "--seed", "3", *SAMPLED]
    printed = json.loads(invoke(*args, "--json").stdout)
    model = ds.load("tiny", seed=3)
    batch = np.stack([repeated_ngram(model.config.vocab_size, 2, 16, seed=2000 + i)
                      for i in range(2)])
    sampler = Sampler(0.8, 5, 0.9, 1.3, 3, 0.8, 2.0, 3, (1, 2), 12)
    expected = np.asarray(ds.generate(model.with_rope(True), batch, 8, sampler=sampler,
                                      seed=3).tokens)
    assert [r["tokens"] for r in printed] == expected.tolist()
    assert [r["prompt_ids"] for r in printed] == batch.tolist()
    assert {(r["rope"], r["N"], r["prompt"]) for r in printed} == {("on", 2, 0), ("on", 2, 1)}
    assert expected.tolist() != ds.generate(model, batch, 8).tokens.tolist()  # not greedy
    assert invoke(*args, "--out", str(tmp_path / "t.jsonl")).exit_code == 0
    lines = (tmp_path / "t.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == printed
    assert invoke(*args, "--out", str(tmp_path / "t.npz")).exit_code == 0
    saved = ds.runs.load_npz(tmp_path / "t.npz")  # allow_pickle=False
    for key in printed[0]:
        assert saved[key].tolist() == [r[key] for r in printed], key


@pytest.mark.parametrize("args, named", [
    (["--top-p", "0"], "top_p=0"),
    (["--top-k", "-1"], "top_k=-1"),
    (["--repetition-penalty", "0"], "repetition_penalty=0"),
    (["--dry-base", "0.5"], "dry_base=0.5"),
    (["--dry-allowed-length", "0"], "dry_allowed_length=0"),
    (["--dry-sequence-breaker", "-3"], "dry_sequence_breakers=-3"),
    (["--out", "traces.csv"], "traces.csv must end in .npz or .jsonl"),
    (["--out", "/nonexistent/t.jsonl"], "/nonexistent"),
    (["--out", "/nonexistent/t.npz"], "/nonexistent"),
])
def test_generate_refuses_bad_sampler_settings_and_targets(tmp_path, narrow, monkeypatch,
                                                           args, named):
    """One line, exit 2, before any model is loaded."""
    monkeypatch.setattr(io, "load", lambda *a, **k: pytest.fail("loaded"))
    refused(runner.invoke(app, ["generate", *args]), named)


def test_generate_text_writes_its_trace(tmp_path):
    """--text with --json: one record, the continuation ds.generate gives."""
    from conftest import CONFIGS, random_model

    from dynsys.data import english, train_tokenizer
    from dynsys.nn import Model

    tokenizer = train_tokenizer(english().documents[:20], 257)
    base = random_model(CONFIGS["llama-g1"])
    ds.save_hf(Model(base.config, base.params, tokenizer), tmp_path / "ckpt")
    ids = tokenizer.encode("The with statement").ids
    expected = np.asarray(ds.generate(base, np.asarray([ids]), 6).tokens)[0]
    result = invoke("generate", "--model", str(tmp_path / "ckpt"), "--text",
                    "The with statement", "--new-tokens", "6", "--json")
    [record] = json.loads(result.stdout)
    assert record["prompt_ids"] == ids and record["tokens"] == expected.tolist()
    assert record["text"] == "The with statement"


def test_settings_prints_each_field_at_each_scale(monkeypatch):
    """One row per Config field, one column per scale in SCALES (a verify scale too), the
    values as `--set` takes them, and the limits."""
    scales = {**e2_agreement.SCALES, "verify": dataclasses.replace(
        e2_agreement.SCALES["small"], G=7)}
    monkeypatch.setattr(e2_agreement, "SCALES", scales)
    result = invoke("settings", "e2")
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in result.output.splitlines() if line.count("│") > 2}
    assert list(rows) == [f.name for f in dataclasses.fields(e2_agreement.Config)]
    header = next(line for line in result.output.splitlines() if "┃" in line)
    assert [c.strip() for c in header.split("┃")[1:-1]] == ["setting", "small", "paper",
                                                            "verify", "limit"]
    for name, cells in rows.items():
        for scale, cell in zip(scales, cells, strict=False):
            value = getattr(scales[scale], name)
            assert cell == (value if isinstance(value, str) else json.dumps(value)), name
    assert rows["G"][:3] == ["16", str(e2_agreement.Config().G), "7"]
    assert rows["kinds"][3].startswith("one of ")
    refused(invoke("settings", "e99"), "'e99' is not one of")


def test_version_is_the_installed_distributions():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.output.strip() == f"dynsys-lm {version('dynsys-lm')}"


def test_help_imports_neither_jax_nor_the_studies():
    """`dynsys --help` and every command's --help answer before jax, flax or a study is
    imported (about 10 s of imports before): in a fresh interpreter, none of them is loaded."""
    names = [c.name for c in typer.main.get_command(app).commands.values()]
    script = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from dynsys.cli import app\n"
        f"for args in [[], *[[name] for name in {names!r}]]:\n"
        "    result = CliRunner().invoke(app, [*args, '--help'])\n"
        "    assert result.exit_code == 0 and 'Usage' in result.output, (args, result.output)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'numpy')\n"
        "             or m.startswith('dynsys.')))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "['dynsys.cli']", done.stdout


def test_choices_are_the_tables_they_name():
    """The choices spelled in dynsys.cli (so that --help imports nothing) are the package's."""
    assert tuple(studies.STUDIES) == cli.STUDY_NAMES
    assert {s.value for s in cli.Scale} == {scale for m in studies.STUDIES.values()
                                            for scale in m.SCALES}
    assert tuple(o.value for o in cli.Op) == OPS
    assert tuple(k.value for k in cli.PromptKind) == prompts.PROMPT_KINDS
    from dynsys import testbeds

    assert {s.value for s in cli.TrainScale} == {scale for bed in testbeds.TESTBEDS.values()
                                                 for scale in bed.scales}


@pytest.mark.parametrize("args, named", [
    (["run"], "Missing argument 'experiment'"),
    (["run", "e2", "--scale", "huge"], "'huge' is not one of"),
    (["map", "--length", "many"], "'--length'"),
    (["generate", "--no-such-option"], "--no-such-option"),
    (["edit", "tiny", "--neuron", "0:1", "--op", "scale", "--out", "x"],
     "--op scale needs --factor"),
    (["edit", "tiny", "--neuron", "0:1", "--op", "zero", "--factor", "2", "--out", "x"],
     "factor=2.0 is for op 'scale', not 'zero'"),
])
def test_usage_errors_are_one_line(tmp_path, narrow, monkeypatch, args, named):
    """A bad choice, a missing argument, a malformed number or option and an incomplete edit:
    one line, exit 2 (typer's boxed usage message before), nothing loaded or written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(io, "load", lambda *a, **k: pytest.fail("loaded"))
    refused(invoke(*args), named)
    assert not list(tmp_path.iterdir())


def test_log_lines_carry_no_source_path(monkeypatch):
    """verify's and generate's timestamped lines ended in `cli.py:NNN`."""
    monkeypatch.undo()  # the module's own consoles, not the tests' wide one
    for console in (cli.console, cli.errors):
        with console.capture() as captured:
            console.log("done")
        assert "done" in captured.get() and "cli.py" not in captured.get()


def test_a_bug_is_reported_as_itself(monkeypatch):
    """An exception that is no user error leaves the command group as raised (the group's
    one-line usage errors named a missing exception class and hid it behind an
    AttributeError)."""
    def broken(run_dir):
        raise RuntimeError("a bug")

    monkeypatch.setattr(studies, "render", broken)
    result = runner.invoke(app, ["figures", "anywhere"])
    assert isinstance(result.exception, RuntimeError) and str(result.exception) == "a bug"
