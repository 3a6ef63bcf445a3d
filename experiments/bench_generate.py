"""Benchmark: dynsys generation against Hugging Face `generate`, side by side, and the roofline.

Same weights (a random-init dynsys model exported with `save_hf` and loaded by
transformers), same prompts, greedy, float32, this CPU; the tokens must be identical.
Targets: tiny (prompt 200, 256 new) ≥ 10× at batch 1 and ≥ 3× at batch 64; llama-3.2-1b
(prompt 100, 64 new) ≥ 2× at batch 1 and at batch 8.

Beside each ratio: the floor of the whole call on this machine's roofline, measured in the
same run (timing.measure_roofline: streaming-read GB/s and matmul GFLOP/s) — the prefill plus
every decode step at max(bytes ÷ bandwidth, FLOPs ÷ peak), bytes = all weights + the filled
part of the KV cache, FLOPs = 2·params·tokens + attention (timing.generate_floor) — and the
fraction of it achieved (floor / measured). The bf16 row times batch-1 decoding with bfloat16
weights, activations and cache against float32, same model, same run (both dynsys); its floor
counts half the bytes (the matmul peak is float32's).

    .venv/bin/python experiments/bench_generate.py                # both models, bf16 on 1b
    .venv/bin/python experiments/bench_generate.py --cases tiny   # tiny only (or: bf16)
    .venv/bin/python experiments/bench_generate.py --quick        # tiny (32 new, batch 1, 8),
                                                                  # bf16 on a 41M llama
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from timing import Roofline, generate_floor, measure_roofline

import dynsys as ds
from dynsys.nn import init_params

CASES = {  # name: (preset, prompt length, new tokens, batch sizes)
    "tiny": ("tiny", 200, 256, (1, 64)),
    "llama-3.2-1b": ("llama-3.2-1b", 100, 64, (1, 8)),
}
QUICK = {"tiny": ("tiny", 200, 32, (1, 8))}
BF16 = ("llama-3.2-1b", 100, 64)  # preset, prompt length, new tokens (batch 1)
# Quick: a 8-layer llama of 41M parameters (164 MB in float32: beyond the caches). Not a
# pythia preset: gpt_neox's LayerNorm returns float32, which `generate` cannot carry in bf16.
QUICK_BF16 = (ds.ModelConfig(family="llama", vocab_size=32000, hidden_size=512,
                             intermediate_size=1536, num_layers=8, num_heads=8, num_kv_heads=4,
                             head_dim=64), 100, 16)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def roof_text(cfg, roof: Roofline, batch: int, prompt_len: int, new: int, seconds: float) -> str:
    total, step, step_bytes = generate_floor(cfg, roof, batch, prompt_len, new)
    return (f"floor {step * 1e3:.2f} ms/step ({step_bytes / 1e6:.1f} MB/step), "
            f"{total / seconds:.2f} of floor")


def run_case(preset: str, prompt_len: int, new: int, batches: tuple[int, ...],
             roof: Roofline) -> None:
    model = ds.load(preset, seed=0)
    with tempfile.TemporaryDirectory() as d:
        ds.save_hf(model, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    for batch in batches:
        prompts = np.random.default_rng(batch).integers(
            0, model.config.vocab_size, (batch, prompt_len)).astype(np.int32)
        ours = lambda: np.asarray(jax.block_until_ready(ds.generate(model, prompts, new).tokens))  # noqa: E731, B023
        _, compile_s = timed(ours)
        tokens, our_s = timed(ours)
        with torch.no_grad():
            ids = torch.tensor(prompts, dtype=torch.long)
            theirs, hf_s = timed(lambda: hf.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,  # noqa: B023
                min_new_tokens=new, pad_token_id=0).numpy()[:, prompt_len:])
        same = np.array_equal(tokens, theirs)
        print(f"{preset:14s} batch {batch:3d}: dynsys {batch * new / our_s:9.1f} tok/s "
              f"({our_s / new * 1e3:7.1f} ms/step, first call {compile_s:.1f} s incl. compile) | "
              f"transformers {batch * new / hf_s:8.1f} tok/s ({hf_s / new * 1e3:7.1f} ms/step, "
              f"{threads} threads) | ratio {hf_s / our_s:5.1f}x | identical tokens: {same} | "
              f"{roof_text(model.config, roof, batch, prompt_len, new, our_s)}")


def bf16_model(model: ds.Model) -> ds.Model:
    """The same weights rounded to bfloat16, with bfloat16 activations and cache."""
    return ds.Model(model.config.with_dtype("bfloat16"),
                    jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), model.params))


def run_bf16(preset: str | ds.ModelConfig, prompt_len: int, new: int, roof: Roofline,
             repeats: int = 2) -> None:
    """Batch-1 decoding, bfloat16 against float32: alternating timed calls, best of each."""
    if isinstance(preset, str):
        f32 = ds.load(preset, seed=0)
    else:
        f32, preset = ds.Model(preset, init_params(preset, 0)), "llama-41m"
    b16 = bf16_model(f32)
    prompt = np.random.default_rng(1).integers(0, f32.config.vocab_size, (1, prompt_len))
    calls = {name: (lambda m=m: np.asarray(jax.block_until_ready(
                 ds.generate(m, prompt, new).tokens)))
             for name, m in (("float32", f32), ("bfloat16", b16))}
    tokens = {name: call() for name, call in calls.items()}  # compile
    best = {name: float("inf") for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            best[name] = min(best[name], timed(call)[1])
    agree = float(np.mean(tokens["float32"] == tokens["bfloat16"]))
    first = int(np.argmin(tokens["float32"][0] == tokens["bfloat16"][0])) if agree < 1 else new
    for name, m in (("float32", f32), ("bfloat16", b16)):
        print(f"{preset:14s} batch   1 {name:8s}: {new / best[name]:7.1f} tok/s "
              f"({best[name] / new * 1e3:7.1f} ms/step) | "
              f"{roof_text(m.config, roof, 1, prompt_len, new, best[name])}")
    print(f"{preset:14s} bf16 vs fp32: {best['float32'] / best['bfloat16']:.2f}x faster | "
          f"greedy tokens equal to fp32's: {agree:.0%} (first difference at step {first})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=[*CASES, "bf16"], choices=[*CASES, "bf16"])
    ap.add_argument("--quick", action="store_true",
                    help="tiny with 32 new tokens at batch 1 and 8; the bf16 row on a 41M llama")
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    print(f"device: {jax.devices()[0].device_kind}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, jax {jax.__version__}")
    table = QUICK if args.quick else CASES
    for name in args.cases:
        if args.quick and name not in QUICK and name != "bf16":
            continue
        roof = measure_roofline(args.quick)  # just before the case: the machine drifts
        print(roof)
        if name == "bf16":
            run_bf16(*(QUICK_BF16 if args.quick else BF16), roof)
        else:
            run_case(*table[name], roof)


if __name__ == "__main__":
    main()
