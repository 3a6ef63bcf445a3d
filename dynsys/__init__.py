"""dynsys: greedy decoding of decoder-only transformers as a dynamical system on token ids."""

from dynsys import prompts
from dynsys.cache import Prefix, RowCache, empty_rows
from dynsys.config import PRESETS, Llama3Scaling, ModelConfig, from_hf_config, preset, to_hf_config
from dynsys.decode import forward, generate, prefill, step
from dynsys.model import Model, init_params
from dynsys.sampling import GREEDY, Sampler
from dynsys.weights import load, load_hf, save_hf

__all__ = [
    "GREEDY", "PRESETS", "Llama3Scaling", "Model", "ModelConfig", "Prefix", "RowCache", "Sampler",
    "empty_rows", "forward", "from_hf_config", "generate", "init_params", "load", "load_hf",
    "prefill", "preset", "prompts", "save_hf", "step", "to_hf_config",
]
