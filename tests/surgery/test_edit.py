"""Neuron edits of the weights: the same model as the site edit on "mlp_hidden", the same
logits in transformers once saved, and `dynsys edit` with its refusals of bad input."""

import json

import jax
import numpy as np
import pytest
from conftest import CONFIGS, hf_logits, random_model, to_transformers
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from typer.testing import CliRunner

import dynsys
from dynsys.cli import app
from dynsys.decode import run, step
from dynsys.io import checkpoint_digest, load_hf, save_hf
from dynsys.nn import edits
from dynsys.nn.cache import empty_rows
from dynsys.surgery import NeuronEdit, apply_edit

FAMILIES = {"llama": "llama-g1", "qwen2": "qwen2-g2-tied", "gpt_neox": "neox-rot25"}
NEURONS = ((0, 3), (1, 7), (1, 100))
OPS = {"zero": NeuronEdit(NEURONS, "zero"), "flip": NeuronEdit(NEURONS, "flip"),
       "scale": NeuronEdit(NEURONS, "scale", 2.5)}
FACTOR = {"zero": 0.0, "flip": -1.0, "scale": 2.5}


@pytest.fixture(scope="module")
def models():
    return {family: random_model(CONFIGS[name], seed=7) for family, name in FAMILIES.items()}


def inputs(cfg, B=2, T=9):
    tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (B, T)).astype(np.int32)
    return tokens, np.broadcast_to(np.arange(T, dtype=np.int32), (B, T))


def site_scales(cfg, factor: float) -> dict:
    """The site edit {("mlp_hidden", i): {"scale": s_i}}: s_i[j] = factor at NEURONS, else 1."""
    s = np.ones((cfg.num_layers, cfg.intermediate_size), np.float32)
    for layer, j in NEURONS:
        s[layer, j] = factor
    return edits({("mlp_hidden", i): {"scale": s[i]} for i in range(cfg.num_layers)},
                 cfg.num_layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_weight_edit_equals_the_site_edit_on_mlp_hidden(models, family):
    model = models[family]
    tokens, positions = inputs(model.config)
    plain = np.asarray(step(model, None, tokens, positions)[0])
    for op, edit in OPS.items():
        weights = np.asarray(step(apply_edit(model, edit), None, tokens, positions)[0])
        site = np.asarray(step(model, None, tokens, positions,
                               edits=site_scales(model.config, FACTOR[op]))[0])
        np.testing.assert_allclose(weights, site, atol=1e-5, rtol=1e-5, err_msg=op)
        assert np.abs(weights - plain).max() > 1e-3, op  # the edit did change the model


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])  # SwiGLU; GELU with an up bias
def test_a_zeroed_neuron_is_dead_and_the_input_is_untouched(models, family):
    model = models[family]
    leaves = jax.tree_util.tree_leaves(model.params)
    dead = apply_edit(model, OPS["zero"])
    assert all(a is b for a, b in zip(jax.tree_util.tree_leaves(model.params), leaves))
    cfg = model.config
    tokens, positions = inputs(cfg)
    out = run(cfg, dead.params, tokens, positions, empty_rows(cfg, *tokens.shape),
              np.ones(tokens.shape, bool), None, record=True)
    for layer, j in NEURONS:
        assert not np.asarray(out.recorded("mlp_hidden", layer)[..., j]).any()
        mlp = dead.params[f"blocks_{layer}"]["mlp"]
        assert not np.asarray(mlp["down"]["kernel"][:, j]).any()
        assert not np.asarray(mlp["up"]["kernel"][j]).any()
        assert "bias" not in mlp["up"] or float(mlp["up"]["bias"][j]) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_edited_checkpoint_gives_the_same_logits_in_transformers(models, family, tmp_path):
    edited = apply_edit(models[family], OPS["scale"])
    hf = to_transformers(edited, tmp_path)
    tokens, positions = inputs(edited.config)
    np.testing.assert_allclose(np.asarray(step(edited, None, tokens, positions)[0]),
                               hf_logits(hf, tokens), atol=1e-4, rtol=0)


@pytest.mark.parametrize("args, message", [
    (((2, 0),), "layer 2 is outside [0, 2)"),
    (((-1, 0),), "layer -1 is outside [0, 2)"),
    (((0, 128),), "index 128 is outside [0, 128)"),
    (((0, -3),), "index -3 is outside [0, 128)"),
])
def test_indices_outside_the_model_are_refused(models, args, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        apply_edit(models["llama"], NeuronEdit(args, "flip"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(neurons=((0, 1), (0, 1)), op="flip"), r"neuron \(0, 1\) is named more than once"),
    (dict(neurons=((0, 1),), op="scale", factor=float("nan")), "factor=nan"),
    (dict(neurons=((0, 1),), op="scale", factor=float("inf")), "factor=inf"),
    (dict(neurons=((0, 1),), op="scale"), "factor=None"),
    (dict(neurons=((0, 1),), op="flip", factor=2.0), "factor=2.0 is for op 'scale'"),
    (dict(neurons=((0, 1),), op="halve"), "op='halve'"),
    (dict(neurons=(), op="zero"), "at least one neuron"),
    (dict(neurons=((0, 1.5),), op="zero"), "neuron index=1.5"),
])
def test_bad_edits_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NeuronEdit(**kwargs)


