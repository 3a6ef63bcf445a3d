import re

import jax
import numpy as np
import pytest

from dynsys.checks import check_int, check_neuron, check_positions, check_tokens, usable_logits
from dynsys.decode import forward, generate, prefill, step
from dynsys.decode.sampling import Sampler
from dynsys.nn import Model, init_params
from dynsys.nn.cache import empty_rows

V = 257  # vocabulary of CONFIGS["llama-g1"]


@pytest.fixture(scope="module")
def model(model_of):
    return model_of("llama-g1")


@pytest.fixture(scope="module")
def short(model):
    """The same weights with a 64-position limit."""
    return Model(model.config.replace(max_position_embeddings=64), model.params)


def ids(*shape):
    return np.random.default_rng(0).integers(0, V, shape)


@pytest.mark.parametrize("bad", [-1, V, V + 1000])
def test_out_of_vocabulary_ids_name_value_and_index(bad, model):
    tokens = ids(2, 6)
    tokens[1, 4] = bad
    with pytest.raises(ValueError, match=re.escape(f"tokens[1, 4] = {bad}")):
        forward(model, tokens)
    with pytest.raises(ValueError, match=re.escape(f"tokens[1, 4] = {bad}")):
        step(model, None, tokens, np.zeros((2, 6), int))
    with pytest.raises(ValueError, match=re.escape(f"prompts[1][4] = {bad}")):
        generate(model, [ids(3), tokens[1]], 4)
    with pytest.raises(ValueError, match=re.escape(f"prompt[4] = {bad}")):
        prefill(model, tokens[1])


def test_check_tokens_accepts_the_boundary_ids():
    out = check_tokens([0, V - 1], V, "t", ndim=1)
    assert out.dtype == np.int32 and list(out) == [0, V - 1]


def test_empty_prompts_raise(model):
    with pytest.raises(ValueError, match="empty"):
        prefill(model, [])
    with pytest.raises(ValueError, match="empty"):
        generate(model, [ids(3), []], 4)
    with pytest.raises(ValueError, match="empty"):
        generate(model, np.zeros((2, 0), int), 4)
    with pytest.raises(ValueError, match="empty"):
        forward(model, np.zeros((1, 0), int))
    with pytest.raises(ValueError, match="no prompts"):
        generate(model, [], 4)


def test_generation_beyond_max_positions_raises(short):
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        generate(short, ids(1, 60), 5)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        generate(short, [ids(10), ids(61)], 4)
    assert generate(short, ids(1, 60), 4).tokens.shape == (1, 4)  # exactly at the limit is fine


def test_prompt_beyond_max_positions_raises(short):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        prefill(short, ids(65))
    with pytest.raises(ValueError, match=re.escape("positions[0, 64] = 64")):
        forward(short, ids(1, 65))


@pytest.mark.parametrize("positions, message", [
    ([[0, 1, 2048]], "positions[0, 2] = 2048"),
    ([[0, -1, 2]], "positions[0, 1] = -1"),
    ([[0, 1]], "shape"),
    ([[0.0, 1.0, 2.0]], "integers"),
])
def test_bad_positions_raise(positions, message, model):
    with pytest.raises(ValueError, match=re.escape(message)):
        step(model, None, ids(1, 3), positions)


def test_check_positions_names_the_limit():
    with pytest.raises(ValueError, match=re.escape("[0, 10)")):
        check_positions([[3, 10]], (1, 2), 10)


def test_wrong_rank_raises(model):
    with pytest.raises(ValueError, match="2-D"):
        generate(model, ids(1, 2, 3), 4)
    with pytest.raises(ValueError, match="2-D"):
        generate(model, ids(5), 4)
    with pytest.raises(ValueError, match="2-D"):
        forward(model, ids(1, 2, 3))
    with pytest.raises(ValueError, match="1-D"):
        prefill(model, ids(1, 5))


def test_non_integer_tokens_raise(model):
    with pytest.raises(ValueError, match="integer"):
        forward(model, np.zeros((1, 3)))


@pytest.mark.parametrize("max_new", [0, -3, 2.5])
def test_bad_max_new_tokens_raise(max_new, model):
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids(1, 4), max_new)


def test_capacity_limits_raise(model):
    with pytest.raises(ValueError, match="capacity"):
        prefill(model, ids(20), capacity=16)
    rows = empty_rows(model.config, 1, 2)
    with pytest.raises(ValueError, match="do not fit"):
        step(model, None, ids(1, 3), [[0, 1, 2]], rows)


@pytest.mark.parametrize("field, value", [
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", float("nan")), ("temperature", -1.0),
    ("temperature", float("nan")), ("top_k", -1), ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0), ("no_repeat_ngram_size", -1),
])
def test_bad_sampler_raises_naming_field(field, value):
    with pytest.raises(ValueError, match=field):
        Sampler(**{field: value})


def test_usable_logits_flags_non_finite_and_constant_rows():
    rows = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [1.0, np.nan, 2.0], [np.nan, 1.0, 2.0],
                     [1.0, np.inf, 0.0], [-np.inf, 0.0, 1.0], [0.5, 0.5, 0.5 + 1e-7]],
                    np.float32)
    expected = [True, False, False, False, False, False, True]
    assert usable_logits(rows).tolist() == expected
    assert np.asarray(jax.jit(usable_logits)(rows)).tolist() == expected


@pytest.mark.parametrize("seed", [1.5, 2**64, -1, True])
def test_seeds_are_integers_a_prng_key_takes(seed, model):
    """2**64 overflowed inside jax.random.PRNGKey, 1.5 failed in a trace."""
    with pytest.raises(ValueError, match=re.escape(f"seed={seed!r} must be an integer")):
        generate(model, ids(1, 4), 2, seed=seed)
    with pytest.raises(ValueError, match=re.escape(f"seed={seed!r} must be an integer")):
        init_params(model.config, seed)


@pytest.mark.parametrize("value, minimum, maximum", [
    (True, None, None), (1.0, None, None), ("3", None, None), (np.float32(2), None, None),
    (0, 1, None), (5, None, 4)])
def test_check_int_refuses_what_is_not_an_integer_in_range(value, minimum, maximum):
    with pytest.raises(ValueError, match=re.escape(f"n={value!r} must be an integer")):
        check_int("n", value, minimum, maximum)


def test_check_int_gives_a_python_int():
    out = check_int("n", np.int64(3), 0, 3)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("neuron, message", [
    ((0,), "neuron (0,) must be a (layer, index) pair"),
    ((0, 1, 2), "neuron (0, 1, 2) must be a (layer, index) pair"),
    ((0, 1.5), "neuron index=1.5 must be an integer"),
    ((True, 1), "layer=True must be an integer"),
    ((2, 0), "neuron 2:0: layer 2 is outside [0, 2)"),
    ((-1, 0), "neuron -1:0: layer -1 is outside [0, 2)"),
    ((1, 8), "neuron 1:8: index 8 is outside [0, 8) (intermediate_size)"),
])
def test_check_neuron_names_the_neuron(neuron, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        check_neuron(neuron, 2, 8)


def test_check_neuron_without_a_model_checks_the_pair_only():
    assert check_neuron([np.int64(5), 99]) == (5, 99)
    assert check_neuron((1, 7), 2, 8) == (1, 7)
