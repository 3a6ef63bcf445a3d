"""Checkpoints on disk: Hugging Face directories (config.json + safetensors) in and out, and
`load` for a preset or a local checkpoint. Only safetensors and JSON are read."""

from dynsys.io.hf import (
    checkpoint_digest,
    checkpoint_file,
    hf_state_dict,
    load,
    load_config,
    load_hf,
    save_hf,
)

__all__ = ["checkpoint_digest", "checkpoint_file", "hf_state_dict", "load", "load_config",
           "load_hf", "save_hf"]
