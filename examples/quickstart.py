"""Quick-start: one prompt through the whole pipeline, on the tiny preset, in a minute.

    .venv/bin/python examples/quickstart.py quickstart.png

Loads the `tiny` llama preset (random initialisation: no weights are downloaded), builds a
prompt of n tokens (a random N-gram repeated), decodes G tokens greedily, computes the
Markov map f_P (the next token after P + [v], for every token v of the vocabulary V), its
orbits (every orbit of a map on a finite set ends in a cycle), compares the trace with f_P
step by step, zero-ablates block 0's MLP and decodes again, and draws both traces and f_P's
cycles into the file named on the command line. Every step is explained in README.md and
docs/concepts.md; `examples/own_model.py` does the same for a checkpoint of your own.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import dynsys as ds
from dynsys import figstyle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("figure", type=Path, help="the plot to write (.png or .pdf)")
    parser.add_argument("--length", type=int, default=512, help="n, the prompt's length")
    parser.add_argument("--ngram", type=int, default=3, help="N, the repeated N-gram's length")
    parser.add_argument("--new-tokens", type=int, default=64, help="G, the tokens generated")
    args = parser.parse_args(argv)
    try:
        run(args)
    except ValueError as e:  # bad sizes: one line and exit status 2, as the dynsys CLI does
        parser.error(str(e))


def run(args: argparse.Namespace) -> None:
    model = ds.load("tiny", seed=0)  # a preset: its config, random Hugging Face-style init
    cfg = model.config
    prompt = ds.prompts.repeated_ngram(cfg.vocab_size, n=args.ngram, length=args.length, seed=1)

    # Greedy decoding: tokens [B, G] for prompts [B, n]; here B = 1.
    trace = np.asarray(ds.generate(model, prompt[None], args.new_tokens).tokens)[0]
    loop = ds.traces.periodicity(trace)  # the eventual cycle: period, onset, repeats
    print(f"greedy trace: period {loop.period} from step {loop.onset} ({loop.repeats} repeats)")

    # f_P on all of V at once (one shared-prefix step over V rows), then its orbits.
    fmap = ds.markov_map(model, prompt)
    orb = ds.orbits(fmap.next)
    null = ds.random_mapping_expectations(cfg.vocab_size)
    print(f"f_P: {orb.n_cycles} cycles, {orb.cycle_nodes.size} cyclic tokens "
          f"(a uniform random map of V = {cfg.vocab_size} points: {null.cycles:.1f} cycles, "
          f"{null.cyclic_nodes:.1f} cyclic tokens)")

    # The trace against f_P: agreement x_{t+1} = f_P(x_t) and the three parts of the gap.
    gap = ds.compare(model, prompt, trace, fmap)
    print(f"the trace follows f_P on {gap.agreement:.0%} of steps, first leaves it at step "
          f"{gap.first_divergence}; its cycle is an orbit of f_P: {gap.cycle_is_orbit}")

    # An edit is data passed into the compiled program: x -> x * scale + shift at a site.
    ablate = ds.edits({("mlp_out", 0): {"scale": 0.0}}, cfg.num_layers)
    edited = np.asarray(ds.generate(model, prompt[None], args.new_tokens, edits=ablate).tokens)[0]
    print(f"block 0's MLP zeroed: period {ds.traces.periodicity(edited).period}, "
          f"{np.mean(edited != trace):.0%} of tokens changed")

    with figstyle.style():
        fig, axes = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.6)
        ax, bx = axes[0]
        steps = np.arange(1, trace.size + 1)
        ax.plot(steps, trace, ".-", label="greedy")
        ax.plot(steps, edited, ".-", label="block 0's MLP zeroed")
        follows = np.flatnonzero(gap.agree_markov) + 2  # step t + 1 whose token is f_P(x_t)
        ax.plot(follows, trace[follows - 1], "o", mfc="none", color="black",
                label="token = f_P(previous)")
        ax.set(xlabel="generated step", ylabel="token id",
               title=f"traces (n = {prompt.size}, N = {args.ngram})")
        ax.legend(loc="best")
        tails = np.bincount(orb.tail)  # tokens v by the steps f_P needs to bring v to a cycle
        bx.bar(np.arange(tails.size), tails, width=0.8)
        bx.set(xlabel="steps from v to a cycle of f_P", ylabel="tokens v",
               title=f"f_P on V = {cfg.vocab_size}: {orb.n_cycles} cycle(s), lengths "
                     f"{sorted(set(np.diff(orb.cycle_ptr).tolist()))}")
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
