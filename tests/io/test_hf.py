import contextlib
import hashlib
import json
import os
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from conftest import CONFIGS, hf_logits
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer
from tokenizers.models import WordLevel

from dynsys.config import to_hf_config
from dynsys.decode import forward
from dynsys.io import checkpoint_digest, hf, load, load_config, load_hf, save_hf
from dynsys.nn import init_params


def assert_same_params(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", CONFIGS)
def test_export_import_round_trip_is_exact(name, model_of, tmp_path):
    model = model_of(name)
    back = load_hf(save_hf(model, tmp_path))
    assert back.config == model.config
    assert_same_params(back.params, model.params)


def test_sharded_export_writes_index_and_round_trips(model_of, tmp_path):
    model = model_of("neox-rot25")
    save_hf(model, tmp_path, max_shard_bytes=40_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    for shard in shards:  # within the limit, unless a single tensor exceeds it alone
        sizes = [x.nbytes for x in load_file(shard).values()]
        assert sum(sizes) <= 40_000 or len(sizes) == 1
    assert_same_params(load_hf(tmp_path).params, model.params)
    assert_same_params(load(tmp_path).params, model.params)


def transformers_model(cfg, seed):
    """A model built and initialised by transformers itself, every parameter redrawn."""
    torch.manual_seed(seed)
    hf = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model(**to_hf_config(cfg)), attn_implementation="eager")
    for name, p in hf.named_parameters():
        z = torch.randn_like(p)
        if "norm" in name and name.endswith("weight"):
            p.copy_(1 + 0.2 * z)
        elif name.endswith("bias"):
            p.copy_(0.2 * z)
        else:
            p.copy_(cfg.initializer_range * z)
    return hf.eval()


@pytest.mark.parametrize("name", ["llama-g4-tied-llama3", "llama-g2-narrow", "qwen2-g2-tied",
                                  "qwen2-g1-llama3", "neox-rot25", "neox-rot50-tied-seq"])
def test_checkpoint_saved_by_transformers_imports(name, tmp_path):
    hf = transformers_model(CONFIGS[name], seed=1)
    hf.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert model.config == CONFIGS[name]
    tokens = np.random.default_rng(0).integers(0, model.config.vocab_size, (2, 33))
    np.testing.assert_allclose(np.asarray(forward(model, tokens)), hf_logits(hf, tokens),
                               atol=1e-4, rtol=0)


def _rewrite(directory, change):
    tensors = load_file(directory / "model.safetensors")
    change(tensors)
    save_file(tensors, directory / "model.safetensors", metadata={"format": "pt"})


BROKEN = {
    "missing": ("llama-g1", "model.layers.1.mlp.up_proj.weight",
                lambda t, k: t.pop(k)),
    "missing qkv": ("neox-rot25", "gpt_neox.layers.0.attention.query_key_value.bias",
                    lambda t, k: t.pop(k)),
    "extra": ("qwen2-g2-tied", "model.layers.0.self_attn.extra_proj.weight",
              lambda t, k: t.__setitem__(k, np.zeros((2, 2), np.float32))),
    "mis-shaped": ("llama-g1", "model.layers.0.self_attn.k_proj.weight",
                   lambda t, k: t.__setitem__(k, t[k][:-1])),
    "mis-shaped bias": ("qwen2-g2-tied", "model.layers.1.self_attn.v_proj.bias",
                        lambda t, k: t.__setitem__(k, t[k][:-2])),
    "mis-shaped qkv": ("neox-rot25", "gpt_neox.layers.1.attention.query_key_value.weight",
                       lambda t, k: t.__setitem__(k, t[k][:, :-1])),
    "mis-shaped embedding": ("neox-rot25", "gpt_neox.embed_in.weight",
                             lambda t, k: t.__setitem__(k, t[k][:-1])),
}


@pytest.mark.parametrize("case", BROKEN)
def test_broken_checkpoint_raises_naming_the_tensor(case, model_of, tmp_path):
    name, tensor, change = BROKEN[case]
    save_hf(model_of(name), tmp_path)
    _rewrite(tmp_path, lambda t: change(t, tensor))
    with pytest.raises(ValueError, match=tensor.replace(".", r"\.")):
        load_hf(tmp_path)


IGNORABLE = {  # a stored copy of the tied embedding, and buffers some checkpoints carry
    "qwen2-g2-tied": ("lm_head.weight", "model.embed_tokens.weight",
                      ["model.layers.0.self_attn.rotary_emb.inv_freq"]),
    "neox-rot50-tied-seq": ("embed_out.weight", "gpt_neox.embed_in.weight",
                            ["gpt_neox.layers.0.attention.rotary_emb.inv_freq",
                             "gpt_neox.layers.1.attention.bias",
                             "gpt_neox.layers.1.attention.masked_bias"]),
}


@pytest.mark.parametrize("name", IGNORABLE)
def test_tied_copy_and_buffers_are_ignored(name, model_of, tmp_path):
    model = model_of(name)
    save_hf(model, tmp_path)
    head, embedding, buffers = IGNORABLE[name]

    def add(t):
        t[head] = t[embedding].copy()
        t.update(dict.fromkeys(buffers, np.ones(4, np.float32)))

    _rewrite(tmp_path, add)
    assert_same_params(load_hf(tmp_path).params, model.params)


def test_missing_files_raise_file_not_found(model_of, tmp_path):
    save_hf(model_of("llama-g1"), tmp_path)
    (tmp_path / "config.json").rename(tmp_path / "elsewhere.json")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf(tmp_path)
    (tmp_path / "elsewhere.json").rename(tmp_path / "config.json")
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")  # never unpickled
    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_hf(tmp_path)



def test_save_replaces_a_sharded_checkpoint_whole(model_of, tmp_path):
    old, new = model_of("llama-g1"), model_of("llama-g1").copy()
    new.params["final_norm"]["scale"] = new.params["final_norm"]["scale"] * 2
    save_hf(old, tmp_path, max_shard_bytes=1 << 14)
    assert (tmp_path / "model.safetensors.index.json").exists()
    save_hf(new, tmp_path)  # one file now: the old index and shards must not survive
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert_same_params(load_hf(tmp_path).params, new.params)
    assert not list(tmp_path.parent.glob(f".{tmp_path.name}.*"))  # no temporary left behind


def test_save_refuses_a_foreign_directory(model_of, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_hf(model_of("llama-g1"), tmp_path)
    other = tmp_path.parent / "neox"
    save_hf(model_of("neox-rot25"), other)
    with pytest.raises(ValueError, match="not a llama checkpoint"):
        save_hf(model_of("llama-g1"), other)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert load_hf(other).config.family == "gpt_neox"


def test_index_beside_single_file_or_pointing_outside_is_refused(model_of, tmp_path):
    model = model_of("llama-g1")
    save_hf(model, tmp_path / "a", max_shard_bytes=1 << 14)
    save_hf(model, tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").rename(tmp_path / "a" / "model.safetensors")
    with pytest.raises(ValueError, match="both model.safetensors and"):
        load_hf(tmp_path / "a")
    (tmp_path / "a" / "model.safetensors").unlink()
    index = tmp_path / "a" / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../b/stolen.safetensors"
    index.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="outside"):
        load_hf(tmp_path / "a")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_tensor_is_refused_at_load(value, model_of, tmp_path):
    save_hf(model_of("llama-g1"), tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(t):
        t[name] = t[name].copy()
        t[name][3, 5] = value

    _rewrite(tmp_path, poison)
    with pytest.raises(ValueError, match=re.escape(name) + ".*non-finite"):
        load_hf(tmp_path)


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.bool_])
def test_non_floating_tensor_is_refused_naming_it(dtype, model_of, tmp_path):
    """A quantized or integer tensor cast to float32 would load as plausible garbage."""
    save_hf(model_of("llama-g1"), tmp_path)
    name = "model.layers.0.mlp.up_proj.weight"
    _rewrite(tmp_path, lambda t: t.__setitem__(name, (t[name] * 100).astype(dtype)))
    with pytest.raises(ValueError, match=re.escape(name) + f" .*dtype {np.dtype(dtype)}, not "
                       "floating"):
        load_hf(tmp_path)


def test_non_finite_bfloat16_tensor_is_refused(model_of, tmp_path):
    """bfloat16 is not a numpy floating type: its finiteness was not checked."""
    save_hf(model_of("llama-g1"), tmp_path)
    name = "model.norm.weight"

    def poison(t):
        t[name] = t[name].astype(jnp.bfloat16)
        t[name][0] = np.nan

    _rewrite(tmp_path, poison)
    with pytest.raises(ValueError, match=re.escape(name) + ".*non-finite"):
        load_hf(tmp_path)


def _checkpoint_with_tokenizer(model, directory, shards: bool):
    save_hf(model, directory, max_shard_bytes=1 << 14 if shards else 2 << 30)
    Tokenizer(WordLevel({"a": 0, "b": 1}, unk_token="a")).save(str(directory / "tokenizer.json"))
    return directory


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json",
                                  "model.safetensors.index.json", "model-00001-of-"])
