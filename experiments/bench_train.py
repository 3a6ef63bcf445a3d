"""Benchmark: training tokens/s of dynsys.train against the same step in PyTorch.

One model (llama, ~14M parameters: vocab 4096, hidden 384, 6 layers, 6 heads; untied LM
head), one batch shape (`--batch` windows of `--context` predicted tokens, 8 × 256 by
default), float32, AdamW with Pythia's hyperparameters and weight-decay groups, clipping at
global norm 1: dynsys's jitted `train_step` against transformers' `LlamaForCausalLM` (built
from the same config with `dynsys.to_hf_config`, SDPA attention) with `torch.optim.AdamW` and
`clip_grad_norm_`. After a few warm-up steps of each, the two take turns in rounds (the
median of a few steps of one, then of the other, then a jitted 2048×2048 float32 matmul), so
that a slow spell of a shared machine hits both sides alike; medians over the rounds are
reported (target: dynsys ≥ 1.0x at contexts 256 and 2048, and ≥ 0.5 of the matmul peak at
2048; from dynsys.decode.engine.BLOCKWISE_MIN_LENGTH tokens on, dynsys attends in blocks).

FLOPs per step: 3 · (forward FLOPs) = 6 · (matmul parameters) · tokens + 3 · causal attention
(`timing.step_flops` summed over the window's positions; the embedding lookup is no matmul),
reported as a fraction of the matmul's GFLOP/s measured in the same round.

    .venv/bin/python experiments/bench_train.py [--context 256] [--batch 8] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from timing import matmul_gflops, step_flops

import dynsys as ds
from dynsys.train import TrainConfig, decay_mask, init_state, train_step


def median_seconds(step, steps: int) -> float:
    """Median wall time of `steps` calls of step() (each blocks until its step is done), after
    one untimed call (it absorbs the switch from the other framework: threads still spinning,
    caches holding the other's data)."""
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def dynsys_step(config: TrainConfig, batch: np.ndarray):
    """A closure running dynsys's training step on `batch` (the state carried along)."""
    box = [init_state(config)]
    batch = jnp.asarray(batch)
    per_epoch = 1 << 20  # the data position plays no part in the timing

    def step():
        box[0], metrics = train_step(config, per_epoch, box[0], batch)
        jax.block_until_ready(metrics)

    return step


def torch_step(config: TrainConfig, batch: np.ndarray):
    """The same step in PyTorch: LlamaForCausalLM, AdamW with the same decay groups."""
    hf_config = transformers.AutoConfig.for_model(**ds.to_hf_config(config.model))
    model = transformers.LlamaForCausalLM(hf_config).float().train()
    # The same groups as dynsys.train.decay_mask: matrices and embeddings decay, norms do not.
    decay = [p for n, p in model.named_parameters() if "norm" not in n]
    rest = [p for n, p in model.named_parameters() if "norm" in n]
    b1, b2 = config.betas
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": rest, "weight_decay": 0.0}],
                            lr=config.lr, betas=(b1, b2), eps=config.eps)
    inputs = torch.as_tensor(batch[:, :-1], dtype=torch.long)
    targets = torch.as_tensor(batch[:, 1:], dtype=torch.long)

    def step():
        logits = model(inputs).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        opt.step()
        return loss.item()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--context", type=int, default=256, help="predicted tokens per window")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    model = ds.ModelConfig(
        family="llama", vocab_size=args.vocab, hidden_size=args.hidden,
        intermediate_size=8 * args.hidden // 3 // 64 * 64, num_layers=args.layers,
        num_heads=args.heads, num_kv_heads=args.heads, head_dim=args.hidden // args.heads,
        max_position_embeddings=max(2048, args.context))
    config = TrainConfig(model=model, seq_len=args.context, batch=args.batch)
    batch = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.context + 1),
                                              dtype=np.int32)
    shapes = jax.eval_shape(lambda: ds.init_params(model))
    params = sum(x.size for x in jax.tree_util.tree_leaves(shapes))
    decayed = sum(x.size for x, d in zip(jax.tree_util.tree_leaves(shapes),
                                         jax.tree_util.tree_leaves(decay_mask(shapes)),
                                         strict=True) if d)
    tokens = args.batch * args.context
    flops = 3 * sum(step_flops(model, args.batch, t + 1) for t in range(args.context))
    print(f"llama: {params / 1e6:.1f}M parameters ({decayed / 1e6:.1f}M with weight decay), "
          f"hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}; batch {args.batch} "
          f"x {args.context} tokens = {tokens} tokens/step, {flops / 1e9:.1f} GFLOP/step; "
          f"float32; "
          f"jax {jax.__version__} on {jax.devices()[0].device_kind}, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads")
    jax_step, pt_step = dynsys_step(config, batch), torch_step(config, batch)
    for _ in range(args.warmup):
        jax_step()
        pt_step()
    jax_s, torch_s, peaks = [], [], []
    for i in range(args.rounds):
        jax_s.append(median_seconds(jax_step, args.steps))
        torch_s.append(median_seconds(pt_step, args.steps))
        peaks.append(matmul_gflops(repeats=3))
        print(f"round {i + 1}: dynsys {jax_s[-1]:.2f} s/step, torch {torch_s[-1]:.2f} s/step, "
              f"ratio {torch_s[-1] / jax_s[-1]:.2f} | matmul {peaks[-1]:.1f} GFLOP/s")
    ratios = [t / j for j, t in zip(jax_s, torch_s, strict=True)]
    fraction = {name: statistics.median(flops / s / 1e9 / p
                                        for s, p in zip(times, peaks, strict=True))
                for name, times in (("dynsys", jax_s), ("torch", torch_s))}
    print(f"context {args.context}: dynsys {tokens / statistics.median(jax_s):,.0f} tokens/s "
          f"({fraction['dynsys']:.2f} of matmul peak), torch "
          f"{tokens / statistics.median(torch_s):,.0f} tokens/s ({fraction['torch']:.2f}); "
          f"ratio {statistics.median(ratios):.2f} (median of {args.rounds} rounds, range "
          f"{min(ratios):.2f}-{max(ratios):.2f}; target >= 1.0); matmul peak "
          f"{statistics.median(peaks):.1f} GFLOP/s (median)")


if __name__ == "__main__":
    main()
