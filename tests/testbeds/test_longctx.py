"""The long-context twins `longctx-rope` and `longctx-nope`: both scales build; a much-reduced
training of each through `dynsys train --testbed`, registered, its NoPE checkpoint in
transformers; the twins' identical start and data; refusals (the other twin's directory, a
context longer than any document)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import transformers
from conftest import hf_logits
from rich.console import Console
from safetensors.numpy import load_file
from test_testbed_train import invoke

import dynsys as ds
from dynsys import cli
from dynsys.testbeds import read_registry, recipe, resolve
from dynsys.testbeds.language import DocumentSource

# the twins cut to seconds: 6 steps of 4 windows of 65 tokens of a 300k-character corpus
REDUCED = {"steps": 6, "seq_len": 64, "hidden": 32, "ffn": 64, "batch": 4, "warmup": 2,
           "heldout_windows": 4, "checkpoint_every": 4, "save_every": 3, "vocab": 512,
           "characters": 300_000}
SETS = [arg for key, value in REDUCED.items() for arg in ("--set", f"{key}={value}")]
TWINS = ("longctx-rope", "longctx-nope")


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=400))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both reduced twins trained into ROOT/NAME-small: (ROOT, {name: command output})."""
    root = tmp_path_factory.mktemp("testbeds")
    outputs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli, "console", Console(width=400))
        for name in TWINS:
            result = invoke("train", "--testbed", name, "--scale", "small",
                            "--out", str(root / f"{name}-small"), *SETS)
            assert result.exit_code == 0, result.output
            outputs[name] = result.output
    return root, outputs


@pytest.mark.parametrize("name", TWINS)
@pytest.mark.parametrize("scale", ["small", "paper"])
def test_each_recipe_builds(name, scale):
    made = recipe(name, scale)
    model = made.train.model
    assert isinstance(made.source, DocumentSource) and made.source.vocab_size == model.vocab_size
    assert model.family == "llama" and model.use_rope == (name == "longctx-rope")
    assert model.num_kv_heads < model.num_heads  # grouped-query attention
    assert model.max_position_embeddings == made.train.seq_len
    assert json.loads(json.dumps(made.to_dict()))["testbed"] == name
    if scale == "small":
        assert 256 <= made.train.seq_len <= 512 and 512 <= model.vocab_size <= 1024
    else:
        # what 2 CPU cores train in about an hour (the registry's note)
        assert made.train.seq_len >= 2048 and model.hidden_size >= 128
        assert made.train.steps * made.train.tokens_per_step >= 4_000_000


def test_twins_differ_only_in_positional_encoding():
    rope, nope = (recipe(name, scale="paper") for name in TWINS)
    assert rope.source == nope.source
    assert nope.train == dataclasses.replace(rope.train, model=rope.train.model.with_rope(False))


def test_nope_twin_registers_and_loads_in_transformers(trained):
    root, outputs = trained
    for text in ("held-out loss (model)", "unigram of the train tokens", "uniform, ln V",
                 "longctx-nope-small@final"):
        assert text in outputs["longctx-nope"], text
    summary = read_registry(root)["longctx-nope-small"]["summary"]
    assert summary["step"] == 6 and summary["tokens"] == 6 * 4 * 64 and summary["context"] == 64
    assert summary["heldout_loss"] < summary["references"]["uniform"]
    corpus = (root / "longctx-nope-small" / "tables" / "corpus.csv").read_text()
    for source in ("python-source", "shakespeare", "train", "held-out", "PSF-2.0"):
        assert source in corpus, source
    path = resolve("longctx-nope-small@final", root)
    model = ds.load(path)
    assert model.config == recipe("longctx-nope", "small", REDUCED).train.model
    torch.set_num_threads(1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    text = "def main(argv):\n    return sorted(set(argv))\n\nROMEO. But soft, what light"
    batch = np.array([tokenizer(text)["input_ids"][:48]] * 2)
    np.testing.assert_allclose(hf_logits(hf, batch), ds.forward(model, batch), atol=1e-4, rtol=0)


def test_twins_start_identical_and_see_the_same_windows(trained):
    root, _ = trained
    runs = [root / f"{name}-small" / "train" for name in TWINS]
    first, second = (load_file(run / "checkpoints" / "step_0000000" / "model.safetensors")
                     for run in runs)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    inputs = [json.loads((run / "train.json").read_text())["inputs"] for run in runs]
    assert inputs[0] == inputs[1]  # the digests of the train and held-out windows
    later = [load_file(run / "checkpoints" / "step_0000006" / "model.safetensors")
             for run in runs]
    assert any(not np.array_equal(later[0][k], later[1][k]) for k in later[0])


@pytest.mark.parametrize("name, other", [TWINS, TWINS[::-1]])
def test_a_twin_refuses_the_other_twins_directory(trained, name, other):
    root, _ = trained
    out = root / f"{other}-small"
    before = {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    result = invoke("train", "--testbed", name, "--out", str(out), *SETS)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # stdout has the recipe's description
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in (repr(name), repr(other), "RoPE", "NoPE", "cannot resume or load"):
        assert text in lines[0], (text, lines[0])
    assert {str(p): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before


def test_context_longer_than_any_document_is_one_line(tmp_path):
    result = invoke("train", "--testbed", "longctx-nope", "--out", str(tmp_path / "runs" / "x"),
                    *SETS, "--set", "seq_len=200000")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # stdout has the recipe's description
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "seq_len + 1 = 200001" in lines[0] and "the longest of its" in lines[0], lines[0]
    assert not (tmp_path / "runs").exists()
