"""The tutorial runs as a user would run it: the README's Python quick-start (every name it uses
is defined in it), examples/quickstart.py at the same sizes (the compiled programs are shared)
writes its figure, and examples/own_model.py, on small sizes, writes a checkpoint with save_hf,
runs the analysis on the model read back from that directory, and transformers reads the same
directory and continues a prompt with the same greedy tokens."""

import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import dynsys as ds

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PNG = b"\x89PNG\r\n\x1a\n"


def example(name: str):
    """The `main` of examples/NAME.py, loaded as the script is (not as __main__)."""
    return runpy.run_path(str(EXAMPLES / f"{name}.py"))


def test_readme_quickstart_runs_as_written(capsys):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## Python quick-start\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(code.splitlines()) <= 16
    exec(compile(code, "README.md", "exec"), {})  # a fresh namespace: nothing predefined
    out = capsys.readouterr().out
    assert re.search(r"period \d+ from step \d+; f_P has \d+ cycle", out), out
    assert "trace follows f_P on" in out and "MLP zeroed" in out, out


def test_quickstart_prints_each_step_and_writes_its_figure(tmp_path, capsys):
    figure = tmp_path / "figs" / "quickstart.png"
    example("quickstart")["main"]([str(figure)])
    out = capsys.readouterr().out
    for step in ("greedy trace: period", "f_P:", "the trace follows f_P", "MLP zeroed", "wrote"):
        assert step in out, (step, out)
    assert figure.read_bytes()[:8] == PNG


def test_own_model_reads_back_what_it_saved_and_analyses_it(tmp_path, capsys):
    ns = example("own_model")
    ckpt = tmp_path / "mine"
    ns["main"](["--out", str(ckpt), "--length", "96", "--new-tokens", "24", "--prompts", "2"])
    out = capsys.readouterr().out
    assert "share of traces ending in a loop" in out and "f_P on all of V" in out, out
    assert out.count("RoPE off") == 5, out  # one row per prompt kind
    # What it wrote is a Hugging Face checkpoint: transformers reads it and continues a prompt
    # greedily with the same tokens as the model dynsys read back from the directory.
    mine = ds.load(ckpt)
    prompt = ds.prompts.random_tokens(mine.config.vocab_size, 32, seed=3)[None]
    theirs = transformers.AutoModelForCausalLM.from_pretrained(ckpt).eval()
    expected = theirs.generate(torch.as_tensor(prompt, dtype=torch.long), max_new_tokens=8,
                               do_sample=False, pad_token_id=0)[:, 32:].numpy()
    np.testing.assert_array_equal(np.asarray(ds.generate(mine, prompt, 8).tokens), expected)

def test_own_model_refuses_a_directory_that_is_not_a_checkpoint(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit:
        example("own_model")["main"](["--checkpoint", str(tmp_path / "empty")])
    assert exit.value.code == 2
    assert "empty" in capsys.readouterr().err
