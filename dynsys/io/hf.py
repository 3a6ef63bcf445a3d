"""Hugging Face checkpoints (config.json + safetensors, sharded or not) in and out, and `load`.

Only local directories; only safetensors and JSON are read (never pickle).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file
from tokenizers import Tokenizer

from dynsys.config import PRESETS, ModelConfig, from_hf_config, preset, to_hf_config
from dynsys.nn import Model, init_params, param_axes
from dynsys.nn.params import get, param_path, part, put
from dynsys.sharding import place

_INDEX = "model.safetensors.index.json"
# Buffers some checkpoints carry that are not parameters (recomputed from the config).
_BUFFERS = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One HF tensor ↔ one dynsys parameter, the same numbers in another shape. `outputs`:
    how many leading axes of our kernel [out…, in…] are the linear map's outputs (HF's weight
    is [out, in]); 0 for biases (flattened by HF), norms and embeddings."""

    hf: str
    ours: tuple[str, ...]
    outputs: int = 0

    def hf_shape(self, ours: tuple[int, ...]) -> tuple[int, ...]:
        if self.outputs:
            return (math.prod(ours[:self.outputs]), math.prod(ours[self.outputs:]))
        return ours if self.ours[-1] == "embedding" else (math.prod(ours),)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x.reshape(self.hf_shape(x.shape)))

    def from_hf(self, x: np.ndarray, ours: tuple[int, ...]) -> np.ndarray:
        if x.shape != self.hf_shape(ours):
            raise ValueError(f"tensor {self.hf} has shape {tuple(x.shape)}; the config implies "
                             f"{self.hf_shape(ours)}")
        return x.reshape(ours)


def _layout(cfg: ModelConfig) -> Iterator[_Tensor]:
    """The HF ↔ dynsys correspondence, GPT-NeoX's fused QKV excepted (see _fused_qkv)."""
    neox = cfg.family == "gpt_neox"
    root = "gpt_neox" if neox else "model"
    yield _Tensor(f"{root}.embed_in.weight" if neox else "model.embed_tokens.weight",
                  ("embed", "embedding"))
    norm_names = ("weight", "bias") if neox else ("weight",)
    ours_norm = {"weight": "scale", "bias": "bias"}
    for i in range(cfg.num_layers):
        hf_layer = f"{root}.layers.{i}"
        for hf_norm, norm in (("input_layernorm", "norm1"), ("post_attention_layernorm", "norm2")):
            for p in norm_names:
                yield _Tensor(f"{hf_layer}.{hf_norm}.{p}", param_path(i, norm, ours_norm[p]))
        if neox:
            attn, mlp = f"{hf_layer}.attention", f"{hf_layer}.mlp"
            yield _Tensor(f"{attn}.dense.weight", param_path(i, "attn", "o", "kernel"), 1)
            yield _Tensor(f"{attn}.dense.bias", param_path(i, "attn", "o", "bias"))
            for hf, name in (("dense_h_to_4h", "up"), ("dense_4h_to_h", "down")):
                yield _Tensor(f"{mlp}.{hf}.weight", param_path(i, "mlp", name, "kernel"), 1)
                yield _Tensor(f"{mlp}.{hf}.bias", param_path(i, "mlp", name, "bias"))
        else:
            attn = f"{hf_layer}.self_attn"
            for name in "qkv":
                yield _Tensor(f"{attn}.{name}_proj.weight",
                              param_path(i, "attn", name, "kernel"), 2)
                if cfg.qkv_bias:
                    yield _Tensor(f"{attn}.{name}_proj.bias", param_path(i, "attn", name, "bias"))
            yield _Tensor(f"{attn}.o_proj.weight", param_path(i, "attn", "o", "kernel"), 1)
            for name in ("gate", "up", "down"):
                yield _Tensor(f"{hf_layer}.mlp.{name}_proj.weight",
                              param_path(i, "mlp", name, "kernel"), 1)
    for p in norm_names:
        hf_final = f"{root}.final_layer_norm" if neox else "model.norm"
        yield _Tensor(f"{hf_final}.{p}", ("final_norm", ours_norm[p]))
    if not cfg.tie_embeddings:
        yield _Tensor("embed_out.weight" if neox else "lm_head.weight", ("lm_head", "kernel"), 1)