def test_a_link_resolving_outside_the_checkpoint_is_refused(name, model_of, tmp_path):
    """One policy for every file kind: its bytes are never read through a link that leaves
    the checkpoint (symlinked shards were refused, config.json and the weights followed)."""
    directory = _checkpoint_with_tokenizer(model_of("llama-g1"), tmp_path / "c",
                                           shards="index" in name or "-of-" in name)
    (path,) = [p for p in directory.iterdir() if p.name.startswith(name)]
    outside = tmp_path / "elsewhere" / path.name
    outside.parent.mkdir()
    path.rename(outside)
    path.symlink_to(outside)
    for call in (load_hf, checkpoint_digest):
        if name == "tokenizer.json" and call is checkpoint_digest:
            continue
        with pytest.raises(ValueError, match=re.escape(f"{path} resolves to {outside}, outside")):
            call(directory)
    path.unlink()  # a link within the checkpoint is followed
    (directory / "real").mkdir()
    outside.rename(directory / "real" / path.name)
    path.symlink_to(directory / "real" / path.name)
    load_hf(directory)


def finished_within(call, seconds: float):
    """call() in a thread: the exception it raised, or None if it was still running after
    `seconds` (a blocked open() cannot be interrupted otherwise)."""
    raised = []

    def target():
        try:
            call()
        except Exception as e:
            raised.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return raised[0] if raised else None


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_named_pipe_in_a_checkpoint_is_refused_without_blocking(name, model_of, tmp_path):
    directory = _checkpoint_with_tokenizer(model_of("llama-g1"), tmp_path, shards=False)
    (directory / name).unlink()
    os.mkfifo(directory / name)
    try:
        error = finished_within(lambda: load_hf(directory), 30)
        assert isinstance(error, ValueError), error
        assert f"{directory / name} is not a regular file" in str(error)
    finally:  # release a reader blocked in open(), if any
        with contextlib.suppress(OSError):
            os.close(os.open(directory / name, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("content", [b"[]", b"null", b'"llama"', b"", b"\xff\xfe{}"],
                         ids=["list", "null", "string", "empty", "not-utf8"])
def test_a_config_json_that_is_not_an_object_is_refused_naming_it(content, model_of, tmp_path):
    save_hf(model_of("llama-g1"), tmp_path)
    (tmp_path / "config.json").write_bytes(content)
    for call in (load_config, load_hf):
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "config.json"))):
            call(tmp_path)


