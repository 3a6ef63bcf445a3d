"""Model configuration: one frozen dataclass, checked whole when made, with the layer
kinds resolved once from the family."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from dynsys.checks import check_bool, check_float, check_int

Family = Literal["llama", "qwen2", "gpt_neox"]
FAMILIES: tuple[str, ...] = ("llama", "qwen2", "gpt_neox")
DType = Literal["float32", "bfloat16"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
# Token ids and positions are int32: a size (vocabulary, position limit) is at most this.
INT32_LIMIT = 2**31


def set_frozen(obj: Any, **values: Any) -> None:
    """Set fields of a frozen dataclass, from its __post_init__, to their checked plain values."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


@dataclasses.dataclass(frozen=True)
class Llama3Scaling:
    """Llama-3 RoPE frequency scaling: wavelengths above original/low_freq_factor are divided by
    `factor`, those below original/high_freq_factor are kept, the band between is interpolated.

    factor > 0, 0 < low_freq_factor < high_freq_factor (finite numbers; ints are accepted and
    stored as floats); original_max_position_embeddings a positive integer."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int

    def __post_init__(self):
        low = check_float("low_freq_factor", self.low_freq_factor, above=0)
        high = check_float("high_freq_factor", self.high_freq_factor, above=0)
        if not high > low:  # the band between the two is interpolated over high - low
            raise ValueError(f"high_freq_factor={self.high_freq_factor!r} must be greater than "
                             f"low_freq_factor={self.low_freq_factor!r}")
        set_frozen(
            self, factor=check_float("factor", self.factor, above=0), low_freq_factor=low,
            high_freq_factor=high, original_max_position_embeddings=check_int(
                "original_max_position_embeddings", self.original_max_position_embeddings,
                minimum=1))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer of one of three families.

    llama (= mistral without sliding window): RMSNorm, SwiGLU, sequential residual,
    rotate-half RoPE.
    qwen2: llama with biases on q, k and v.
    gpt_neox: LayerNorm, GELU MLP with biases, biased attention, rotary on the first
    `rotary_pct * head_dim` dimensions, parallel residual x + attn(ln1 x) + mlp(ln2 x)
    (sequential with parallel_residual=False).
    `use_rope=False` replaces the rotary embedding by the identity (weights unchanged).

    The family decides the layers once, here (`norm`, `mlp`, `qkv_bias`, `out_bias`,
    `parallel_residual`); the model reads only these. Dtypes: parameters (`param_dtype`),
    activations (`dtype`: matmul inputs; norms, softmax and logits are float32) and the KV
    cache (`cache_dtype`, default the activation dtype) are separate, so training can keep
    float32 master weights under bfloat16 compute.

    Sizes are positive integers (never bools) up to INT32_LIMIT (token ids and positions are
    int32: a larger vocabulary or position limit would wrap silently); rope_theta and norm_eps
    finite and > 0,
    initializer_range finite and >= 0, rotary_pct in (0, 1] (ints accepted, stored as floats);
    the flags are True or False. Anything else raises ValueError: such a model would not fail
    loudly but produce NaN logits.
    """

    family: Family
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Llama3Scaling | None = None
    rotary_pct: float = 1.0
    use_rope: bool = True
    norm_eps: float = 1e-5
    tie_embeddings: bool = False
    parallel_residual: bool | None = None  # None: the family's (gpt_neox True, else False)
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    param_dtype: DType = "float32"
    dtype: DType = "float32"
    cache_dtype: DType | None = None  # None: `dtype`

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family={self.family!r} is not one of {FAMILIES}")
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                 "num_kv_heads", "head_dim", "max_position_embeddings")
        set_frozen(self, **{name: check_int(name, getattr(self, name), minimum=1,
                                            maximum=INT32_LIMIT) for name in sizes})
        if self.parallel_residual is None:
            set_frozen(self, parallel_residual=self.family == "gpt_neox")
        set_frozen(self, **{name: check_bool(name, getattr(self, name))
                            for name in ("use_rope", "tie_embeddings", "parallel_residual")})
        if self.parallel_residual and self.family != "gpt_neox":
            raise ValueError(f"parallel_residual=True is not a {self.family} model (gpt_neox only)")
        set_frozen(
            self, rope_theta=check_float("rope_theta", self.rope_theta, above=0),
            rotary_pct=check_float("rotary_pct", self.rotary_pct, above=0, at_most=1),
            norm_eps=check_float("norm_eps", self.norm_eps, above=0),
            initializer_range=check_float("initializer_range", self.initializer_range, at_least=0))
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, Llama3Scaling):
            raise ValueError(f"rope_scaling={self.rope_scaling!r} must be a Llama3Scaling or None")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not divisible by num_kv_heads={self.num_kv_heads}")
        if self.rotary_dim % 2:
            raise ValueError(f"rotary dimension {self.rotary_dim} (head_dim * rotary_pct) is odd")
        if self.cache_dtype is None:
            set_frozen(self, cache_dtype=self.dtype)
        for name in ("param_dtype", "dtype", "cache_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {DTYPES}")

    @property
    def norm(self) -> Literal["rms", "layer"]:
        """RMSNorm (llama, qwen2) or LayerNorm (gpt_neox)."""
        return "layer" if self.family == "gpt_neox" else "rms"

    @property
    def mlp(self) -> Literal["swiglu", "gelu"]:
        """down(silu(gate x) ⊙ up x) (llama, qwen2) or down(gelu(up x + b)) + b (gpt_neox)."""
        return "gelu" if self.family == "gpt_neox" else "swiglu"

    @property
    def out_bias(self) -> bool:
        """Biases on the attention output and the MLP projections (gpt_neox)."""
        return self.family == "gpt_neox"

    def with_dtype(self, dtype: str) -> ModelConfig:
        """Parameters, activations and cache all in `dtype`."""
        return dataclasses.replace(self, param_dtype=dtype, dtype=dtype, cache_dtype=dtype)

    @property
    def heads_per_kv(self) -> int:
        return self.num_heads // self.num_kv_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_pct)

    @property
    def qkv_bias(self) -> bool:
        """Biases on the q, k and v projections (qwen2, gpt_neox)."""
        return self.family in ("qwen2", "gpt_neox")

    def with_rope(self, use_rope: bool) -> ModelConfig:
        return dataclasses.replace(self, use_rope=use_rope)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