def _fused_qkv_names(i: int) -> tuple[str, str]:
    base = f"gpt_neox.layers.{i}.attention.query_key_value"
    return f"{base}.weight", f"{base}.bias"


def hf_state_dict(model: Model) -> dict[str, np.ndarray]:
    """The Hugging Face state dict (numpy, HF names, weights [out, in]) of a dynsys model."""
    cfg = model.config
    params = jax.tree_util.tree_map(np.asarray, model.params)
    state = {t.hf: t.to_hf(get(params, t.ours)) for t in _layout(cfg)}
    if cfg.family == "gpt_neox":  # output axis laid out as (heads, 3, head_dim)
        for i in range(cfg.num_layers):
            attn = part(params, i, "attn")
            kernel = np.stack([attn[n]["kernel"] for n in "qkv"], axis=1)  # [N, 3, H, D]
            bias = np.stack([attn[n]["bias"] for n in "qkv"], axis=1)  # [N, 3, H]
            w, b = _fused_qkv_names(i)
            state[w] = np.ascontiguousarray(kernel.reshape(-1, cfg.hidden_size))
            state[b] = bias.reshape(-1)
    return state


def _check_target(directory: Path, cfg: ModelConfig) -> None:
    """A checkpoint may replace `directory` only if it is absent, empty, or a Hugging Face
    checkpoint (config.json and safetensors) of the same model_type."""
    if not directory.exists() or (directory.is_dir() and not any(directory.iterdir())):
        return
    try:
        old_type = json.loads(checkpoint_file(directory, "config.json").read_text()).get(
            "model_type")
    except (OSError, ValueError, AttributeError):
        old_type = None
    weights = (directory / "model.safetensors").exists() or (directory / _INDEX).exists()
    if old_type != to_hf_config(cfg)["model_type"] or not weights:
        raise ValueError(f"{directory} is not empty and is not a {cfg.family} checkpoint "
                         f"(config.json model_type {old_type!r}); refusing to overwrite it")


def save_hf(model: Model, directory: str | Path, max_shard_bytes: int = 2 << 30) -> Path:
    """Write config.json and model.safetensors (or shards plus model.safetensors.index.json),
    and tokenizer.json when the model carries a tokenizer.

    The checkpoint is written to a temporary directory beside `directory` and renamed into
    place, replacing an earlier checkpoint there as a whole (no stale shards or index); a
    non-empty `directory` that is not a checkpoint of the same family is refused.
    """
    directory = Path(directory)
    _check_target(directory, model.config)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_checkpoint(model, tmp, max_shard_bytes)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return directory