def test_more_layers_than_the_tensors_hold_is_refused_at_once(model_of, tmp_path):
    """num_hidden_layers 10**6 in config.json: refused before every layer's tensors are listed
    or shaped (10000 layers took 253 s to fail, 10**6 grew past 4.8 GB)."""
    save_hf(model_of("llama-g1"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 10**6}))
    with pytest.raises(ValueError, match="has 1000000 layers; the checkpoint's tensors hold 2"):
        load_hf(tmp_path)


def test_corrupt_safetensors_is_a_value_error_naming_the_file(model_of, tmp_path):
    save_hf(model_of("llama-g1"), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="model.safetensors is not a readable"):
        load_hf(tmp_path)


def test_loaded_presets_do_not_share_a_mutable_tree():
    first = load("tiny")
    kept = first.params["embed"]["embedding"]
    first.params["embed"]["embedding"] = first.params["embed"]["embedding"] * 0
    del first.params["final_norm"]
    second = load("tiny")
    assert "final_norm" in second.params
    assert second.params["embed"]["embedding"] is kept


def test_digest_covers_every_parameter(model_of):
    model = model_of("llama-g1")
    edited = model.copy()
    assert edited.digest == model.digest
    head = edited.params["lm_head"]["kernel"]
    edited.params["lm_head"]["kernel"] = head.at[-1, -1].add(1e-3)  # the last leaf, last entry
    assert edited.digest != model.digest
    assert model.with_rope(False).digest != model.digest
    assert model.with_rope(False).params_digest == model.params_digest


