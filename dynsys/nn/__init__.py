"""The network: layers, attention over cache segments, RoPE, named sites, the transformer
and the Model (config + parameters). Data flows layers -> transformer -> model."""

from dynsys.nn.cache import Prefix, RowCache, empty_rows
from dynsys.nn.layers import Linear, RMSNorm, norm_layer
from dynsys.nn.model import Model
from dynsys.nn.sites import Recorded, edits
from dynsys.nn.transformer import MLP, Transformer, init_params, param_axes

__all__ = ["MLP", "Linear", "Model", "Prefix", "RMSNorm", "Recorded", "RowCache", "Transformer",
           "edits", "empty_rows", "init_params", "norm_layer", "param_axes"]
