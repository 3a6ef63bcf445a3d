"""Hugging Face config.json <-> ModelConfig, read exactly: a field that changes the
forward pass and is not represented is an error."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from dynsys.config.model import Llama3Scaling, ModelConfig, check_bool, check_float, check_int

# smollm3 is a llama whose layers each use RoPE or not (`no_rope_layers`): a NoPE llama
# (use_rope=False) is written as one with no RoPE layer.
_HF_MODEL_TYPES = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gpt_neox": "gpt_neox",
                   "smollm3": "llama"}
_HF_ACTIVATION = {"llama": "silu", "qwen2": "silu", "gpt_neox": "gelu"}
# transformers' defaults for the fields a config.json may leave out (they change the math).
_HF_DEFAULTS: dict[str, dict[str, Any]] = {
    "llama": {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 2048},
    "mistral": {"rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                "max_position_embeddings": 131072},
    "qwen2": {"rms_norm_eps": 1e-6, "tie_word_embeddings": False, "max_position_embeddings": 32768},
    "smollm3": {"rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                "max_position_embeddings": 32768, "rope_theta": 2e6},
    "gpt_neox": {"layer_norm_eps": 1e-5, "tie_word_embeddings": False,
                 "max_position_embeddings": 2048, "rotary_pct": 0.25,
                 "use_parallel_residual": True},
}
# Fields read by from_hf_config.
_HF_HANDLED = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "rms_norm_eps", "layer_norm_eps", "tie_word_embeddings",
    "rope_theta", "rope_scaling", "rope_parameters", "rotary_pct", "rotary_emb_base",
    "partial_rotary_factor", "use_parallel_residual", "attention_bias", "mlp_bias",
    "pretraining_tp", "sliding_window", "use_sliding_window", "use_mrope", "initializer_range",
    "no_rope_layers", "no_rope_layer_interval",
}
# Fields that do not change the forward pass (tokens, dropout, generation defaults, metadata).
_HF_INERT = {
    "architectures", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "attention_dropout", "hidden_dropout", "classifier_dropout", "embd_pdrop", "resid_pdrop",
    "attn_pdrop", "_name_or_path", "_commit_hash", "_attn_implementation_autoset",
    "output_hidden_states", "output_attentions", "return_dict", "use_return_dict",
    "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "add_cross_attention",
    "cross_attention_hidden_size", "tie_encoder_decoder", "torchscript", "pruned_heads",
    "tf_legacy_loss", "use_bfloat16", "id2label", "label2id", "problem_type", "finetuning_task",
    "prefix", "task_specific_params", "tokenizer_class", "max_window_layers", "layer_types",
    "max_length", "min_length", "do_sample", "num_beams", "num_beam_groups", "temperature",
    "top_k", "top_p", "typical_p", "repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "early_stopping", "length_penalty",
    "diversity_penalty", "num_return_sequences", "output_scores", "return_dict_in_generate",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
}


# Fields transformers lets be null, meaning absent (derived or defaulted); any other null is an
# error. (A null `rope_scaling` or `rope_parameters` is read as an empty dict.)
_HF_NULLABLE = {"num_key_value_heads", "head_dim", "pretraining_tp", "sliding_window"}
_REQUIRED = object()


def _hf_get(hf: Mapping[str, Any], key: str, check: Callable[..., Any], default: Any = _REQUIRED,
            **bounds: Any) -> Any:
    """check(key, hf[key], **bounds), or `default` where the field is absent (or null, for the
    fields in _HF_NULLABLE). An absent field without a default is an error."""
    if key not in hf or (hf[key] is None and key in _HF_NULLABLE):
        if default is _REQUIRED:
            raise ValueError(f"{key} is missing from the Hugging Face config")
        return default
    return check(key, hf[key], **bounds)


def _rope_dict(hf: Mapping[str, Any], key: str) -> dict[str, Any]:
    """hf[key] as a dict of RoPE parameters, the legacy spelling `type` read as `rope_type`;
    {} where absent or null."""
    value = hf.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}={value!r} must be a dict or null")
    params = dict(value)
    if "type" in params:
        legacy = params.pop("type")
        if params.setdefault("rope_type", legacy) != legacy:
            raise ValueError(f"{key} has type={legacy!r} but rope_type={params['rope_type']!r}")
    return params


# Top-level fields that spell a RoPE parameter: (field, the key it means in rope_parameters).
_HF_ROPE_ALIASES = (("rope_theta", "rope_theta"), ("rotary_emb_base", "rope_theta"),
                    ("partial_rotary_factor", "partial_rotary_factor"),
                    ("rotary_pct", "partial_rotary_factor"))
_LLAMA3_KEYS = tuple(f.name for f in dataclasses.fields(Llama3Scaling))


def _rope_from_hf(hf: Mapping[str, Any], model_type: str
                  ) -> tuple[float, Llama3Scaling | None, float]:
    """(theta, llama3 scaling, partial rotary factor) from either HF rope format: the dict
    `rope_parameters`, or the legacy dict `rope_scaling` with top-level `rope_theta` /
    `rotary_emb_base` and `partial_rotary_factor` / `rotary_pct`. Where several of these give
    the same parameter they must agree; a disagreement names both fields and values. `hf` is
    the config as given (a default is no source: it applies only where nothing is given)."""
    given = [(f"{name}.{key}", key, value) for name in ("rope_parameters", "rope_scaling")
             for key, value in _rope_dict(hf, name).items()]  # (field, parameter, value)
    given += [(field, key, hf[field]) for field, key in _HF_ROPE_ALIASES if field in hf]
    rope: dict[str, tuple[str, Any]] = {}  # parameter -> (the field it was read from, value)
    for field, key, value in given:
        if key in rope and (rope[key][1] != value  # True == 1, but a bool is never a number
                            or isinstance(rope[key][1], bool) != isinstance(value, bool)):
            raise ValueError(f"{field}={value!r} conflicts with {rope[key][0]}={rope[key][1]!r}")
        rope.setdefault(key, (field, value))
    default_theta = _HF_DEFAULTS[model_type].get("rope_theta", 10000.0)
    theta = check_float(*rope.get("rope_theta", ("rope_theta", default_theta)), above=0)
    default_partial = _HF_DEFAULTS[model_type].get("rotary_pct", 1.0)
    partial = check_float(*rope.get("partial_rotary_factor", ("rotary_pct", default_partial)),
                          above=0, at_most=1)
    rope_type = rope.get("rope_type", ("rope_type", "default"))[1]
    if rope_type == "default":
        return theta, None, partial
    if rope_type == "llama3":
        missing = [key for key in _LLAMA3_KEYS if key not in rope]
        if missing:
            raise ValueError(f"rope_type='llama3' needs {missing}, which the config lacks")
        return theta, Llama3Scaling(**{key: rope[key][1] for key in _LLAMA3_KEYS}), partial
    raise ValueError(f"rope type {rope_type!r} is not supported (supported: 'default', 'llama3')")


def from_hf_config(hf: Mapping[str, Any] | Any) -> ModelConfig:
    """A ModelConfig from a Hugging Face config (a dict as in config.json, or a PretrainedConfig).

    Any field that changes the forward pass and is not represented raises ValueError. Values are
    read exactly, never coerced: sizes are integers (not bools, floats or strings), the norm
    epsilon, rope_theta and the RoPE factors are numbers (ints allowed) in range, flags are
    true or false; null is accepted only where transformers accepts it (`_HF_NULLABLE`, and the
    rope dicts). Each error is one line naming the field and its value.
    """
    if not isinstance(hf, Mapping):
        hf = hf.to_dict()
    model_type = hf.get("model_type")
    if model_type not in _HF_MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r} is not supported "
                         f"(supported: {sorted(_HF_MODEL_TYPES)})")
    family = _HF_MODEL_TYPES[model_type]
    unknown = sorted(k for k in hf if k not in _HF_HANDLED | _HF_INERT)
    if unknown:
        raise ValueError(f"Hugging Face config fields not understood by dynsys: {unknown}")
    theta, scaling, partial = _rope_from_hf(hf, model_type)
    hf = {**_HF_DEFAULTS[model_type], **hf}

    act = hf.get("hidden_act", _HF_ACTIVATION[family])
    if act != _HF_ACTIVATION[family]:
        raise ValueError(f"hidden_act={act!r} is not supported for {model_type} "
                         f"(expected {_HF_ACTIVATION[family]!r})")
    if _hf_get(hf, "mlp_bias", check_bool, False):
        raise ValueError("mlp_bias=True is not supported")
    if (tp := _hf_get(hf, "pretraining_tp", check_int, 1)) != 1:
        raise ValueError(f"pretraining_tp={tp} is not supported")
    window = _hf_get(hf, "sliding_window", check_int, None)
    if model_type == "mistral" and window is not None:
        raise ValueError(f"sliding_window={window} is not supported (mistral without sliding "
                         "window only)")
    if _hf_get(hf, "use_sliding_window", check_bool, False):
        raise ValueError("use_sliding_window=True is not supported")
    if _hf_get(hf, "use_mrope", check_bool, False):
        raise ValueError("use_mrope=True (multimodal RoPE) is not supported")
    expected_bias = family in ("qwen2", "gpt_neox")
    bias = _hf_get(hf, "attention_bias", check_bool, expected_bias)
    if model_type == "qwen2":
        bias = True  # Qwen2 always has q/k/v biases; its config has no switch
    if bias != expected_bias:
        raise ValueError(f"attention_bias={bias} is not supported for {model_type}")

    heads = _hf_get(hf, "num_attention_heads", check_int, minimum=1)
    hidden = _hf_get(hf, "hidden_size", check_int, minimum=1)
    layers = _hf_get(hf, "num_hidden_layers", check_int, minimum=1)
    eps_key = "layer_norm_eps" if family == "gpt_neox" else "rms_norm_eps"
    return ModelConfig(
        family=family,
        vocab_size=_hf_get(hf, "vocab_size", check_int, minimum=1),
        hidden_size=hidden,
        intermediate_size=_hf_get(hf, "intermediate_size", check_int, minimum=1),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=_hf_get(hf, "num_key_value_heads", check_int, heads, minimum=1),
        head_dim=_hf_get(hf, "head_dim", check_int, hidden // heads, minimum=1),
        rope_theta=theta,
        rope_scaling=scaling,
        rotary_pct=partial,
        norm_eps=_hf_get(hf, eps_key, check_float, above=0),
        tie_embeddings=_hf_get(hf, "tie_word_embeddings", check_bool),
        parallel_residual=(_hf_get(hf, "use_parallel_residual", check_bool, True)
                           if family == "gpt_neox" else None),  # transformers' llama ignores it
        max_position_embeddings=_hf_get(hf, "max_position_embeddings", check_int, minimum=1),
        initializer_range=_hf_get(hf, "initializer_range", check_float, 0.02, at_least=0),
        use_rope=_rope_layers(hf, layers) if model_type == "smollm3" else True,
    )


def _rope_layers(hf: Mapping[str, Any], layers: int) -> bool:
    """Whether every layer of a smollm3 config uses RoPE (True) or none does (False), from
    `no_rope_layers` (1: RoPE, 0: NoPE), or transformers' default when it is absent (a NoPE
    layer every `no_rope_layer_interval`); a mixture is not supported."""
    given = hf.get("no_rope_layers")
    if given is None:
        interval = _hf_get(hf, "no_rope_layer_interval", check_int, 4, minimum=1)
        given = [int((i + 1) % interval != 0) for i in range(layers)]
    if not isinstance(given, list) or len(given) < layers or any(
            isinstance(v, bool) or v not in (0, 1) for v in given[:layers]):
        raise ValueError(f"no_rope_layers={given!r} must list 0 or 1 for each of the "
                         f"{layers} layers")
    if len(set(given[:layers])) > 1:
        raise ValueError(f"no_rope_layers={given!r}: RoPE in some layers only is not "
                         "supported (all 1: RoPE, all 0: NoPE)")
    return given[0] == 1


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json dict of the equivalent Hugging Face model (transformers >= 4.45 format).

    A llama with `use_rope=False` (NoPE) is a smollm3 without RoPE layers (`no_rope_layers`
    all 0); another family with `use_rope=False` has no equivalent and raises ValueError.
    """
    if not cfg.use_rope and cfg.family != "llama":
        raise ValueError(f"use_rope=False has no Hugging Face equivalent for {cfg.family} "
                         "(llama only)")
    if cfg.family == "gpt_neox" and cfg.num_kv_heads != cfg.num_heads:
        raise ValueError(f"gpt_neox has no grouped-query attention (num_kv_heads="
                         f"{cfg.num_kv_heads} != num_heads={cfg.num_heads})")
    if cfg.family == "gpt_neox" and cfg.head_dim * cfg.num_heads != cfg.hidden_size:
        raise ValueError(f"gpt_neox needs head_dim * num_heads == hidden_size, got "
                         f"{cfg.head_dim} * {cfg.num_heads} != {cfg.hidden_size}")
    if cfg.family != "gpt_neox" and cfg.rotary_pct != 1.0:
        raise ValueError(f"rotary_pct={cfg.rotary_pct} is only expressible for gpt_neox")
    rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": "default"}
    if cfg.rope_scaling is not None:
        rope.update(rope_type="llama3", **dataclasses.asdict(cfg.rope_scaling))
    hf: dict[str, Any] = {
        "model_type": cfg.family,
        "architectures": [{"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                           "gpt_neox": "GPTNeoXForCausalLM"}[cfg.family]],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "hidden_act": _HF_ACTIVATION[cfg.family],
        "max_position_embeddings": cfg.max_position_embeddings,
        "initializer_range": cfg.initializer_range,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": cfg.rope_theta,
        "torch_dtype": cfg.param_dtype,
    }
    if cfg.family == "gpt_neox":
        rope["partial_rotary_factor"] = cfg.rotary_pct
        hf.update(layer_norm_eps=cfg.norm_eps, rotary_pct=cfg.rotary_pct,
                  rotary_emb_base=cfg.rope_theta, use_parallel_residual=cfg.parallel_residual,
                  attention_bias=True)
    else:
        hf.update(num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim,
                  rms_norm_eps=cfg.norm_eps)
        if cfg.family == "llama":
            hf.update(attention_bias=False, mlp_bias=False)
            if not cfg.use_rope:
                hf.update(model_type="smollm3", architectures=["SmolLM3ForCausalLM"],
                          no_rope_layers=[0] * cfg.num_layers, use_sliding_window=False,
                          pad_token_id=None, bos_token_id=None, eos_token_id=None)  # not 128k
        else:
            hf.update(use_sliding_window=False)
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    hf["rope_parameters"] = rope
    return hf
