"""E1: an untrained transformer falls into loops, with RoPE and without (H. Fan's experiment).

A randomly initialised model (Hugging Face initialisation), once with RoPE and once with RoPE
replaced by the identity (same weights), continues prompts made of a random N-gram repeated
(N = 1..4) by greedy decoding. For each trace x_1..x_G, the minimal cycle length is the
smallest p whose last 3p tokens are p-periodic (0: the trace does not loop); the terminal
cycle is then {x_{G−p+1}, .., x_G}. The argument predicts that most traces loop (claim 1)
and that this does not depend on the positional encoding (claim 4).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter

import numpy as np

from dynsys import figstyle
from dynsys.data import prompts
from dynsys.decode import generate
from dynsys.dynamics.traces import periodicity_batch
from dynsys.io import load
from dynsys.runs import Run
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings

NAME = "e1"
TITLE = "Loops of an untrained model: minimal cycle lengths, RoPE on and off"
ROPES = (True, False)


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "llama-3.2-1b"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset, and the prompts' seeds
    ngrams: tuple[int, ...] = (1, 2, 3, 4)  # N: the prompt is a random N-gram repeated
    length: int = 1024  # prompt tokens (1024/N repeats of the N-gram)
    new_tokens: int = 1000  # greedy tokens per prompt
    prompts: int = 256  # random N-grams per N, the same for RoPE on and off
    batch: int = 64  # prompts per unit (one generate call)
    repeats: int = 3  # a cycle counts when it is repeated at least this many times
    top: int = 10  # attractor tokens listed per RoPE setting

    LIMITS = {"seed": 0, "ngrams": 1, "length": 1, "new_tokens": 1, "prompts": 1, "batch": 1,
              "repeats": 2, "top": 1}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return self.length + self.new_tokens


SCALES = {"small": Config(model="tiny", length=256, new_tokens=256, prompts=8, batch=8),
          "paper": Config()}


def unit_name(rope: bool, ngram: int, batch: int) -> str:
    return f"rope{int(rope)}_N{ngram}_b{batch}"


def _batches(config: Config) -> range:
    return range(-(-config.prompts // config.batch))


def _units(config: Config) -> list[tuple[int, int, bool]]:
    """(N, batch index, rope) in computing order: RoPE on and off of a batch side by side."""
    return list(itertools.product(config.ngrams, _batches(config), ROPES))


def make_prompts(config: Config, vocab_size: int, ngram: int, batch: int) -> np.ndarray:
    """Prompts [B, length] of batch `batch`: prompt j is the N-gram drawn from seed
    (config.seed, N, j), repeated to `length` tokens."""
    rows = range(batch * config.batch, min(config.prompts, (batch + 1) * config.batch))
    return np.stack([prompts.repeated_ngram(
        vocab_size, ngram, config.length,
        int(np.random.SeedSequence((config.seed, ngram, j)).generate_state(1)[0]))
        for j in rows])


def run(run: Run, config: Config, progress: bool = True) -> None:
    model = functools.cache(lambda: load(config.model, seed=config.seed))  # only if needed

    def compute(ngram: int, batch: int, rope: bool) -> dict:
        batch_prompts = make_prompts(config, model().config.vocab_size, ngram, batch)
        return {"prompts": batch_prompts,
                "traces": generate(model().with_rope(rope), batch_prompts, config.new_tokens)}

    run.fill(_units(config), lambda ngram, batch, rope: unit_name(rope, ngram, batch), compute,
             "E1 untrained loops", progress)
    traces = stored_traces(run, config)
    shortest = {key: periodicity_batch(t, config.repeats).shortest
                for key, t in traces.items()}
    run.write_table("loops", loop_table(shortest))
    run.write_table("cycle_lengths", cycle_length_table(shortest))
    attractors = attractor_table(traces, shortest, config.top)
    if attractors:  # absent when no trace loops
        run.write_table("attractors", attractors)


def stored_traces(run: Run, config: Config) -> dict[tuple[bool, int], np.ndarray]:
    """(rope, N) → all stored traces [prompts, G], batches in order."""
    return {(rope, ngram): np.concatenate([run.load(unit_name(rope, ngram, b))["traces"]
                                           for b in _batches(config)])
            for rope, ngram in itertools.product(ROPES, config.ngrams)}


def terminal_cycles(traces: np.ndarray, shortest: np.ndarray) -> list[np.ndarray]:
    """Per looping trace with minimal cycle length p: its last p tokens (the terminal cycle)."""
    return [t[len(t) - p:] for t, p in zip(traces, shortest) if p]


def loop_table(shortest: dict) -> list[dict]:
    """Per (rope, N): traces, looping traces (minimal cycle length > 0), their share, and
    the share of traces that end on a fixed point (minimal cycle length 1)."""
    return [{"rope": rope, "N": ngram, "traces": len(p), "looping": int((p > 0).sum()),
             "loop_share": float((p > 0).mean()), "fixed_point_share": float((p == 1).mean())}
            for (rope, ngram), p in shortest.items()]


def cycle_length_table(shortest: dict) -> list[dict]:
    """Per (rope, N, p): traces whose minimal cycle length is p (p = 0: no cycle), and
    their share of the traces."""
    rows = []
    for (rope, ngram), p in shortest.items():
        lengths, counts = np.unique(p, return_counts=True)
        rows += [{"rope": rope, "N": ngram, "length": int(q), "count": int(c),
                  "share": float(c / len(p))} for q, c in zip(lengths, counts)]
    return rows


def attractor_table(traces: dict, shortest: dict, top: int) -> list[dict]:
    """Per RoPE setting, pooled over N: the `top` tokens found in the most terminal cycles,
    with that number of traces, its share of the looping traces, and how many of those
    cycles are the fixed point of that token alone."""
    rows = []
    for rope in ROPES:
        cycles = [c for key, t in traces.items() if key[0] == rope
                  for c in terminal_cycles(t, shortest[key])]
        members = Counter(int(v) for c in cycles for v in set(c.tolist()))
        fixed = Counter(int(c[0]) for c in cycles if len(c) == 1)
        rows += [{"rope": rope, "rank": rank, "token": token, "traces": count,
                  "share": count / len(cycles), "fixed_point": fixed[token]}
                 for rank, (token, count) in enumerate(members.most_common(top), 1)]
    return rows


def _pooled(rows: list[dict], rope: bool) -> tuple[int, int]:
    """(looping traces, traces) of one RoPE setting, pooled over N."""
    sel = [r for r in rows if r["rope"] == rope]
    return sum(r["looping"] for r in sel), sum(r["traces"] for r in sel)


def findings(run: Run) -> list[Finding]:
    loops = run.read_table("loops")
    out = []
    for rope in ROPES:
        looping, total = _pooled(loops, rope)
        per_n = ", ".join(f"N={r['N']}: {r['loop_share']:.2f}" for r in loops
                          if r["rope"] == rope)
        out.append(Finding(
            NAME, f"an untrained transformer loops: most greedy traces end in a cycle "
                  f"repeated >= {run.config['repeats']} times ({figstyle.rope_label(rope)})",
            f"{looping}/{total} traces loop ({per_n})", looping / total > 0.5))
    (a, n_a), (b, n_b) = (_pooled(loops, rope) for rope in ROPES)
    p_a, p_b = a / n_a, b / n_b
    se = np.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    out.append(Finding(
        NAME, "looping does not depend on the positional encoding: the loop share with RoPE "
              "off is within 2 standard errors of the share with RoPE on",
        f"{p_a:.2f} on vs {p_b:.2f} off (difference {p_a - p_b:+.2f}, 2 s.e. = {2 * se:.2f})",
        bool(abs(p_a - p_b) <= 2 * se)))
    lengths = run.read_table("cycle_lengths")
    attractors = run.read_table("attractors") if a + b else []
    for rope in ROPES:
        counts = Counter()
        for r in lengths:
            if r["rope"] == rope and r["length"] > 0:
                counts[r["length"]] += r["count"]
        looping = sum(counts.values())
        common = ", ".join(f"p={p}: {c / looping:.2f}" for p, c in counts.most_common(3))
        lead = [r for r in attractors if r["rope"] == rope][:1]
        token = (f"; token {lead[0]['token']} is in {lead[0]['share']:.2f} of the terminal "
                 "cycles" if lead else "")
        out.append(Finding(
            NAME, f"minimal cycle lengths of the looping traces and the dominant attractor "
                  f"({figstyle.rope_label(rope)})", (common or "no trace loops") + token, None))
    return out


def figures(run: Run):
    return [*_histograms(run), *_loop_shares(run)]


def length_bins(top: int) -> list[tuple[int, int]]:
    """Bins [lo, hi] of minimal cycle lengths: none (0), 1, 2, 3, 4, then 5–8, 9–16, ... up
    to the bin that holds `top`."""
    bins = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    while bins[-1][1] < top:
        bins.append((bins[-1][1] + 1, 2 * bins[-1][1]))
    return bins


def _histograms(run: Run):
    """Share of traces by minimal cycle length (binned), one panel per N, RoPE on vs off."""
    rows = run.read_table("cycle_lengths")
    ngrams = sorted({r["N"] for r in rows})
    bins = length_bins(max(r["length"] for r in rows))
    labels = ["none" if hi == 0 else f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in bins]
    x = np.arange(len(bins))
    fig, axes = figstyle.figure(ncols=len(ngrams), width=figstyle.FULL, aspect=0.9,
                                sharey=True)
    for ax, ngram in zip(axes[0], ngrams):
        for shift, rope in zip((-0.2, 0.2), ROPES):
            sel = [r for r in rows if r["rope"] == rope and r["N"] == ngram]
            share = [sum(r["share"] for r in sel if lo <= r["length"] <= hi) for lo, hi in bins]
            ax.bar(x + shift, share, 0.4, color=figstyle.ROPE_COLOURS[rope],
                   label=figstyle.rope_label(rope))
        ax.set_xticks(x, labels, rotation=90 if len(bins) > 6 else 0)
        ax.set_title(f"N = {ngram}")
        ax.set_xlabel("minimal cycle length p")
    axes[0][0].set_ylabel("share of traces")
    axes[0][-1].legend(loc="upper right")
    return figstyle.save(fig, run.figures, "e1_cycle_lengths")


def _loop_shares(run: Run):
    """Loop share (and, hatched, the fixed-point share) per N, RoPE on vs off."""
    rows = run.read_table("loops")
    ngrams = sorted({r["N"] for r in rows})
    fig, axes = figstyle.figure(aspect=0.7)
    ax = axes[0][0]
    x = np.arange(len(ngrams))
    for shift, rope in zip((-0.2, 0.2), ROPES):
        sel = {r["N"]: r for r in rows if r["rope"] == rope}
        colour = figstyle.ROPE_COLOURS[rope]
        ax.bar(x + shift, [sel[N]["loop_share"] for N in ngrams], 0.4, color=colour,
               label=figstyle.rope_label(rope))
        ax.bar(x + shift, [sel[N]["fixed_point_share"] for N in ngrams], 0.4, color="none",
               edgecolor="white", hatch="///", linewidth=0)
    ax.set_xticks(x, [f"N = {N}" for N in ngrams])
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("share of traces that loop\n(hatched: fixed point)")
    ax.legend(loc="upper center", ncols=2)
    return figstyle.save(fig, run.figures, "e1_loop_share")