# --- dynsys edit ------------------------------------------------------------------------------

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def refused(result, *named) -> None:
    """Exit status 2, no traceback, one line `error: ...` naming each of `named`."""
    assert result.exit_code == 2, (result.exception, result.output)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in named:
        assert str(text) in lines[0], (text, lines[0])


@pytest.fixture(scope="module")
def source(models, tmp_path_factory):
    """The llama model saved as a checkpoint, with a tokenizer."""
    directory = save_hf(models["llama"], tmp_path_factory.mktemp("source") / "ckpt")
    Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(directory / "tokenizer.json"))
    return directory


def test_cli_edit_writes_the_edited_checkpoint_and_its_record(models, source, tmp_path):
    out = tmp_path / "edited"
    result = invoke("edit", source, "--neuron", "0:3", "--neuron", "1:7,1:100", "--op",
                    "scale", "--factor", "2.5", "--out", out)
    assert result.exit_code == 0, result.output
    expected = apply_edit(models["llama"], OPS["scale"])
    written = load_hf(out)
    for a, b in zip(jax.tree_util.tree_leaves(written.params),
                    jax.tree_util.tree_leaves(expected.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tokens, positions = inputs(written.config)  # the site edit the command's help names
    site = step(models["llama"], None, tokens, positions,
                edits=site_scales(written.config, 2.5))[0]
    np.testing.assert_allclose(np.asarray(step(written, None, tokens, positions)[0]),
                               np.asarray(site), atol=1e-5, rtol=1e-5)
    record = json.loads((out / "edit.json").read_text())
    assert record == {"source": {"checkpoint": str(source.resolve()),
                                 "digest": checkpoint_digest(source)},
                      "edit": {"neurons": [[0, 3], [1, 7], [1, 100]], "op": "scale",
                               "factor": 2.5},
                      "dynsys": record["dynsys"]}
    assert isinstance(record["dynsys"], str) and record["dynsys"]
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited"]  # no temporary left


def test_cli_edit_of_a_preset_records_its_seed(tmp_path):
    out = tmp_path / "tiny-flip"
    assert invoke("edit", "tiny", "--neuron", "3:511", "--op", "flip", "--seed", "4",
                  "--out", out).exit_code == 0
    assert json.loads((out / "edit.json").read_text())["source"] == {
        "checkpoint": "tiny", "digest": "preset:tiny", "seed": 4}
    edited, base = load_hf(out), dynsys.load("tiny", seed=4)
    down = base.params["blocks_3"]["mlp"]["down"]["kernel"]
    np.testing.assert_array_equal(edited.params["blocks_3"]["mlp"]["down"]["kernel"],
                                  down.at[:, 511].multiply(-1))
    assert not (out / "tokenizer.json").exists()


@pytest.mark.parametrize("args, named", [
    (("--neuron", "2:0", "--op", "zero"), ["neuron 2:0", "layer 2 is outside [0, 2)"]),
    (("--neuron", "0:128", "--op", "zero"), ["neuron 0:128", "index 128 is outside [0, 128)"]),
    (("--neuron", "0:1,0:1", "--op", "zero"), ["neuron (0, 1) is named more than once"]),
    (("--neuron", "0-1", "--op", "zero"), ["--neuron '0-1' must look like LAYER:INDEX"]),
    (("--neuron", "0:1", "--op", "halve"), ["'halve' is not one of 'zero', 'flip', 'scale'"]),
    (("--neuron", "0:1", "--op", "scale", "--factor", "nan"), ["factor=nan"]),
    (("--neuron", "0:1", "--op", "scale"), ["--op scale needs --factor"]),
])
def test_cli_edit_refuses_bad_input_and_writes_nothing(source, tmp_path, args, named):
    out = tmp_path / "edited"
    refused(invoke("edit", source, *args, "--out", out), *named)
    assert not any(tmp_path.iterdir())


def test_cli_edit_refuses_an_existing_out_and_a_missing_checkpoint(source, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    refused(invoke("edit", source, "--neuron", "0:1", "--op", "zero", "--out", out),
            out, "already exists")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    missing = tmp_path / "nowhere"
    refused(invoke("edit", missing, "--neuron", "0:1", "--op", "zero", "--out",
                   tmp_path / "new"), missing)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("name", ["tokenizer_config.json", "tokenizer.json"])
def test_cli_edit_refuses_a_tokenizer_file_linked_outside(models, tmp_path, name):
    """A tokenizer file that is a link out of the checkpoint is refused: its target (any file
    the user can read) was copied into the new checkpoint as a 0644 regular file."""
    source = save_hf(models["llama"], tmp_path / "ckpt")
    secret = tmp_path / "secret"
    secret.write_text('{"secret": 1}')
    (source / name).symlink_to(secret)
    out = tmp_path / "edited"
    refused(invoke("edit", source, "--neuron", "0:1", "--op", "zero", "--out", out),
            source / name, "outside the checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "secret"]


def test_cli_edit_refuses_a_config_json_that_is_not_an_object(models, tmp_path):
    source = save_hf(models["llama"], tmp_path / "ckpt")
    (source / "config.json").write_text("[]")
    refused(invoke("edit", source, "--neuron", "0:1", "--op", "zero", "--out",
                   tmp_path / "edited"), source / "config.json", "not an object")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
