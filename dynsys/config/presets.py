"""The published configurations dynsys ships as presets (random initialisation like
Hugging Face's)."""

from __future__ import annotations

from dynsys.config.model import Llama3Scaling, ModelConfig

_LLAMA_3_2_1B = ModelConfig(
    family="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16,
    num_heads=32, num_kv_heads=8, head_dim=64, rope_theta=500000.0,
    rope_scaling=Llama3Scaling(32.0, 1.0, 4.0, 8192), norm_eps=1e-5, tie_embeddings=True,
    max_position_embeddings=131072)


def _pythia(hidden: int, layers: int, heads: int) -> ModelConfig:
    return ModelConfig(
        family="gpt_neox", vocab_size=50304, hidden_size=hidden, intermediate_size=4 * hidden,
        num_layers=layers, num_heads=heads, num_kv_heads=heads, head_dim=hidden // heads,
        rope_theta=10000.0, rotary_pct=0.25, norm_eps=1e-5, max_position_embeddings=2048)


def _qwen2(vocab: int, hidden: int, ffn: int, layers: int, heads: int, kv: int, theta: float,
           tied: bool, max_pos: int) -> ModelConfig:
    return ModelConfig(
        family="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
        num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
        rope_theta=theta, norm_eps=1e-6, tie_embeddings=tied, max_position_embeddings=max_pos)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        family="llama", vocab_size=512, hidden_size=128, intermediate_size=512, num_layers=4,
        num_heads=4, num_kv_heads=2, head_dim=32, rope_theta=10000.0, norm_eps=1e-5,
        tie_embeddings=False, max_position_embeddings=32768),
    "llama-3.2-1b": _LLAMA_3_2_1B,
    "pythia-70m": _pythia(512, 6, 8),
    "pythia-160m": _pythia(768, 12, 12),
    "pythia-410m": _pythia(1024, 24, 16),
    "pythia-1b": _pythia(2048, 16, 8),
    "qwen2.5-0.5b": _qwen2(151936, 896, 4864, 24, 14, 2, 1e6, True, 32768),
    "deepseek-r1-distill-qwen-1.5b": _qwen2(151936, 1536, 8960, 28, 12, 2, 1e4, False, 131072),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {sorted(PRESETS)}") from None