def _write_checkpoint(model: Model, directory: Path, max_shard_bytes: int) -> None:
    (directory / "config.json").write_text(json.dumps(to_hf_config(model.config), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save(str(directory / "tokenizer.json"))
    state = hf_state_dict(model)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, x in state.items():
        if shards[-1] and size + x.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = x
        size += x.nbytes
    if len(shards) == 1:
        save_file(shards[0], directory / "model.safetensors", metadata={"format": "pt"})
        return
    weight_map = {}
    for j, shard in enumerate(shards):
        fname = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / fname, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    index = {"metadata": {"total_size": sum(x.nbytes for x in state.values())},
             "weight_map": weight_map}
    (directory / _INDEX).write_text(json.dumps(index, indent=2))


def checkpoint_file(directory: str | Path, name: str) -> Path | None:
    """directory / name, or None where there is no such entry; refused (ValueError naming it)
    where it resolves outside `directory` (a symbolic link or a name with "..": its target's
    bytes would be read or copied as the checkpoint's) or is not a regular file (a named pipe
    would block open(), a device or a directory would not read as the file). The one policy
    for every file a checkpoint is read or copied from."""
    directory = Path(directory)
    path = directory / name
    target = path.resolve()
    if not target.is_relative_to(directory.resolve()):
        raise ValueError(f"{path} resolves to {target}, outside the checkpoint {directory}; "
                         "refusing to read it")
    if not os.path.lexists(path):
        return None
    try:
        mode = os.stat(target).st_mode
    except OSError as e:
        raise ValueError(f"{path} cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file (a named pipe, device or directory); "
                         "refusing to read it")
    return path


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: model.safetensors, or the files named by the
    index's weight_map (each inside `directory`); both at once is ambiguous and refused, and
    each passes `checkpoint_file`."""
    index = checkpoint_file(directory, _INDEX)
    single = checkpoint_file(directory, "model.safetensors")
    if index and single:
        raise ValueError(f"{directory} holds both model.safetensors and {_INDEX}; it is "
                         "ambiguous which weights are meant (remove the stale one)")
    if single:
        return [single]
    if not index:
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor {_INDEX} "
                                "(only safetensors are read)")
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index} is not a safetensors index with a weight_map: {e}") from None
    files = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"{index} points at {name!r}, not a file name")
        path = checkpoint_file(directory, name)
        if path is None:
            raise ValueError(f"{index} points at {name!r}, which {directory} does not hold")
        files.append(path)
    return files


def _read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of the checkpoint, buffers excepted, checked to be floating point (an
    int8 / int32 / bool tensor is quantized or not a weight: cast to float it would load as
    plausible garbage) and finite (a NaN or infinite weight gives NaN logits, whose argmax
    would look like a loop on token 0); bfloat16 and float8 count as floating point."""
    tensors = {}
    for path in _weight_files(directory):
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is no dict)
                    tensors[name] = f.get_tensor(name)
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    for name in [n for n in tensors if n.endswith(_BUFFERS)]:
        del tensors[name]
    for name, x in tensors.items():
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ValueError(f"tensor {name} in {directory} has dtype {x.dtype}, not floating "
                             "point (a quantized checkpoint is not read)")
        bad = ~np.isfinite(x)
        if bad.any():
            raise ValueError(f"tensor {name} in {directory} holds {int(bad.sum())} "
                             f"non-finite value(s), e.g. {x[bad][0]}")
    return tensors


def _header_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """{name: shape} of the checkpoint's tensors, buffers excepted, from the safetensors
    headers alone (no tensor is read)."""
    shapes = {}
    for path in _weight_files(directory):
        try:
            with safe_open(path, framework="numpy") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is no dict)
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        except (OSError, SafetensorError) as e:
            raise ValueError(f"{path} is not a readable safetensors file: {e}") from None
    return {name: shape for name, shape in shapes.items() if not name.endswith(_BUFFERS)}


def _tied_copy(cfg: ModelConfig) -> str:
    """The output projection's name, which a tied checkpoint may store as a copy."""
    return "embed_out.weight" if cfg.family == "gpt_neox" else "lm_head.weight"


def _parameter_count(cfg: ModelConfig) -> int:
    """The parameters of cfg's model, base + L · (per layer), from the abstract shapes of its
    1- and 2-layer versions: nothing is allocated, and the cost depends on neither the layer
    count L nor the widths."""
    one, two = (sum(x.size for x in jax.tree_util.tree_leaves(jax.eval_shape(
        lambda k=k: init_params(cfg.replace(num_layers=k), 0)))) for k in (1, 2))
    return one + (cfg.num_layers - 1) * (two - one)


