"""Shared pieces of the benchmark scripts: best-of timing, the matmul peak, step FLOPs."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from dynsys.config import ModelConfig


def best_time(fn, repeats: int) -> float:
    """Minimum wall time of fn() over `repeats` calls, after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a jitted n×n float32 matmul: this machine's practical peak."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / best_time(lambda: f(a), repeats) / 1e9


def step_flops(cfg: ModelConfig, rows: int, keys: int) -> float:
    """FLOPs (2 per multiply-add) of one token per row attending to `keys` keys, LM head
    included."""
    d, h = cfg.hidden_size, cfg.head_dim
    proj = 2 * d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    attn = 4 * cfg.num_heads * h * keys
    mlp = 2 * d * cfg.intermediate_size * (2 if cfg.family == "gpt_neox" else 3)
    return rows * (cfg.num_layers * (proj + attn + mlp) + 2 * d * cfg.vocab_size)
