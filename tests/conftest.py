"""Shared fixtures: small random configs of every family, random models whose every parameter
(biases and norm scales included) is non-trivial, and the same models loaded in transformers."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers

from dynsys.config import Llama3Scaling, ModelConfig
from dynsys.io import save_hf
from dynsys.nn import Model, init_params

torch.set_grad_enabled(False)
torch.set_num_threads(1)  # tiny matrices: more threads only contend (100x slower when loaded)
transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()


def small(family: str, **changes) -> ModelConfig:
    """A 2-layer model with a ~260-token vocabulary and hidden size 64. initializer_range 0.2
    (not 0.02) spreads the logits, so greedy margins are far above float noise."""
    base = dict(family=family, vocab_size=257, hidden_size=64, intermediate_size=128,
                num_layers=2, num_heads=4, num_kv_heads=4, head_dim=16,
                max_position_embeddings=2048, initializer_range=0.2)
    return ModelConfig(**{**base, **changes})


LLAMA3 = Llama3Scaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                       original_max_position_embeddings=64)

# Every family; 1, 2 and 4 query heads per kv head; tied and untied; llama3 scaling with a short
# original context (wavelengths on both sides of and between the two thresholds); partial rotary.
CONFIGS: dict[str, ModelConfig] = {
    "llama-g1": small("llama"),
    "llama-g4-tied-llama3": small("llama", num_kv_heads=1, tie_embeddings=True,
                                  rope_scaling=LLAMA3),
    "llama-g2-narrow": small("llama", hidden_size=48, num_kv_heads=2, vocab_size=131),
    "qwen2-g2-tied": small("qwen2", num_kv_heads=2, tie_embeddings=True, norm_eps=1e-6),
    "qwen2-g1-llama3": small("qwen2", num_heads=2, num_kv_heads=2, head_dim=32,
                             rope_scaling=LLAMA3, vocab_size=300),
    "neox-rot25": small("gpt_neox", rotary_pct=0.25),
    "neox-rot50-tied-seq": small("gpt_neox", rotary_pct=0.5, tie_embeddings=True,
                                 parallel_residual=False, vocab_size=100),
}


def randomize(params: dict, seed: int, std: float) -> dict:
    """Every leaf redrawn: norm scales 1 + 0.2·N(0,1), biases 0.2·N(0,1), weights std·N(0,1)
    (zero biases and unit scales would hide layout errors)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, x in leaves:
        name = path[-1].key
        z = rng.standard_normal(x.shape).astype(np.float32)
        if name == "scale":
            z = 1 + 0.2 * z
        elif name == "bias":
            z = 0.2 * z
        else:
            z = std * z
        out.append(jax.numpy.asarray(z, x.dtype))  # x may be a ShapeDtypeStruct
    return jax.tree_util.tree_unflatten(tree, out)


def random_model(cfg: ModelConfig, seed: int = 0) -> Model:
    """A model of this config with every parameter drawn by `randomize`."""
    shapes = jax.eval_shape(lambda: init_params(cfg, seed))  # no eager init: nothing compiles
    return Model(cfg, randomize(shapes, seed, cfg.initializer_range))


def to_transformers(model: Model, directory) -> transformers.PreTrainedModel:
    """Export with dynsys.io.save_hf and load the directory with transformers (fp32, eval)."""
    save_hf(model, directory)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32, attn_implementation="eager")
    return hf.eval()


def hf_logits(hf, tokens, positions=None) -> np.ndarray:
    """transformers' logits [B, T, V] of tokens [B, T] (at explicit positions if given)."""
    kwargs = {} if positions is None else {"position_ids": torch.as_tensor(np.asarray(positions))}
    with torch.no_grad():
        return hf(torch.as_tensor(np.asarray(tokens), dtype=torch.long), **kwargs).logits.numpy()


def hf_attentions(hf, tokens, mask=None) -> list[np.ndarray]:
    """transformers' eager attention probabilities of tokens [B, T], one [B, N, T, T] per
    layer; with a real-token mask [B, T] (left padding) the positions count real tokens."""
    ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    kwargs = {}
    if mask is not None:
        mask = np.asarray(mask)
        kwargs = {"attention_mask": torch.as_tensor(mask, dtype=torch.long),
                  "position_ids": torch.as_tensor(np.maximum(np.cumsum(mask, 1) - 1, 0))}
    with torch.no_grad():
        return [a.numpy() for a in hf(ids, output_attentions=True, **kwargs).attentions]


def hf_greedy(hf, prompts, new: int, with_scores: bool = False, **kwargs):
    """transformers' greedy continuation of equal-length prompts [B, n]: tokens [B, new]
    (and, with_scores, the processed scores [B, new, V] that greedy took the argmax of)."""
    ids = torch.as_tensor(np.asarray(prompts), dtype=torch.long)
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          min_new_tokens=new, max_new_tokens=new, pad_token_id=0,
                          eos_token_id=None, output_scores=with_scores,
                          return_dict_in_generate=True, **kwargs)
    tokens = out.sequences[:, ids.shape[1]:].numpy()
    if with_scores:
        return tokens, torch.stack(out.scores, 1).numpy()
    return tokens


@pytest.fixture(scope="session")
def model_of():
    """model_of(name) → the random dynsys model of CONFIGS[name], built once per session."""
    made: dict[str, Model] = {}

    def get(name: str) -> Model:
        if name not in made:
            made[name] = random_model(CONFIGS[name], seed=list(CONFIGS).index(name) + 1)
        return made[name]

    return get


@pytest.fixture(scope="session")
def pair(model_of, tmp_path_factory):
    """pair(name) → (model_of(name), the same weights in transformers), built once per session."""
    made: dict[str, tuple[Model, transformers.PreTrainedModel]] = {}

    def get(name: str):
        if name not in made:
            model = model_of(name)
            made[name] = model, to_transformers(model, tmp_path_factory.mktemp(name))
        return made[name]

    return get
