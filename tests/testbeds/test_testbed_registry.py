"""Recipes: the registered test beds and their checks; the registry and `resolve`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dynsys.testbeds import TESTBEDS, MarkovSource, read_registry, recipe, resolve, sample
from dynsys.testbeds.registry import REGISTRY


@pytest.mark.parametrize("name", ["markov1", "markov2"])
@pytest.mark.parametrize("scale", ["small", "paper"])
def test_each_recipe_builds(name, scale):
    made = recipe(name, scale)
    assert isinstance(made.source, MarkovSource) and made.source.order == int(name[-1])
    assert made.train.model.vocab_size == made.source.vocab_size
    assert made.train.model.max_position_embeddings == made.train.seq_len
    assert made.train.eval_windows == made.settings.heldout_windows
    assert made.key == f"{name}-{scale}" and made.source.tokenizer() is None
    assert json.loads(json.dumps(made.to_dict()))["testbed"] == name


def test_scales_as_asked():
    small, paper = recipe("markov1", "small").train, recipe("markov1", "paper").train
    assert small.model.num_layers == 2 and 64 <= small.model.hidden_size <= 128
    assert 256 <= small.seq_len <= 512
    assert 64 <= paper.model.hidden_size <= 128 and paper.seq_len == 2048
    assert 2 <= paper.model.num_layers <= 4


def test_overrides_reach_source_model_and_training():
    made = recipe("markov1", "small", {"alpha": 0.5, "vocab": 40, "hidden": 32, "steps": 7,
                                       "rope": False})
    assert made.source == MarkovSource(40, 1, 0.5)
    assert made.train.model.vocab_size == 40 and made.train.model.hidden_size == 32
    assert made.train.steps == 7 and not made.train.model.use_rope


@pytest.mark.parametrize("args, message", [
    (("markov9",),
     ("unknown test bed 'markov9' (known: markov1, markov2, longctx-rope, longctx-nope, "
      "ladder-1, ladder-2, ladder-3)")),
    (("markov1", "huge"), "scale 'huge' of test bed 'markov1' is not one of small, paper"),
    (("markov1", "small", {"alhpa": 1}), "unknown setting(s) alhpa of test bed 'markov1'"),
    (("markov1", "small", {"alpha": 0}), "alpha=0: the Dirichlet concentration must be"),
    (("markov1", "small", {"alpha": -0.5}), "alpha=-0.5: the Dirichlet concentration must be"),
    (("markov1", "small", {"vocab": 1}), "vocab=1: the alphabet needs at least 2 symbols"),
    (("markov1", "small", {"seq_len": 512, "positions": 256}),
     "seq_len=512 exceeds the model's max_position_embeddings=256"),
    (("markov1", "small", {"hidden": 30, "heads": 4}), "hidden=30 is not a multiple of heads=4"),
    (("markov1", "small", {"train_windows": 3}), "train_windows=3 is fewer than one batch"),
])
def test_bad_recipes_name_the_value(args, message):
    with pytest.raises(ValueError) as found:
        recipe(*args)
    assert message in str(found.value)


def test_windows_are_whole_sequences_of_one_chain():
    """What the trainer cuts into windows of seq_len + 1 is the sequences laid end to end:
    window i is sequence i."""
    made = recipe("markov1", "small", {"steps": 2, "batch": 4, "seq_len": 16, "positions": 16})
    windows = made.source.windows("train", 8, 16, seed=0)
    flat = windows.ravel()
    np.testing.assert_array_equal(flat.reshape(-1, 17), windows)
    np.testing.assert_array_equal(windows, sample(made.source, "train", 8, 17, seed=0))


def fake_run(root, key, steps, saved, testbed="markov1"):
    """A registry entry and checkpoint directories (config.json only) for `saved` steps."""
    entries = read_registry(root)
    entries[key] = {"testbed": testbed, "scale": key.split("-")[-1], "steps": steps}
    (root / REGISTRY).write_text(json.dumps(entries))
    for step in saved:
        path = root / key / "train" / "checkpoints" / f"step_{step:07d}"
        path.mkdir(parents=True)
        (path / "config.json").write_text("{}")


def test_resolve_names_checkpoints(tmp_path):
    fake_run(tmp_path, "markov1-small", 500, [0, 1, 2, 256, 500])
    base = tmp_path / "markov1-small" / "train" / "checkpoints"
    assert resolve("markov1-small@final", tmp_path) == base / "step_0000500"
    assert resolve("markov1@final", tmp_path) == base / "step_0000500"  # the only markov1
    assert resolve("markov1@step_0000256", tmp_path) == base / "step_0000256"
    assert resolve("markov1@2", tmp_path) == base / "step_0000002"
    assert resolve("markov1@latest", tmp_path) == base / "step_0000500"


def test_resolve_refuses_what_it_cannot_name(tmp_path):
    fake_run(tmp_path, "markov1-small", 500, [0, 1, 2, 256, 500])
    fake_run(tmp_path, "markov1-paper", 4000, [0, 1, 2])
    with pytest.raises(ValueError, match="'markov1' names 2 registered test beds"):
        resolve("markov1@final", tmp_path)
    with pytest.raises(ValueError, match=r"step_0004000 does not exist \(checkpoints: "
                                         r"step_0000000, step_0000001, step_0000002\)"):
        resolve("markov1-paper@final", tmp_path)
    assert resolve("markov1-paper@latest", tmp_path).name == "step_0000002"
    with pytest.raises(ValueError, match="'markov2' names no registered test beds"):
        resolve("markov2@final", tmp_path)
    with pytest.raises(ValueError, match="checkpoint 'last' must be final, latest"):
        resolve("markov1-small@last", tmp_path)
    with pytest.raises(ValueError, match="must look like KEY@CHECKPOINT"):
        resolve("markov1-small", tmp_path)
    assert sorted(TESTBEDS) == ["ladder-1", "ladder-2", "ladder-3", "longctx-nope", "longctx-rope",
                               "markov1", "markov2"]
