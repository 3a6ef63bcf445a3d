"""Rotary position embedding (rotate-half convention, optionally on the first dims only)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from dynsys.config import ModelConfig


def inverse_frequencies(cfg: ModelConfig) -> np.ndarray:
    """ω_i = θ^{-2i/d_r}, i < d_r/2, with Llama-3 scaling applied when configured.

    Llama-3: wavelength λ_i = 2π/ω_i; λ > L/low → ω/factor; λ < L/high → ω; in between
    ω·((1−s)/factor + s) with s = (L/λ − low)/(high − low), L the original context length.
    """
    d = cfg.rotary_dim
    # float32 throughout, as transformers computes it, so that angles at long positions agree.
    exponents = np.arange(0, d, 2, dtype=np.float32) / np.float32(d)
    inv = np.float32(1.0) / (np.float32(cfg.rope_theta) ** exponents)
    sc = cfg.rope_scaling
    if sc is None:
        return inv
    wavelen = 2 * math.pi / inv
    low_wavelen = sc.original_max_position_embeddings / sc.low_freq_factor
    high_wavelen = sc.original_max_position_embeddings / sc.high_freq_factor
    scaled = np.where(wavelen > low_wavelen, inv / sc.factor, inv)
    smooth = (sc.original_max_position_embeddings / wavelen - sc.low_freq_factor) / (
        sc.high_freq_factor - sc.low_freq_factor)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    scaled = np.where(medium, (1 - smooth) * scaled / sc.factor + smooth * scaled, scaled)
    return scaled.astype(np.float32)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    """Rotate x[..., T, heads, H] by angle positions[..., T] · ω on its first rotary_dim dims.

    rotate_half: (x1, x2) ↦ (x1 cos − x2 sin, x2 cos + x1 sin), halves of the rotary part.
    Identity when cfg.use_rope is False.
    """
    if not cfg.use_rope:
        return x
    d = cfg.rotary_dim
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inverse_frequencies(cfg))
    cos = jnp.cos(angles)[..., None, :]  # [..., T, 1, d/2]
    sin = jnp.sin(angles)[..., None, :]
    rot, rest = x[..., :d].astype(jnp.float32), x[..., d:]
    x1, x2 = rot[..., : d // 2], rot[..., d // 2:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return jnp.concatenate([rotated.astype(x.dtype), rest], axis=-1)
