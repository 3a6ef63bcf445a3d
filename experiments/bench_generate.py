"""Benchmark: dynsys generation against Hugging Face `generate`, side by side.

Same weights (a random-init dynsys model exported with `save_hf` and loaded by
transformers), same prompts, greedy, float32, this CPU; the tokens must be identical.
Targets: tiny (prompt 200, 256 new) ≥ 10× at batch 1 and ≥ 3× at batch 64; llama-3.2-1b
(prompt 100, 64 new) ≥ 2× at batch 1 and at batch 8.

    .venv/bin/python experiments/bench_generate.py                # both models
    .venv/bin/python experiments/bench_generate.py --cases tiny   # tiny only
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

import dynsys as ds

CASES = {  # name: (preset, prompt length, new tokens, batch sizes)
    "tiny": ("tiny", 200, 256, (1, 64)),
    "llama-3.2-1b": ("llama-3.2-1b", 100, 64, (1, 8)),
}


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_case(preset: str, prompt_len: int, new: int, batches: tuple[int, ...]) -> None:
    model = ds.load(preset, seed=0)
    with tempfile.TemporaryDirectory() as d:
        ds.save_hf(model, d)
        hf = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    threads = torch.get_num_threads()
    for batch in batches:
        prompts = np.random.default_rng(batch).integers(
            0, model.config.vocab_size, (batch, prompt_len)).astype(np.int32)
        ours = lambda: np.asarray(jax.block_until_ready(ds.generate(model, prompts, new)))  # noqa: E731
        _, compile_s = timed(ours)
        tokens, our_s = timed(ours)
        with torch.no_grad():
            ids = torch.tensor(prompts, dtype=torch.long)
            theirs, hf_s = timed(lambda: hf.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                min_new_tokens=new, pad_token_id=0).numpy()[:, prompt_len:])
        same = np.array_equal(tokens, theirs)
        print(f"{preset:14s} batch {batch:3d}: dynsys {batch * new / our_s:9.1f} tok/s "
              f"({our_s / new * 1e3:7.1f} ms/step, first call {compile_s:.1f} s incl. compile) | "
              f"transformers {batch * new / hf_s:8.1f} tok/s ({hf_s / new * 1e3:7.1f} ms/step, "
              f"{threads} threads) | ratio {hf_s / our_s:5.1f}x | identical tokens: {same}")
    del hf


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args()
    transformers.logging.set_verbosity_error()
    print(f"device: {jax.devices()[0].device_kind}; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, jax {jax.__version__}")
    for name in args.cases:
        run_case(*CASES[name])


if __name__ == "__main__":
    main()