def check_tensors(directory: str | Path, cfg: ModelConfig) -> None:
    """A ValueError naming the first mismatch unless the checkpoint's tensors are the ones
    `cfg` needs, in its shapes: read from the safetensors headers alone (no tensor is read),
    cheapest check first. A config with more layers than the tensor names hold, or with more
    parameters than the weight files could hold at 1 byte each, is refused before any layer's
    tensors are listed or shaped (num_hidden_layers 10**6 took minutes and gigabytes to
    fail); then missing or unexpected names; then each tensor's shape. What `load_hf` checks
    before it reads the weights, and `checkpoint_digest` before it reads them to hash."""
    directory = Path(directory)
    shapes = _header_shapes(directory)
    if cfg.tie_embeddings:  # some exports store the tied copy
        shapes.pop(_tied_copy(cfg), None)
    held = max((int(m.group(1)) + 1 for name in shapes
                if (m := re.search(r"\.layers\.(\d+)\.", name))), default=0)
    if cfg.num_layers > held:  # before listing (or shaping) every layer's tensors: cheap
        raise ValueError(f"{directory / 'config.json'} has {cfg.num_layers} layers; the "
                         f"checkpoint's tensors hold {held}")
    stored = sum(path.stat().st_size for path in _weight_files(directory))
    if (count := _parameter_count(cfg)) > stored:
        raise ValueError(f"{directory / 'config.json'} implies {count:,} parameters; the "
                         f"checkpoint's weight files hold {stored:,} bytes, too few for them "
                         "at 1 byte each")
    layout = list(_layout(cfg))
    expected = jax.eval_shape(lambda: init_params(cfg, 0))
    wanted = {t.hf: t.hf_shape(get(expected, t.ours).shape)
              for t in layout}
    if cfg.family == "gpt_neox":
        N, H, D = cfg.num_heads, cfg.head_dim, cfg.hidden_size
        for i in range(cfg.num_layers):
            w_name, b_name = _fused_qkv_names(i)
            wanted |= {w_name: (3 * N * H, D), b_name: (3 * N * H,)}
    missing, extra = sorted(set(wanted) - set(shapes)), sorted(set(shapes) - set(wanted))
    if missing or extra:
        raise ValueError(f"checkpoint {directory} does not match its config: missing tensors "
                         f"{missing[:8]}{'...' if len(missing) > 8 else ''}, unexpected tensors "
                         f"{extra[:8]}{'...' if len(extra) > 8 else ''}")
    wrong = [name for name in wanted if shapes[name] != wanted[name]]
    if wrong:
        raise ValueError(f"tensor {wrong[0]} has shape {shapes[wrong[0]]}; the config implies "
                         f"{wanted[wrong[0]]}"
                         + (f" ({len(wrong) - 1} more tensors mis-shaped)" if wrong[1:] else ""))


def load_hf(directory: str | Path, dtype: str | None = None, mesh: Mesh | None = None
            ) -> Model:
    """A dynsys model from a local Hugging Face checkpoint directory; with `mesh`
    (dynsys.sharding.make_mesh) each parameter goes straight from the file onto the mesh, split
    over its "model" axis (dynsys.sharding.place).

    Missing, unexpected or mis-shaped tensors raise ValueError naming them, from the
    headers before any weight is read (`check_tensors`).
    """
    directory = Path(directory)
    cfg = load_config(directory, dtype)
    check_tensors(directory, cfg)
    tensors = _read_tensors(directory)
    if cfg.tie_embeddings:  # some exports store the tied copy
        tensors.pop(_tied_copy(cfg), None)
    layout = list(_layout(cfg))
    expected = jax.eval_shape(lambda: init_params(cfg, 0))
    params: dict = {}

    def place_value(keys: tuple[str, ...], value: np.ndarray) -> None:
        put(params, keys, np.asarray(value, jnp.dtype(cfg.dtype)))

    for t in layout:
        place_value(t.ours, t.from_hf(tensors[t.hf], get(expected, t.ours).shape))
    if cfg.family == "gpt_neox":
        N, H, D = cfg.num_heads, cfg.head_dim, cfg.hidden_size
        for i in range(cfg.num_layers):
            w_name, b_name = _fused_qkv_names(i)
            w, b = tensors[w_name], tensors[b_name]
            if w.shape != (3 * N * H, D) or b.shape != (3 * N * H,):
                raise ValueError(f"tensors {w_name} {tuple(w.shape)} / {b_name} "
                                 f"{tuple(b.shape)}; the config implies {(3 * N * H, D)} / "
                                 f"{(3 * N * H,)}")
            w = w.reshape(N, 3, H, D)
            b = b.reshape(N, 3, H)
            for j, name in enumerate("qkv"):
                place_value(param_path(i, "attn", name, "kernel"), w[:, j])
                place_value(param_path(i, "attn", name, "bias"), b[:, j])
    params = jax.device_put(params) if mesh is None else place(params, param_axes(cfg), mesh)
    return Model(cfg, params, _tokenizer(directory, cfg))


def _tokenizer(directory: Path, cfg: ModelConfig) -> Tokenizer | None:
    """The checkpoint's tokenizer.json, if it has one; a ValueError if it does not read or
    holds ids the model has no embedding for."""
    path = checkpoint_file(directory, "tokenizer.json")
    if path is None:
        return None
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise ValueError(f"{path} is not a readable tokenizer: {e}") from None
    if tokenizer.get_vocab_size() > cfg.vocab_size:
        raise ValueError(f"{path} has {tokenizer.get_vocab_size()} tokens; the model's "
                         f"vocab_size is {cfg.vocab_size}")
    return tokenizer


