import dataclasses
import functools
import json
import math

import jax
import numpy as np
import pytest
import torch
import transformers
from conftest import CONFIGS, LLAMA3
from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

import dynsys.config
import dynsys.io
from dynsys.config import PRESETS, ModelConfig, from_hf_config, preset, to_hf_config
from dynsys.nn import init_params

# Published parameter counts (embeddings included, tied weights once), from each model's HF config.
PUBLISHED_COUNTS = {
    "llama-3.2-1b": 1_235_814_400,
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
    "pythia-1b": 1_011_781_632,
    "qwen2.5-0.5b": 494_032_768,
    "deepseek-r1-distill-qwen-1.5b": 1_777_088_000,
}

# The published config.json files of four preset models, verbatim (legacy rope format).
PUBLISHED_CONFIG_JSON = {
    "llama-3.2-1b": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "head_dim": 64, "hidden_act": "silu",
        "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 32, "num_hidden_layers": 16, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
        "transformers_version": "4.45.0.dev0", "use_cache": True, "vocab_size": 128256},
    "pythia-70m": {
        "architectures": ["GPTNeoXForCausalLM"], "bos_token_id": 0, "eos_token_id": 0,
        "hidden_act": "gelu", "hidden_size": 512, "initializer_range": 0.02,
        "intermediate_size": 2048, "layer_norm_eps": 1e-05, "max_position_embeddings": 2048,
        "model_type": "gpt_neox", "num_attention_heads": 8, "num_hidden_layers": 6,
        "rotary_emb_base": 10000, "rotary_pct": 0.25, "tie_word_embeddings": False,
        "torch_dtype": "float16", "transformers_version": "4.24.0", "use_cache": True,
        "use_parallel_residual": True, "vocab_size": 50304},
    "qwen2.5-0.5b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
        "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2",
        "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.40.1",
        "use_cache": True, "use_mrope": False, "use_sliding_window": False,
        "vocab_size": 151936},
    "deepseek-r1-distill-qwen-1.5b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0,
        "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu",
        "hidden_size": 1536, "initializer_range": 0.02, "intermediate_size": 8960,
        "max_position_embeddings": 131072, "max_window_layers": 21, "model_type": "qwen2",
        "num_attention_heads": 12, "num_hidden_layers": 28, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06, "rope_theta": 10000, "sliding_window": 4096,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.44.0", "use_cache": True, "use_mrope": False,
        "use_sliding_window": False, "vocab_size": 151936},
}

ALL_CONFIGS = {**PRESETS, **CONFIGS}


@functools.cache
def our_count(cfg: ModelConfig) -> int:
    shapes = jax.eval_shape(lambda: init_params(cfg, 0))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))


def transformers_count(cfg: ModelConfig) -> int:
    hf_cfg = transformers.AutoConfig.for_model(**to_hf_config(cfg))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors appear once


@pytest.mark.parametrize("name", PUBLISHED_COUNTS)
def test_preset_parameter_count_is_published(name):
    assert our_count(preset(name)) == PUBLISHED_COUNTS[name]


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_parameter_count_equals_transformers(name):
    assert our_count(ALL_CONFIGS[name]) == transformers_count(ALL_CONFIGS[name])


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_hf_config_round_trip(name):
    cfg = ALL_CONFIGS[name]
    as_json = json.loads(json.dumps(to_hf_config(cfg)))
    assert from_hf_config(as_json) == cfg
    assert from_hf_config(transformers.AutoConfig.for_model(**as_json)) == cfg


def test_hf_config_round_trip_drops_dtype_only():
    cfg = preset("pythia-70m")
    assert from_hf_config(to_hf_config(cfg.replace(dtype="bfloat16"))) == cfg


@pytest.mark.parametrize("name", PUBLISHED_CONFIG_JSON)
def test_published_config_json_reads_as_preset(name):
    assert from_hf_config(PUBLISHED_CONFIG_JSON[name]) == preset(name)


def _expected(family, **changes):
    base = dict(family=family, vocab_size=100, hidden_size=48, intermediate_size=96,
                num_layers=3, num_heads=4, num_kv_heads=2, head_dim=12, norm_eps=1e-5,
                max_position_embeddings=512, initializer_range=0.05)
    return ModelConfig(**{**base, **changes})


_COMMON = dict(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
               num_attention_heads=4, max_position_embeddings=512, initializer_range=0.05)