def test_checkpoint_carries_its_tokenizer(model_of, tmp_path):
    """save_hf writes the model's tokenizer.json and load_hf picks it up (kept by copy and
    with_rope); a tokenizer with ids beyond the model's vocabulary is refused at load."""
    from dynsys.data import english, train_tokenizer
    from dynsys.nn import Model

    tokenizer = train_tokenizer(english().documents[:20], 257)
    base = model_of("llama-g1")
    back = load_hf(save_hf(Model(base.config, base.params, tokenizer), tmp_path / "a"))
    text = "The with statement wraps a block."
    assert back.tokenizer.encode(text).ids == tokenizer.encode(text).ids
    assert back.copy().tokenizer is back.tokenizer is back.with_rope(False).tokenizer
    assert load_hf(save_hf(base, tmp_path / "b")).tokenizer is None
    narrow = model_of("llama-g2-narrow")  # vocab_size 131
    (save_hf(narrow, tmp_path / "c") / "tokenizer.json").write_text(
        (tmp_path / "a" / "tokenizer.json").read_text())
    with pytest.raises(ValueError, match="has 257 tokens; the model's vocab_size is 131"):
        load_hf(tmp_path / "c")
    (tmp_path / "c" / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not a readable tokenizer"):
        load_hf(tmp_path / "c")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_parameter_count_from_the_config_matches_the_model(name, model_of):
    model = model_of(name)
    assert hf._parameter_count(model.config) == model.num_params
    more = model.config.replace(num_layers=10**6)  # counted without building 10**6 layers
    assert hf._parameter_count(more) > 10**6 * (model.num_params // (model.config.num_layers
                                                                       + 2))


def _edited_config(directory, **changes) -> None:
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **changes}))


def test_more_parameters_than_the_files_hold_is_refused_before_reading(model_of, tmp_path,
                                                                      monkeypatch):
    """intermediate_size 2**30: 10**11 parameters for a checkpoint of kilobytes, refused from
    the config and the files' sizes before a tensor is read or a shape compared."""
    save_hf(model_of("llama-g1"), tmp_path)
    _edited_config(tmp_path, intermediate_size=2**30)
    monkeypatch.setattr(hf, "_read_tensors", lambda *a: pytest.fail("tensors read"))
    size = (tmp_path / "model.safetensors").stat().st_size
    for call in (load_hf, checkpoint_digest):
        with pytest.raises(ValueError, match=rf"config.json implies [\d,]+ parameters; the "
                                             rf"checkpoint's weight files hold {size:,} bytes"):
            call(tmp_path)


def test_mis_shaped_tensors_are_refused_from_the_headers(model_of, tmp_path, monkeypatch):
    """The shapes come from the safetensors headers: nothing is read (checkpoint_digest, which
    `dynsys run` calls before it makes the run directory, refuses them too)."""
    model = model_of("llama-g1")
    save_hf(model, tmp_path)
    F, D = model.config.intermediate_size, model.config.hidden_size
    _edited_config(tmp_path, intermediate_size=F // 2)
    monkeypatch.setattr(hf, "_read_tensors", lambda *a: pytest.fail("tensors read"))
    for call in (load_hf, checkpoint_digest):
        with pytest.raises(ValueError, match=re.escape(
                f"tensor model.layers.0.mlp.gate_proj.weight has shape {(F, D)}; the config "
                f"implies {(F // 2, D)} ({3 * model.config.num_layers - 1} more tensors")):
            call(tmp_path)


def params_sha256(params: dict) -> str:
    digest = hashlib.sha256()
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        x = np.asarray(x)
        digest.update(f"{jax.tree_util.keystr(path)} {x.dtype} {x.shape}".encode())
        digest.update(x.tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("cfg", [load_config("tiny"), load_config("pythia-70m"),
                                 CONFIGS["qwen2-g2-tied"], CONFIGS["neox-rot25"],
                                 CONFIGS["llama-g1"].replace(param_dtype="bfloat16")],
                         ids=["tiny", "pythia-70m", "qwen2-g2-tied", "neox-rot25", "llama-bf16"])
def test_compiled_init_draws_the_eager_weights_bit_for_bit(cfg):
    """load's one-program init against init_params op by op (XLA folds σ into the normal's
    constants when both are in one program: an ulp off in a quarter of the weights)."""
    assert params_sha256(hf.compiled_init(cfg, 5)) == params_sha256(init_params(cfg, 5))
