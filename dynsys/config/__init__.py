"""Model configuration: ModelConfig (model), the presets, Hugging Face conversion (hf)."""

from __future__ import annotations

from dynsys.checks import check_bool, check_float, check_int  # re-exported: many callers
from dynsys.config.hf import from_hf_config, to_hf_config
from dynsys.config.model import DTYPES, FAMILIES, Llama3Scaling, ModelConfig, set_frozen
from dynsys.config.presets import PRESETS, preset

__all__ = ["DTYPES", "FAMILIES", "PRESETS", "Llama3Scaling", "ModelConfig", "check_bool",
           "check_float", "check_int", "from_hf_config", "preset", "set_frozen", "to_hf_config"]