TRANSFORMERS_CONFIGS = {
    "llama-llama3-tied": (
        LlamaConfig(**_COMMON, num_key_value_heads=2, rms_norm_eps=1e-5, tie_word_embeddings=True,
                    rope_theta=5e5,
                    rope_scaling={"rope_type": "llama3", **dataclasses.asdict(LLAMA3)}),
        _expected("llama", tie_embeddings=True, rope_theta=5e5, rope_scaling=LLAMA3)),
    "llama-head-dim": (
        LlamaConfig(**_COMMON, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6),
        _expected("llama", num_kv_heads=1, head_dim=16, norm_eps=1e-6)),
    "qwen2": (
        Qwen2Config(**_COMMON, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=1e6),
        _expected("qwen2", rope_theta=1e6)),
    "gpt_neox": (
        GPTNeoXConfig(**_COMMON, rotary_pct=0.5, rotary_emb_base=500.0, layer_norm_eps=1e-5,
                      use_parallel_residual=False),
        _expected("gpt_neox", num_kv_heads=4, rotary_pct=0.5, rope_theta=500.0,
                  parallel_residual=False)),
    "mistral-no-window": (
        MistralConfig(**_COMMON, num_key_value_heads=2, head_dim=12, rms_norm_eps=1e-5,
                      sliding_window=None),
        _expected("llama")),
}


@pytest.mark.parametrize("name", TRANSFORMERS_CONFIGS)
def test_from_transformers_config_object(name):
    hf, expected = TRANSFORMERS_CONFIGS[name]
    assert from_hf_config(hf) == expected
    assert from_hf_config(hf.to_dict()) == expected


def test_legacy_rope_scaling_dict():
    legacy = {**to_hf_config(CONFIGS["llama-g4-tied-llama3"])}
    del legacy["rope_parameters"]
    legacy["rope_scaling"] = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    assert from_hf_config(legacy) == CONFIGS["llama-g4-tied-llama3"]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gpt_neox", "mistral"])
def test_missing_fields_default_like_transformers(model_type):
    """A config.json may omit fields; the defaults must be those transformers applies."""
    minimal = dict(model_type=model_type, vocab_size=100, hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4)
    if model_type != "gpt_neox":
        minimal["num_key_value_heads"] = 2
    if model_type == "mistral":
        minimal["sliding_window"] = None
    assert from_hf_config(minimal) == from_hf_config(transformers.AutoConfig.for_model(**minimal))


def _hf(name="llama-g1", **changes):
    hf = to_hf_config(CONFIGS[name])
    hf.update(changes)
    return hf


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}

