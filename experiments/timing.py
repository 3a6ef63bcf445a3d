"""Shared pieces of the benchmark scripts: best-of timing, the roofline (streaming bandwidth
and matmul peak, measured in the same run) and the bytes and FLOPs of a step."""

from __future__ import annotations

import dataclasses
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


# --- the roofline ---------------------------------------------------------------------------
# A step's floor is max(bytes it must read ÷ streaming bandwidth, FLOPs ÷ matmul peak), both
# measured in the same run as the step. What is counted (`step_cost`):
#   bytes = every weight a step reads once (`weight_bytes`) + the filled part of the KV cache
#           (the keys actually attended: prompt + tokens so far, not the cache's capacity,
#           which dynsys reads whole at every step, masked) — activations are not counted;
#   FLOPs = `step_flops`: 2 per multiply-add of the projections, MLP and LM head (≈ 2·params
#           per token) + attention 4·N·H per key per token.
# The bandwidth is main memory's (the probe reads 128-512 MB): a model whose weights stay in
# the CPU caches between steps (tiny: 4.6 MB) can run above this floor (fraction > 1).


@dataclasses.dataclass(frozen=True)
class Roofline:
    """This machine's streaming-read bandwidth (GB/s) and float32 matmul peak (GFLOP/s)."""

    gbps: float
    gflops: float
    sum_gbps: float = 0.0  # the two bandwidth probes, for the record
    matvec_gbps: float = 0.0

    def floor(self, nbytes: float, flops: float) -> float:
        """Seconds: the time below which a step reading nbytes and doing flops cannot run."""
        return max(nbytes / (self.gbps * 1e9), flops / (self.gflops * 1e9))

    def bound(self, nbytes: float, flops: float) -> str:
        return "memory" if nbytes / self.gbps >= flops / self.gflops else "compute"

    def __str__(self) -> str:
        return (f"roofline: stream {self.gbps:.1f} GB/s (sum {self.sum_gbps:.1f}, matvec "
                f"{self.matvec_gbps:.1f}), matmul {self.gflops:.1f} GFLOP/s")


def stream_gbps(mbytes: int = 512, repeats: int = 5) -> tuple[float, float]:
    """GB/s of two jitted streaming reads of a float32 array of `mbytes` MB (far beyond any
    cache): a sum, and a matrix-vector product [n/4096, 4096]·[4096] (the shape of a batch-1
    decode step; XLA may run it on more threads than the reduction). Best of `repeats`."""
    n = mbytes * 2**20 // 4 // 4096 * 4096
    x = jnp.full((n,), 0.5, jnp.float32)
    total = jax.jit(jnp.sum)
    summed = x.nbytes / best_time(lambda: total(x), repeats) / 1e9
    m = x.reshape(-1, 4096)
    v = jnp.ones(4096, jnp.float32)
    mv = jax.jit(lambda m, v: m @ v)
    matvec = x.nbytes / best_time(lambda: mv(m, v), repeats) / 1e9
    return summed, matvec


def measure_roofline(quick: bool = False) -> Roofline:
    """Bandwidth (the better of the two probes of `stream_gbps`) and matmul peak, best of k."""
    summed, matvec = stream_gbps(128 if quick else 512, 3 if quick else 5)
    return Roofline(max(summed, matvec), matmul_gflops(repeats=3 if quick else 10), summed, matvec)


def itemsize(dtype: str) -> int:
    return jnp.dtype(dtype).itemsize


def layer_params(cfg: ModelConfig) -> int:
    """Parameters of one block: q, k, v, o (with the family's biases), the MLP, two norms."""
    d, h, f = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
    attn = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    if cfg.qkv_bias:
        attn += h * (cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = d * f * (3 if cfg.mlp == "swiglu" else 2)
    if cfg.out_bias:
        attn, mlp = attn + d, mlp + f + d
    norms = 2 * d * (2 if cfg.norm == "layer" else 1)
    return attn + mlp + norms


def weight_bytes(cfg: ModelConfig) -> int:
    """Bytes of the weights one step reads: every block, the final norm and the LM head [V, D]
    (the embedding table when tied), in the parameter dtype. The embedding lookup reads only
    the rows' own entries (not counted); an untied input table is otherwise never read."""
    final = cfg.hidden_size * (2 if cfg.norm == "layer" else 1)
    n = cfg.num_layers * layer_params(cfg) + final + cfg.vocab_size * cfg.hidden_size
    return n * itemsize(cfg.param_dtype)


def kv_bytes(cfg: ModelConfig, rows: int, keys: int) -> int:
    """Bytes of keys and values of `keys` cached tokens in each of `rows` rows, all layers."""
    return (2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * keys * rows
            * itemsize(cfg.cache_dtype))


def step_cost(cfg: ModelConfig, rows: int, keys: int, shared: int = 0) -> tuple[int, float]:
    """(bytes, FLOPs) of one token in each of `rows` rows attending to `keys` keys of its own
    row (itself included) after `shared` keys of a shared prefix (read once for all rows)."""
    nbytes = weight_bytes(cfg) + kv_bytes(cfg, rows, keys) + kv_bytes(cfg, 1, shared)
    return nbytes, step_flops(cfg, rows, keys + shared)


def generate_floor(cfg: ModelConfig, roof: Roofline, rows: int, prompt: int,
                   new: int) -> tuple[float, float, int]:
    """The floor of a whole `generate` call (seconds): the prefill (every prompt token's
    FLOPs, the LM head once per row; the weights read once) plus new − 1 decode steps, step j
    attending to prompt + j keys. Also the decode steps' mean floor and mean bytes."""
    lm_head = 2 * cfg.hidden_size * cfg.vocab_size * rows
    prefill_flops = sum(step_flops(cfg, rows, i) - lm_head for i in range(1, prompt + 1))
    total = roof.floor(weight_bytes(cfg), prefill_flops + lm_head)
    steps = [step_cost(cfg, rows, prompt + j) for j in range(1, new)]
    floors = [roof.floor(b, f) for b, f in steps]
    n = max(len(steps), 1)
    return total + sum(floors), sum(floors) / n, sum(b for b, _ in steps) // n