def checkpoint_digest(name_or_path: str | Path) -> str:
    """What identifies a model's weights on disk: for a local checkpoint directory, the
    SHA-256 of config.json, the safetensors index (if any) and every safetensors file it uses,
    read in full, after checking from the headers that the tensors are the ones its config
    needs, in its shapes (`check_tensors`: ValueError naming the file or tensor); for a
    preset, "preset:NAME" (its random weights follow from the name and seed)."""
    if str(name_or_path) in PRESETS:
        return f"preset:{name_or_path}"
    directory = Path(name_or_path)
    check_tensors(directory, load_config(directory))
    weights = _weight_files(directory)
    index = [directory / _INDEX] if (directory / _INDEX).exists() else []
    h = hashlib.sha256()
    for path in [_config_file(directory), *index, *weights]:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 24):
                h.update(block)
    return h.hexdigest()


def _config_file(directory: Path) -> Path:
    """The checkpoint's config.json (FileNotFoundError if absent; see `checkpoint_file`)."""
    path = checkpoint_file(directory, "config.json")
    if path is None:
        raise FileNotFoundError(f"{directory / 'config.json'} does not exist")
    return path


def load_config(name_or_path: str | Path, dtype: str | None = None) -> ModelConfig:
    """The config of a preset or of a local HF checkpoint directory, without its weights."""
    if str(name_or_path) in PRESETS:
        cfg = preset(str(name_or_path))
    elif Path(name_or_path).is_dir():
        path = _config_file(Path(name_or_path))
        try:
            fields = json.loads(path.read_bytes().decode("utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path} is not UTF-8 JSON ({e})") from None
        if not isinstance(fields, dict):
            raise ValueError(f"{path} holds {json.dumps(fields)[:40]}, not an object of config "
                             "fields")
        cfg = from_hf_config(fields)
    else:
        raise ValueError(f"{str(name_or_path)!r} is neither a preset ({sorted(PRESETS)}) nor a "
                         "local checkpoint directory")
    return cfg if dtype is None else cfg.replace(dtype=dtype)


def load(name_or_path: str | Path, seed: int = 0, dtype: str | None = None,
         mesh: Mesh | None = None) -> Model:
    """A preset with random Hugging Face-style initialisation (seeded), or a local HF
    checkpoint directory; with `mesh` (dynsys.sharding.make_mesh) the parameters are placed on
    it, split over its "model" axis (dynsys.sharding.place), and every entry point taking the
    model runs on the mesh."""
    if str(name_or_path) not in PRESETS:
        return load_hf(name_or_path, dtype, mesh)
    model = _random_model(str(name_or_path), seed, dtype).copy()
    if mesh is None:
        return model
    return dataclasses.replace(model, params=place(model.params, param_axes(model.config), mesh))


@functools.lru_cache(maxsize=1)
def _random_model(name: str, seed: int, dtype: str | None) -> Model:
    # Kept: initialisation takes seconds, and a session (dynsys verify) asks for the same
    # model again and again. `load` hands out copies of the parameter tree.
    cfg = load_config(name, dtype)
    return Model(cfg, compiled_init(cfg, seed))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _unit_init(cfg: ModelConfig, seed: int) -> dict:
    return init_params(cfg.replace(initializer_range=1.0), seed)


def compiled_init(cfg: ModelConfig, seed: int = 0) -> dict:
    """init_params(cfg, seed) bit for bit, drawn by one compiled program instead of op by op
    (the eager init compiles each of its ~130 ops in turn: seconds per fresh process).

    Every weight drawn is w = z·σ (z ~ normal(0, 1), σ = initializer_range). Compiled whole,
    XLA folds σ into the normal's own constants and w moves by an ulp; so z is drawn compiled
    (σ = 1, a product XLA drops exactly) and multiplied by σ apart, as the eager init does."""
    sigma = cfg.initializer_range
    return jax.tree_util.tree_map_with_path(
        lambda path, z: z * sigma if path[-1].key in ("kernel", "embedding") else z,
        _unit_init(cfg, seed))