UNSUPPORTED = {
    "unknown key": (_hf(frobnicate=1), "frobnicate"),
    "yarn (legacy)": (_hf(rope_scaling=YARN), "yarn"),
    "yarn (rope_parameters)": (_hf(rope_parameters={"rope_theta": 1e4, **YARN}), "yarn"),
    "relu": (_hf(hidden_act="relu"), "relu"),
    "mistral sliding window": (_hf(model_type="mistral", sliding_window=4096),
                               "sliding_window"),
    "qwen2 sliding window": (_hf("qwen2-g2-tied", use_sliding_window=True, sliding_window=64),
                             "use_sliding_window"),
    "mrope": (_hf("qwen2-g2-tied", use_mrope=True), "use_mrope"),
    "mlp bias": (_hf(mlp_bias=True), "mlp_bias"),
    "llama attention bias": (_hf(attention_bias=True), "attention_bias"),
    "pretraining_tp": (_hf(pretraining_tp=2), "pretraining_tp"),
    "model type": (_hf(model_type="gpt2"), "gpt2"),
    "heads vs kv heads": (_hf(num_key_value_heads=3), "num_kv_heads"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_hf_field_raises_naming_it(case):
    hf, field = UNSUPPORTED[case]
    with pytest.raises(ValueError, match=field):
        from_hf_config(hf)


BAD_CONFIGS = {
    "num_kv_heads": dict(num_heads=4, num_kv_heads=3),
    "family": dict(family="gpt2"),
    "vocab_size": dict(vocab_size=0),
    "rotary_pct": dict(rotary_pct=0.0),
    "rotary dimension": dict(rotary_pct=0.125, head_dim=12),  # 1.5 dims
    "dtype": dict(dtype="float16"),
}


@pytest.mark.parametrize("field", BAD_CONFIGS)
def test_invalid_config_raises_naming_field(field):
    with pytest.raises(ValueError, match=field):
        CONFIGS["llama-g1"].replace(**BAD_CONFIGS[field])


@pytest.mark.parametrize("cfg, field", [
    (CONFIGS["neox-rot25"].with_rope(False), "use_rope"),  # a NoPE llama is a smollm3
    (CONFIGS["neox-rot25"].replace(num_kv_heads=2), "num_kv_heads"),
    (CONFIGS["llama-g1"].replace(rotary_pct=0.5), "rotary_pct"),
])
def test_to_hf_config_refuses_what_transformers_cannot_express(cfg, field):
    with pytest.raises(ValueError, match=field):
        to_hf_config(cfg)


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="nope"):
        preset("nope")
    with pytest.raises(ValueError, match="nope"):
        dynsys.io.load("nope")


def test_public_names_exist():
    assert all(hasattr(dynsys.config, name) for name in dynsys.config.__all__)


# --- exact reading: wrong types, impossible values, conflicting rope dicts ----------------------

def _raises_naming(call, *names):
    """`call()` raises a one-line ValueError whose message contains every string in `names`."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for name in names:
        assert name in message, (name, message)


def _without(hf, *keys):
    return {k: v for k, v in hf.items() if k not in keys}


def _llama3_rope(**changes):
    rope = {"rope_type": "llama3", **dataclasses.asdict(LLAMA3), "rope_theta": 10000.0}
    return {**rope, **changes}


NAN, INF = float("nan"), float("inf")

# case: (config.json dict, the field the message must name, the bad value's repr)
BAD_HF_VALUES = {
    "tie_word_embeddings 'false'": (_hf(tie_word_embeddings="false"), "tie_word_embeddings",
                                    "'false'"),
    "tie_word_embeddings 0": (_hf(tie_word_embeddings=0), "tie_word_embeddings", "0"),
    "tie_word_embeddings null": (_hf(tie_word_embeddings=None), "tie_word_embeddings", "None"),
    "vocab_size 64.9": (_hf(vocab_size=64.9), "vocab_size", "64.9"),
    "vocab_size 64.0": (_hf(vocab_size=64.0), "vocab_size", "64.0"),
    "vocab_size '64'": (_hf(vocab_size="64"), "vocab_size", "'64'"),
    "num_hidden_layers true": (_hf(num_hidden_layers=True), "num_hidden_layers", "True"),
    "num_hidden_layers 0": (_hf(num_hidden_layers=0), "num_hidden_layers", "0"),
    "num_attention_heads true": (_hf(num_attention_heads=True, num_key_value_heads=True,
                                     head_dim=64), "num_attention_heads", "True"),
    "num_key_value_heads 2.0": (_hf(num_key_value_heads=2.0), "num_key_value_heads", "2.0"),
    "head_dim '16'": (_hf(head_dim="16"), "head_dim", "'16'"),
    "max_position_embeddings true": (_hf(max_position_embeddings=True),
                                     "max_position_embeddings", "True"),
    "rms_norm_eps '1e-5'": (_hf(rms_norm_eps="1e-5"), "rms_norm_eps", "'1e-5'"),
    "rms_norm_eps true": (_hf(rms_norm_eps=True), "rms_norm_eps", "True"),
    "rms_norm_eps 0": (_hf(rms_norm_eps=0.0), "rms_norm_eps", "0.0"),
    "rms_norm_eps < 0": (_hf(rms_norm_eps=-1e-5), "rms_norm_eps", "-1e-05"),
    "rms_norm_eps nan": (_hf(rms_norm_eps=NAN), "rms_norm_eps", "nan"),
    "layer_norm_eps 0": (_hf("neox-rot25", layer_norm_eps=0), "layer_norm_eps", "0"),
    "layer_norm_eps '1e-5'": (_hf("neox-rot25", layer_norm_eps="1e-5"), "layer_norm_eps",
                              "'1e-5'"),
    "rope_theta 0": (_without(_hf(rope_theta=0), "rope_parameters"), "rope_theta", "0"),
    "rope_theta < 0": (_without(_hf(rope_parameters={"rope_theta": -1e4}), "rope_theta"),
                       "rope_theta", "-10000.0"),
    "rope_theta inf": (_without(_hf(rope_parameters={"rope_theta": INF}), "rope_theta"),
                       "rope_theta", "inf"),
    "rope_theta '1e4'": (_without(_hf(rope_parameters={"rope_theta": "1e4"}), "rope_theta"),
                         "rope_theta", "'1e4'"),
    "rotary_emb_base true": (_without(_hf("neox-rot25", rotary_emb_base=True),
                                      "rope_parameters", "rope_theta"),
                             "rotary_emb_base", "True"),
    "rotary_pct true": (_without(_hf("neox-rot25", rotary_pct=True), "rope_parameters"),
                        "rotary_pct", "True"),
    "partial_rotary_factor '0.5'": (
        _without(_hf("neox-rot25", partial_rotary_factor="0.5"), "rope_parameters", "rotary_pct"),
        "partial_rotary_factor", "'0.5'"),
    "initializer_range '0.02'": (_hf(initializer_range="0.02"), "initializer_range", "'0.02'"),
    "initializer_range true": (_hf(initializer_range=True), "initializer_range", "True"),
    "initializer_range < 0": (_hf(initializer_range=-0.02), "initializer_range", "-0.02"),
    "use_parallel_residual 'true'": (_hf("neox-rot25", use_parallel_residual="true"),
                                     "use_parallel_residual", "'true'"),
    "attention_bias 0": (_hf(attention_bias=0), "attention_bias", "0"),
    "mlp_bias 'false'": (_hf(mlp_bias="false"), "mlp_bias", "'false'"),
    "use_sliding_window 'false'": (_hf("qwen2-g2-tied", use_sliding_window="false"),
                                   "use_sliding_window", "'false'"),
    "use_mrope 0": (_hf("qwen2-g2-tied", use_mrope=0), "use_mrope", "0"),
    "pretraining_tp 1.0": (_hf(pretraining_tp=1.0), "pretraining_tp", "1.0"),
    "llama3 factor '8'": (_hf(rope_parameters=_llama3_rope(factor="8")), "factor", "'8'"),
    "llama3 factor true": (_hf(rope_parameters=_llama3_rope(factor=True)), "factor", "True"),
    "llama3 factor 0": (_hf(rope_parameters=_llama3_rope(factor=0.0)), "factor", "0.0"),
    "llama3 low_freq_factor nan": (_hf(rope_parameters=_llama3_rope(low_freq_factor=NAN)),
                                   "low_freq_factor", "nan"),
    "llama3 high <= low": (_hf(rope_parameters=_llama3_rope(high_freq_factor=1.0)),
                           "high_freq_factor", "1.0"),
    "llama3 original 64.0": (
        _hf(rope_parameters=_llama3_rope(original_max_position_embeddings=64.0)),
        "original_max_position_embeddings", "64.0"),
    "llama3 missing factor": (_hf(rope_parameters=_without(_llama3_rope(), "factor")),
                              "factor", "llama3"),
    "missing vocab_size": (_without(_hf(), "vocab_size"), "vocab_size", "missing"),
    "vocab_size 10**12": (_hf(vocab_size=10**12), "vocab_size", "1000000000000"),
    "rope_parameters a list": (_hf(rope_parameters=[1e4]), "rope_parameters", "[10000.0]"),
}


@pytest.mark.parametrize("case", BAD_HF_VALUES)
def test_hf_value_of_wrong_type_or_range_raises_naming_field_and_value(case):
    hf, field, value = BAD_HF_VALUES[case]
    _raises_naming(lambda: from_hf_config(hf), field, value)


def test_legacy_rope_scaling_conflicting_with_rope_parameters_raises():
    hf = _hf("llama-g4-tied-llama3")
    hf["rope_scaling"] = {**hf["rope_scaling"], "factor": 16.0}
    assert hf["rope_parameters"]["factor"] == 8.0
    _raises_naming(lambda: from_hf_config(hf), "factor", "16.0", "8.0", "rope_scaling",
                   "rope_parameters")
    # `type` is the legacy spelling of `rope_type`: linear scaling does not hide behind it
    hf = _hf(rope_scaling={"type": "linear", "factor": 2.0})
    _raises_naming(lambda: from_hf_config(hf), "rope_type", "'linear'", "'default'")


@pytest.mark.parametrize("name, field, value, other", [
    ("llama-g1", "rope_theta", 5e5, "rope_parameters.rope_theta"),
    ("neox-rot25", "rotary_emb_base", 500, "rope_parameters.rope_theta"),
    ("neox-rot25", "rotary_pct", 0.5, "rope_parameters.partial_rotary_factor"),
    ("neox-rot25", "partial_rotary_factor", 0.5, "rope_parameters.partial_rotary_factor"),
])
def test_top_level_rope_field_conflicting_with_rope_parameters_raises(name, field, value, other):
    """No silent precedence between spellings of one RoPE parameter (transformers' own order
    differs between versions and families)."""
    _raises_naming(lambda: from_hf_config(_hf(name, **{field: value})), field, repr(value), other)


# What transformers' own configs may write and must keep loading.
VALID_HF_VARIANTS = {
    "rope_scaling equal to rope_parameters": (
        "llama-g4-tied-llama3", lambda hf: {**hf, "rope_scaling": dict(hf["rope_parameters"])}),
    "legacy 'type' next to 'rope_type'": (
        "llama-g4-tied-llama3",
        lambda hf: {**_without(hf, "rope_parameters"),
                    "rope_scaling": {**hf["rope_scaling"], "type": "llama3"}}),
    "integer floats": (
        "llama-g4-tied-llama3",
        lambda hf: {**hf, "rope_theta": 10000,
                    "rope_parameters": _llama3_rope(factor=8, low_freq_factor=1,
                                                    high_freq_factor=4, rope_theta=10000)}),
    "nulls for optional fields": (
        "llama-g1", lambda hf: {**hf, "head_dim": None, "num_key_value_heads": None,
                                "rope_scaling": None, "pretraining_tp": None}),
    "rope_parameters null": (
        "llama-g1", lambda hf: {**hf, "rope_parameters": None, "rope_theta": 10000}),
    "qwen2 sliding_window null or inert": (
        "qwen2-g2-tied", lambda hf: {**hf, "sliding_window": None, "use_sliding_window": False}),
    "gpt_neox legacy rotary fields only": (
        "neox-rot25", lambda hf: _without(hf, "rope_parameters", "rope_theta")),
}


@pytest.mark.parametrize("case", VALID_HF_VARIANTS)
def test_valid_hf_variants_still_load(case):
    name, change = VALID_HF_VARIANTS[case]
    hf = change(to_hf_config(CONFIGS[name]))
    assert from_hf_config(json.loads(json.dumps(hf))) == CONFIGS[name]


def test_initializer_range_zero_is_valid():
    assert from_hf_config(_hf(initializer_range=0.0)).initializer_range == 0.0


BAD_MODEL_VALUES = {
    "norm_eps 0": (dict(norm_eps=0.0), "norm_eps", "0.0"),
    "norm_eps < 0": (dict(norm_eps=-1e-5), "norm_eps", "-1e-05"),
    "norm_eps nan": (dict(norm_eps=NAN), "norm_eps", "nan"),
    "norm_eps inf": (dict(norm_eps=INF), "norm_eps", "inf"),
    "norm_eps str": (dict(norm_eps="1e-5"), "norm_eps", "'1e-5'"),
    "rope_theta 0": (dict(rope_theta=0.0), "rope_theta", "0.0"),
    "rope_theta < 0": (dict(rope_theta=-1.0), "rope_theta", "-1.0"),
    "rope_theta nan": (dict(rope_theta=NAN), "rope_theta", "nan"),
    "rope_theta inf": (dict(rope_theta=INF), "rope_theta", "inf"),
    "initializer_range < 0": (dict(initializer_range=-0.1), "initializer_range", "-0.1"),
    "initializer_range nan": (dict(initializer_range=NAN), "initializer_range", "nan"),
    "initializer_range inf": (dict(initializer_range=INF), "initializer_range", "inf"),
    "rotary_pct true": (dict(rotary_pct=True), "rotary_pct", "True"),
    "vocab_size true": (dict(vocab_size=True), "vocab_size", "True"),
    "num_layers true": (dict(num_layers=True), "num_layers", "True"),
    "head_dim 16.0": (dict(head_dim=16.0), "head_dim", "16.0"),
    "max_position_embeddings beyond int32": (dict(max_position_embeddings=10**12),
                                             "max_position_embeddings", "1000000000000"),
    "vocab_size beyond int32": (dict(vocab_size=2**31 + 1), "vocab_size", "2147483649"),
    "tie_embeddings 1": (dict(tie_embeddings=1), "tie_embeddings", "1"),
    "use_rope 'false'": (dict(use_rope="false"), "use_rope", "'false'"),
    "parallel_residual on llama": (dict(parallel_residual=True), "parallel_residual", "True"),
    "param_dtype float16": (dict(param_dtype="float16"), "param_dtype", "'float16'"),
    "cache_dtype int8": (dict(cache_dtype="int8"), "cache_dtype", "'int8'"),
    "rope_scaling dict": (dict(rope_scaling={"factor": 8.0}), "rope_scaling", "'factor'"),
}


@pytest.mark.parametrize("case", BAD_MODEL_VALUES)
def test_broken_model_config_raises_naming_field_and_value(case):
    changes, field, value = BAD_MODEL_VALUES[case]
    _raises_naming(lambda: CONFIGS["llama-g1"].replace(**changes), field, value)


def test_layer_kinds_are_resolved_once_from_the_family():
    kinds = {name: (c.norm, c.mlp, c.qkv_bias, c.out_bias, c.parallel_residual)
             for name, c in CONFIGS.items()}
    assert kinds["llama-g1"] == ("rms", "swiglu", False, False, False)
    assert kinds["qwen2-g2-tied"] == ("rms", "swiglu", True, False, False)
    assert kinds["neox-rot25"] == ("layer", "gelu", True, True, True)
    assert kinds["neox-rot50-tied-seq"][-1] is False
    assert CONFIGS["llama-g1"].replace(parallel_residual=None).parallel_residual is False


def test_dtypes_are_separate_and_the_cache_follows_the_activations():
    cfg = CONFIGS["llama-g1"].replace(dtype="bfloat16", cache_dtype=None)
    assert (cfg.param_dtype, cfg.dtype, cfg.cache_dtype) == ("float32", "bfloat16", "bfloat16")
    assert CONFIGS["llama-g1"].with_dtype("bfloat16").param_dtype == "bfloat16"


BAD_LLAMA3 = {
    "factor 0": (dict(factor=0.0), "factor", "0.0"),
    "factor < 0": (dict(factor=-8.0), "factor", "-8.0"),
    "factor nan": (dict(factor=NAN), "factor", "nan"),
    "factor inf": (dict(factor=INF), "factor", "inf"),
    "factor true": (dict(factor=True), "factor", "True"),
    "low_freq_factor 0": (dict(low_freq_factor=0.0, high_freq_factor=4.0), "low_freq_factor",
                          "0.0"),
    "high_freq_factor == low_freq_factor": (dict(low_freq_factor=4.0, high_freq_factor=4.0),
                                            "high_freq_factor", "4.0"),
    "high_freq_factor < low_freq_factor": (dict(low_freq_factor=4.0, high_freq_factor=1.0),
                                           "high_freq_factor", "1.0"),
    "high_freq_factor inf": (dict(high_freq_factor=INF), "high_freq_factor", "inf"),
    "original 0": (dict(original_max_position_embeddings=0), "original_max_position_embeddings",
                   "0"),
    "original 64.0": (dict(original_max_position_embeddings=64.0),
                      "original_max_position_embeddings", "64.0"),
    "original true": (dict(original_max_position_embeddings=True),
                      "original_max_position_embeddings", "True"),
}


@pytest.mark.parametrize("case", BAD_LLAMA3)
def test_broken_llama3_scaling_raises_naming_field_and_value(case):
    changes, field, value = BAD_LLAMA3[case]
    _raises_naming(lambda: dataclasses.replace(LLAMA3, **changes), field, value)


def test_config_numbers_are_stored_as_python_numbers():
    """numpy scalars and ints for float fields are accepted and stored as int / float."""
    scaling = dataclasses.replace(LLAMA3, factor=8, original_max_position_embeddings=np.int32(64))
    cfg = CONFIGS["llama-g4-tied-llama3"].replace(
        vocab_size=np.int64(257), rope_theta=10000, norm_eps=np.float32(0.5), rope_scaling=scaling)
    assert cfg == CONFIGS["llama-g4-tied-llama3"].replace(norm_eps=0.5)
    assert type(cfg.vocab_size) is int and type(cfg.rope_theta) is float
    assert type(cfg.norm_eps) is float and type(cfg.rope_scaling.factor) is float
    assert type(cfg.rope_scaling.original_max_position_embeddings) is int
    json.dumps(to_hf_config(cfg))
