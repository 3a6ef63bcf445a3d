"""Rotary position embedding (rotate-half convention, optionally on the first dims only)."""

from __future__ import annotations

import math

import jax
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


def rope_angles(positions, cfg: ModelConfig, dtype=jnp.float32) -> jnp.ndarray:
    """[..., d_r/2] the angles p · ω_i of positions [...].

    float32: as the model (and transformers) forms them, the product rounded to float32
    (≈ 1e-4 rad off the exact product at p ≈ 2000); this is the rotation the model applies.
    float64 (under jax.enable_x64): the exact product of the positions and the float32
    frequencies, for arguments that need exact relative angles (R_a R_b = R_{a+b}). Either
    dtype keeps the model's frequencies ω (`inverse_frequencies`)."""
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("rope_angles: float64 angles need jax.enable_x64(True)")
    return (jnp.asarray(positions).astype(dtype)[..., None]
            * jnp.asarray(inverse_frequencies(cfg)).astype(dtype))


def rotate(x: jnp.ndarray, angles: jnp.ndarray, rotary_dim: int) -> jnp.ndarray:
    """Rotate-half on the first rotary_dim entries of x's last axis, in the angles' dtype:
    (x1, x2) ↦ (x1 cos − x2 sin, x2 cos + x1 sin), halves of the rotary part; angles
    [..., d_r/2] broadcast against x[..., :d_r/2]; the rest of x is returned as it is."""
    d = rotary_dim
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    rot = x[..., :d].astype(angles.dtype)
    x1, x2 = rot[..., : d // 2], rot[..., d // 2:]
    parts = [x1 * cos - x2 * sin, x2 * cos + x1 * sin]
    return jnp.concatenate([*parts, x[..., d:]] if x.shape[-1] > d else parts, axis=-1)


def apply_rope(x: jnp.ndarray, positions: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    """Rotate x[..., T, heads, H] by angle positions[..., T] · ω on its first rotary_dim dims
    (`rotate` in float32 with the model's float32 angles), returned in x's dtype. Identity when
    cfg.use_rope is False.
    """
    if not cfg.use_rope:
        return x
    d = cfg.rotary_dim
    angles = rope_angles(positions, cfg)[..., None, :]  # [..., T, 1, d/2]
    return jnp.concatenate([rotate(x[..., :d], angles, d).astype(x.dtype), x[..., d:]], axis=-1)
