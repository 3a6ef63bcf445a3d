"""Study a model of your own: a local Hugging Face checkpoint directory through the analysis.

    .venv/bin/python examples/own_model.py --checkpoint /models/pythia-70m
    .venv/bin/python examples/own_model.py --out /tmp/my-model    # writes a stand-in first

dynsys downloads nothing. A model of your own is a directory holding config.json and
model.safetensors (or shards and model.safetensors.index.json), of model type llama,
mistral, qwen2, gpt_neox or smollm3: one written by transformers' `save_pretrained`, one
fetched from the Hub by your own tools, one trained by `dynsys train`, or one written by
`ds.save_hf`. A tokenizer.json beside it is read too. Without --checkpoint this walk-through
first writes a stand-in: a small Pythia-style (gpt_neox) model at random initialisation,
saved with `ds.save_hf` into --out (the same files transformers writes and reads).

Then, on n-token prompts (a random N-gram repeated, N = 1..4, and i.i.d. random tokens):
the share of greedy traces of G tokens that end in a loop, with its exact (Clopper–Pearson)
95% interval, with RoPE on and off (the same weights); and for one prompt the Markov map f_P,
its orbit from the trace's first token, and the trace compared with it step by step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dynsys as ds
from dynsys.stats import proportion_interval

FULL_MAP_LIMIT = 8192  # above this vocabulary size, follow f_P lazily from one token instead


def stand_in(directory: Path) -> Path:
    """Write a small random gpt_neox checkpoint (Pythia's layout) to `directory`."""
    cfg = ds.ModelConfig(family="gpt_neox", vocab_size=384, hidden_size=64,
                         intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=4,
                         head_dim=16, rotary_pct=0.25, max_position_embeddings=1024)
    return ds.save_hf(ds.Model(cfg, ds.init_params(cfg, seed=7)), directory)


def loop_share(model: ds.Model, prompts: np.ndarray, new_tokens: int) -> str:
    """'k/B = share [lo, hi]' of the B greedy traces whose end is periodic (3 copies)."""
    traces = np.asarray(ds.generate(model, prompts, new_tokens).tokens)
    k = int(np.sum(ds.periodicity_batch(traces).period > 0))
    lo, hi = proportion_interval(k, len(prompts))
    return f"{k}/{len(prompts)} = {k / len(prompts):.2f} [{lo:.2f}, {hi:.2f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="your Hugging Face checkpoint directory")
    parser.add_argument("--out", type=Path, default=Path("runs/own-model"),
                        help="where the stand-in checkpoint is written (without --checkpoint)")
    parser.add_argument("--length", type=int, default=256, help="n, the prompt's length")
    parser.add_argument("--new-tokens", type=int, default=48, help="G, the tokens generated")
    parser.add_argument("--prompts", type=int, default=4, help="prompts of each kind")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, OSError) as e:  # not a checkpoint dynsys reads, or bad sizes: one
        parser.error(str(e))            # line and exit status 2, as the dynsys CLI does


def run(args: argparse.Namespace) -> None:
    checkpoint = args.checkpoint or stand_in(args.out)
    model = ds.load(checkpoint)  # a path that is not a preset name is read from the directory
    cfg = model.config
    print(f"{checkpoint}: {cfg.family}, V = {cfg.vocab_size}, {cfg.num_layers} layers, "
          f"RoPE {'on' if cfg.use_rope else 'off'}, tokenizer: {model.tokenizer is not None}")

    V, n = cfg.vocab_size, args.length
    kinds = {f"{N}-gram repeated": [ds.prompts.repeated_ngram(V, N, n, seed=s)
                                    for s in range(args.prompts)] for N in (1, 2, 3, 4)}
    kinds["i.i.d. random"] = [ds.prompts.random_tokens(V, n, seed=s) for s in range(args.prompts)]
    print(f"share of traces ending in a loop (n = {n}, G = {args.new_tokens}; 95% intervals):")
    for kind, prompts in kinds.items():
        on, off = (loop_share(model.with_rope(rope), np.stack(prompts), args.new_tokens)
                   for rope in (True, False))
        print(f"  {kind:18s} RoPE on {on:28s} RoPE off {off}")

    prompt = kinds["2-gram repeated"][0]
    trace = np.asarray(ds.generate(model, prompt[None], args.new_tokens).tokens)[0]
    if V <= FULL_MAP_LIMIT:
        fmap = ds.markov_map(model, prompt)  # V rows after one shared prefix
        print(f"f_P on all of V: {ds.orbits(fmap.next).n_cycles} cycles")
    else:
        fmap = None  # compare() then follows the orbit of x_1 lazily
    tail, cycle = ds.lazy_orbit(model, prompt, int(trace[0]))
    gap = ds.compare(model, prompt, trace, fmap)
    print(f"from x_1 = {trace[0]}, f_P reaches a cycle of length {len(cycle)} after {len(tail)} "
          f"steps; the trace follows f_P on {gap.agreement:.0%} of steps, ends in period "
          f"{gap.trace_period} (0: no loop), {'an' if gap.cycle_is_orbit else 'not an'} "
          "orbit of f_P")
    if model.tokenizer is not None:
        print("the trace as text:", repr(model.tokenizer.decode(trace.tolist())))


if __name__ == "__main__":
    main()
