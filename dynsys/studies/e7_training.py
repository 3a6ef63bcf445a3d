"""E7: loops through training (H. Fan's claim 2: pretraining strengthens looping very early,
then removes the short loops).

A model is trained from scratch (dynsys.studies.training) with checkpoints at steps 0, 1, 2,
4, ..., 512 and then every `checkpoint_every` steps. At every checkpoint, the same prompts are
continued by G greedy tokens: `prompts` prompts of `length` i.i.d. uniform token ids (the
blog's random 10-token prompts) and as many random N-grams repeated to `length` tokens, for
each N in `ngrams`. Per checkpoint and prompt kind: the histogram of minimal cycle lengths
(cycles repeated >= `repeats` times; read at the end of the trace and anywhere in it, see
training), the loop share (end reading) with its exact interval, the share of traces with no
loop, and the mean cycle length of the looping traces with a bootstrap interval. The first
`maps` random prompts also get their Markov map f_P on all of V, whose cycles, cyclic points
and largest basin are set against a uniform random mapping. The held-out loss of each
checkpoint comes from the training log. Two probes of the model itself, per checkpoint, on
`spans` windows of the held-out English text (dynsys.theory): the attention concentration of
the last token of a window of seq_len / 2 tokens (excess n·max a, score s.d., entropy / ln n:
is the test bed trivial?), and the self-reinforcement curve TP_k of Xu et al. 2022, the
probability of repeating a window of `span_length` tokens for the k-th time, k = 0..K−1 with
K = seq_len // span_length (at most 16), also for windows of i.i.d. uniform ids.

The three claims are tested on the random prompts, end reading, each by the paired difference of one
indicator between two checkpoints on the same prompts (Tango's score interval,
`dynsys.stats.paired_test`); the early peak is chosen on the even-numbered prompts and the claims
are tested on the odd-numbered ones: (a) the loop share at the early peak (the early checkpoint, 0 <
step <= EARLY · final step, with the largest loop share) exceeds the share at step 0; (b) the share
of traces caught in a cycle of length <= SHORT is lower at the final checkpoint than at the early
peak; (c) the share of traces with no loop is higher at the final checkpoint than at the early peak.
The null of each is a difference of 0; the threshold is 0. And (d), Xu et al.'s self-reinforcement
at the final checkpoint: TP_{K−1} − TP_1 > 0 for English windows (mean over windows, percentile
bootstrap interval; null 0). Its premise, a manipulation check, is that the final model is trained
(held-out loss below the unigram model's); where it fails, (d) is not testable here.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

from dynsys import figstyle
from dynsys.data import encode, english, load_tokenizer, split
from dynsys.decode import generate
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.nullmodel import compare_to_null
from dynsys.io import load
from dynsys.runs import Run
from dynsys.stats import (
    NOT_TESTABLE,
    Evidence,
    bootstrap_distribution,
    bootstrap_interval,
    bootstrap_test,
    paired_test,
    proportion_interval,
)
from dynsys.studies.finding import MANIPULATION, Finding
from dynsys.studies.training import (
    READINGS,
    SMALL,
    Training,
    bin_labels,
    bins,
    checkpoints,
    cycle_lengths,
    make_prompts,
    read_lengths,
    step_axis,
    tokenizer_dir,
    trace_table,
    write_training_tables,
)
from dynsys.theory.concentration import attention_concentration
from dynsys.theory.reinforcement import repetition_probability

NAME = "e7"
TITLE = "Loops through training: minimal cycle lengths at every checkpoint"
MAPS = "maps"  # the unit kind holding a checkpoint's Markov maps
PROBES = "probes"  # the unit kind holding a checkpoint's attention and repetition probes
SPAN_KINDS = ("english", "random")  # windows whose repetition is probed
EARLY = 0.25  # early checkpoints: 0 < step <= EARLY · final step
SHORT = 2  # a short loop: minimal cycle length 1 or 2
LEVEL = 0.95  # confidence of every interval
STATS = {"cycles": "cycles", "cyclic_nodes": "cyclic points",
         "largest_component": "largest basin"}  # orbit statistics of f_P, vs the null


@dataclasses.dataclass(frozen=True)
class Config(Training):
    prompts: int = 256  # prompts per kind, the same at every checkpoint
    length: int = 10  # prompt tokens
    ngrams: tuple[int, ...] = (1, 2, 3, 4)  # N of the repeated N-gram prompts
    G: int = 246  # greedy tokens per prompt
    repeats: int = 3  # a cycle counts when it is repeated at least this many times
    maps: int = 4  # random prompts per checkpoint whose Markov map is computed on all of V
    shuffles: int = 10  # in-degree-preserving shuffles per map
    spans: int = 32  # held-out English windows (and random ones) probed per checkpoint
    span_length: int = 12  # tokens of a repeated window

    LIMITS = {**Training.LIMITS, "prompts": 1, "length": 1, "ngrams": 1, "G": 2, "repeats": 2,
              "maps": 1, "shuffles": 0, "spans": 2, "span_length": 2,
              "seq_len": lambda c: max(c.positions(), 2 * c.span_length)}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return self.length + self.G

    def kinds(self) -> tuple[str, ...]:
        return ("random", *(f"ngram{n}" for n in self.ngrams))

    def span_repeats(self) -> int:
        """K: copies of a window in the self-reinforcement probe."""
        return min(16, self.seq_len // self.span_length)


SCALES = {"small": Config(**SMALL, prompts=64, G=64, maps=2, shuffles=5),
          "paper": Config()}


def unit_name(step: int, kind: str) -> str:
    return f"s{step:07d}_{kind}"


def units(config: Config) -> list[tuple[int, str]]:
    """(step, kind) in computing order: a checkpoint's traces, then its maps and probes."""
    return list(itertools.product(config.steps_saved(), (*config.kinds(), MAPS, PROBES)))


def probe_windows(run: Run, config: Config) -> dict[str, np.ndarray]:
    """The probes' windows: `spans` English windows of seq_len // 2 tokens (the attention
    probe), and per SPAN_KINDS `spans` windows of span_length tokens (the repetition probe),
    drawn from the held-out English text (seed) or uniform ids."""
    ids = encode(load_tokenizer(tokenizer_dir(run)),
                 split((english(),), config.held_out, config.seed)[1].documents)
    rng = np.random.default_rng([config.seed, 7])

    def windows(length: int) -> np.ndarray:
        starts = rng.choice(len(ids) - length, config.spans, replace=False)
        return np.stack([ids[s:s + length] for s in starts])

    return {"attention": windows(config.seq_len // 2), "english": windows(config.span_length),
            "random": make_prompts("random", config.vocab, config.span_length, config.spans,
                                   config.seed + 7)}


def probes(net, windows: dict[str, np.ndarray], repeats: int) -> dict[str, np.ndarray]:
    """A checkpoint's probes: attention concentration [spans, L, N] each, and TP_k [spans, K]
    per span kind."""
    found = attention_concentration(net, windows["attention"])
    return {"excess": found.excess, "score_sd": found.score_sd, "entropy": found.entropy,
            **{f"tp_{kind}": repetition_probability(net, windows[kind], repeats)
               for kind in SPAN_KINDS}}


def run(run: Run, config: Config, progress: bool = True) -> None:
    paths = dict(checkpoints(run, config, progress))
    model = functools.lru_cache(maxsize=1)(load)  # one checkpoint at a time, only if needed
    windows = functools.cache(lambda: probe_windows(run, config))

    def compute(step: int, kind: str) -> dict:
        net = model(paths[step])
        if kind == PROBES:
            return probes(net, windows(), config.span_repeats())
        if kind == MAPS:
            prompts = make_prompts("random", config.vocab, config.length, config.maps,
                                   config.seed)
            maps = [markov_map(net, p, progress=False) for p in prompts]
            return {"prompts": prompts, "next": np.stack([m.next for m in maps]),
                    "margin": np.stack([m.margin for m in maps])}
        prompts = make_prompts(kind, config.vocab, config.length, config.prompts, config.seed)
        return {"prompts": prompts, "traces": np.asarray(generate(net, prompts, config.G).tokens)}

    run.fill(units(config), unit_name, compute, "E7 traces through training", progress)
    write_training_tables(run, config)
    lengths = {(step, kind): cycle_lengths(run.load(unit_name(step, kind))["traces"],
                                           config.repeats)
               for step, kind in itertools.product(config.steps_saved(), config.kinds())}
    run.write_table("traces", trace_table(lengths, ("step", "kind")))
    run.write_table("loops", loop_table(lengths, config.seed))
    run.write_table("cycle_lengths", cycle_length_table(lengths))
    run.write_table("orbits", orbit_table(
        {step: run.load(unit_name(step, MAPS))["next"] for step in config.steps_saved()},
        config.shuffles, config.seed))
    run.write_table("probes", probe_table(
        {step: run.load(unit_name(step, PROBES)) for step in config.steps_saved()}))


def probe_table(found: dict[int, dict]) -> list[dict]:
    """Per step: the attention concentration (means over windows, layers and heads; the
    largest excess of any head) and, per span kind and k, the mean TP_k over windows."""
    rows = []
    for step, f in found.items():
        row = {"step": step, "excess": float(f["excess"].mean()),
               "max_excess": float(f["excess"].max()), "score_sd": float(f["score_sd"].mean()),
               "entropy": float(f["entropy"].mean())}
        for kind in SPAN_KINDS:
            row.update({f"tp_{kind}_{k}": float(v)
                        for k, v in enumerate(f[f"tp_{kind}"].mean(0))})
        rows.append(row)
    return rows


def loop_table(lengths: dict, seed: int) -> list[dict]:
    """Per (step, kind, reading): traces, looping traces (minimal cycle length > 0), the loop
    share and its exact (Clopper–Pearson) interval, the shares with no loop and with a short
    loop (1 <= p <= SHORT), and the mean cycle length of the looping traces with a percentile
    bootstrap interval (NaN with fewer than 2 looping traces)."""
    rows = []
    for (step, kind), found in lengths.items():
        for reading in READINGS:
            p = found[reading]
            looping = p[p > 0]
            lo, hi = proportion_interval(looping.size, p.size, LEVEL)
            mean_lo, mean_hi = (bootstrap_interval(looping, np.mean, LEVEL, seed=seed)
                                if looping.size > 1 else (np.nan, np.nan))
            rows.append({"step": step, "kind": kind, "reading": reading, "traces": p.size,
                         "looping": looping.size, "loop_share": looping.size / p.size,
                         "loop_lo": lo, "loop_hi": hi, "no_loop_share": float((p == 0).mean()),
                         "short_share": float(((p > 0) & (p <= SHORT)).mean()),
                         "mean_cycle": looping.mean() if looping.size else np.nan,
                         "mean_lo": mean_lo, "mean_hi": mean_hi})
    return rows


def cycle_length_table(lengths: dict) -> list[dict]:
    """Per (step, kind, reading, p): traces whose minimal cycle length is p (0: none) and
    their share."""
    rows = []
    for (step, kind), found in lengths.items():
        for reading in READINGS:
            values, counts = np.unique(found[reading], return_counts=True)
            rows += [{"step": step, "kind": kind, "reading": reading, "length": int(v),
                      "count": int(c), "share": c / found[reading].size}
                     for v, c in zip(values, counts)]
    return rows


def orbit_table(maps: dict[int, np.ndarray], shuffles: int, seed: int) -> list[dict]:
    """Per (step, prompt): each statistic of its f_P (STATS), the uniform random mapping's
    expectation and the mean over in-degree-preserving shuffles."""
    rows = []
    for step, nexts in maps.items():
        for j, nxt in enumerate(nexts):
            null = compare_to_null(nxt, shuffles=shuffles, seed=[seed, j])
            rows.append({"step": step, "prompt": j, "vocab": nxt.size,
                         **{k: null[k].observed for k in STATS},
                         **{f"{k}_expected": null[k].expected for k in STATS},
                         **{f"{k}_shuffled": null[k].shuffled_mean for k in STATS}})
    return rows


# --- findings ------------------------------------------------------------------------------

def _compared(name: str, before: np.ndarray, after: np.ndarray, steps: tuple[int, int],
              side: str) -> tuple[str, Evidence]:
    """(measured text, Evidence) of "the share of `name` at steps[1] is `side` that at
    steps[0]": the paired difference after − before against 0 (dynsys.stats.paired_test)."""
    test = paired_test(after, before, 0.0, side, LEVEL)
    lo, hi = test.interval
    text = (f"{name}: {before.mean():.2f} at step {steps[0]} -> {after.mean():.2f} at step "
            f"{steps[1]}; paired difference {test.estimate:+.3f} [{lo:+.3f}, {hi:+.3f}], "
            f"n={after.size} prompts")
    return text, test


def loop_findings(lengths: dict[int, np.ndarray]) -> list[Finding]:
    """Claims (a), (b), (c) of the module docstring from {step: minimal cycle length (end
    reading) of each random prompt's trace, prompts in the same order at every step}. The
    early peak is chosen on the even-numbered prompts and every claim is tested on the
    odd-numbered ones, so the choice does not bias the tests (no correction needed)."""
    steps = sorted(lengths)
    final = steps[-1]
    early = [s for s in steps if 0 < s <= EARLY * final] or steps[1:2]
    chosen = np.arange(lengths[steps[0]].size) % 2 == 0
    loops = {s: lengths[s] > 0 for s in steps}
    peak = min(early, key=lambda s: (-loops[s][chosen].mean(), s))  # earliest on ties
    held = {s: v[~chosen] for s, v in lengths.items()}
    where = (f"the peak chosen on {int(chosen.sum())} prompts, tested on the other "
             f"{int((~chosen).sum())}")
    out = []
    for claim, name, pick, steps_, side in (
            ((f"training first strengthens looping: the loop share of random prompts at the "
              f"early peak (step {peak}, the largest share of the {len(early)} checkpoints <= "
              f"{EARLY:g} x {final}) exceeds that at step 0"), "loop share",
             lambda v: v > 0, (0, peak), "above"),
            ((f"later, short loops are removed: fewer traces end in a cycle of length <= "
              f"{SHORT} at the final checkpoint than at the early peak"),
             f"cycle length <= {SHORT}", lambda v: (v > 0) & (v <= SHORT), (peak, final), "below"),
            ("more traces have no loop at the end of training than at the early peak",
             "no loop", lambda v: v == 0, (peak, final), "above")):
        measured, test = _compared(name, pick(held[steps_[0]]), pick(held[steps_[1]]),
                                   steps_, side)
        out.append(Finding(NAME, f"{claim} (null: no change; {where})", measured,
                           test.verdict, test=test))
    return out


def findings(run: Run) -> list[Finding]:
    out = loop_findings({step: p for (step, kind), p in read_lengths(
        run.read_table("traces"), ("step", "kind")).items() if kind == "random"})
    training = run.read_table("training")
    first, last = training[0], training[-1]
    unigram = run.read_table("tokens")[0]
    trained = last["heldout_loss"] < unigram["unigram_heldout_loss"]
    out.append(Finding(
        NAME, "premise: the final model is trained: its held-out loss is below the held-out "
              "loss of the unigram model (the best context-free prediction)",
        f"{first['heldout_loss']:.2f} at step 0 -> {last['heldout_loss']:.2f} at step "
        f"{last['step']} nats/token; unigram {unigram['unigram_heldout_loss']:.2f} (entropy "
        f"{unigram['unigram_entropy']:.2f})", trained, kind=MANIPULATION))
    out += probe_findings(run, first["step"], last["step"], trained)
    orbits = run.read_table("orbits")
    at = {s: [r for r in orbits if r["step"] == s] for s in (first["step"], last["step"])}
    out.append(Finding(
        NAME, "orbits of f_P (random prompts) at step 0 and at the final step, mean over "
              "prompts vs a uniform random mapping",
        "; ".join(f"{STATS[k]}: " + " -> ".join(
            f"{np.mean([r[k] for r in sel]):.1f}" for sel in at.values())
            + f" (random mapping {at[first['step']][0][f'{k}_expected']:.1f})" for k in STATS),
        None))
    return out


def probe_findings(run: Run, first: int, last: int, trained: bool = True) -> list[Finding]:
    """The test bed at step 0 and at the final step (attention concentration, no verdict),
    and claim (d): self-reinforcement of English windows at the final step ("not testable
    here" when the model is not `trained`: the premise failed)."""
    rows = {r["step"]: r for r in run.read_table("probes")}
    out = [Finding(
        NAME, "attention concentration of the last token of held-out English windows (1, 0, "
              "1 for uniform attention)",
        " -> ".join(f"step {s}: excess {rows[s]['excess']:.2f} (max {rows[s]['max_excess']:.1f})"
                    f", score s.d. {rows[s]['score_sd']:.2f}, entropy/ln n "
                    f"{rows[s]['entropy']:.2f}" for s in (first, last)), None)]
    found = reinforcement_finding(run.load(unit_name(last, PROBES))["tp_english"],
                                  run.settings(Config).seed)
    out.append(found if trained else dataclasses.replace(found, verdict=NOT_TESTABLE))
    return out


def reinforcement_finding(tp: np.ndarray, seed: int) -> Finding:
    """Claim (d) from TP_k [windows, K] of the English windows at the final step: the mean
    gain TP_{K−1} − TP_1 over windows, its percentile bootstrap interval, against 0."""
    gain = tp[:, -1] - tp[:, 1]
    test = bootstrap_test(gain.mean(), bootstrap_distribution(gain, np.mean, seed=seed),
                          gain.size, 0.0, "above", LEVEL)
    lo, hi = test.interval
    return Finding(
        NAME, "self-reinforcement (Xu et al. 2022): at the final step, the probability of "
              f"repeating an English window rises from its 2nd to its {tp.shape[1]}th "
              "occurrence (null: no change)",
        f"TP_1 {tp[:, 1].mean():.3f} -> TP_{tp.shape[1] - 1} {tp[:, -1].mean():.3f}; mean "
        f"gain {gain.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] (bootstrap), n={gain.size} windows",
        test.verdict, test=test)


# --- figures -------------------------------------------------------------------------------

def figures(run: Run):
    return [*_histograms(run), *_heatmap(run), *_curves(run), *_probes(run)]


def _probes(run: Run):
    """Left: the attention concentration against the step. Right: the self-reinforcement
    curves TP_k of a few checkpoints, English windows solid, random ones dashed."""
    rows = sorted(run.read_table("probes"), key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    fig, ((attn_ax, tp_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.6)
    attn_ax.plot(steps, [r["excess"] for r in rows], marker="o", color=figstyle.OTHERS[0],
                 label="excess n·max a (mean)")
    attn_ax.plot(steps, [r["max_excess"] for r in rows], marker="^", color=figstyle.OTHERS[1],
                 label="excess (largest head)")
    attn_ax.axhline(1, color="0.5", lw=0.8)
    attn_ax.set_yscale("log")
    attn_ax.set_ylabel("last token's attention\nover uniform")
    entropy_ax = attn_ax.twinx()
    entropy_ax.plot(steps, [r["entropy"] for r in rows], marker="s", color=figstyle.OTHERS[2],
                    label="entropy / ln n")
    entropy_ax.set_ylim(0, 1.05)
    entropy_ax.set_ylabel("entropy / ln n")
    attn_ax.legend(handles=[*attn_ax.get_lines()[:2], *entropy_ax.get_lines()], loc="best")
    step_axis(attn_ax, steps[-1])
    shown = sorted({steps[0], steps[len(steps) // 2], steps[-1]})
    for step, colour in zip(shown, figstyle.OTHERS[2:]):
        row = next(r for r in rows if r["step"] == step)
        for kind, style in zip(SPAN_KINDS, ("-", "--")):
            tp = [v for k, v in row.items() if k.startswith(f"tp_{kind}_")]
            tp_ax.plot(range(len(tp)), tp, style, marker="o", ms=2.5, color=colour,
                       label=f"step {step}, {kind}")
    tp_ax.set_xlabel("earlier copies of the window in the context (k)")
    tp_ax.set_ylabel("P(repeat the window again)")
    tp_ax.set_ylim(0, 1.02)
    tp_ax.legend(loc="best", fontsize=6)
    return figstyle.save(fig, run.figures, "e7_probes")


def _histograms(run: Run):
    """The blog's figure: one panel per checkpoint, the share of the random prompts' traces by
    minimal cycle length (binned), end and anywhere readings."""
    rows = [r for r in run.read_table("cycle_lengths") if r["kind"] == "random"]
    steps = sorted({r["step"] for r in rows})
    config = run.settings(Config)
    edges = bins(config.G, config.repeats)
    x = np.arange(len(edges))
    ncols = min(len(steps), 5)
    nrows = -(-len(steps) // ncols)
    fig, axes = figstyle.figure(ncols=ncols, nrows=nrows, width=figstyle.FULL, aspect=1.0,
                                sharex=True, sharey=True)
    for ax in axes.flat[len(steps):]:
        ax.set_visible(False)
    for ax, step in zip(axes.flat, steps):
        for shift, reading, colour in zip((-0.2, 0.2), READINGS, figstyle.OTHERS):
            sel = [r for r in rows if r["step"] == step and r["reading"] == reading]
            share = [sum(r["share"] for r in sel if lo <= r["length"] <= hi) for lo, hi in edges]
            ax.bar(x + shift, share, 0.4, color=colour, label=READINGS[reading])
        ax.set_title(f"step {step}")
        ax.set_xticks(x, bin_labels(edges), rotation=90)
    for ax in axes[-1]:
        ax.set_xlabel("minimal cycle length")
    fig.supylabel("share of traces", fontsize=8)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=2,
               title=f"minimal cycle repeated >= {config.repeats} times")
    return figstyle.save(fig, run.figures, "e7_cycle_lengths")


def _heatmap(run: Run):
    """The histograms of `_histograms` as one picture: a heat map per reading, training step
    across (one column per checkpoint, equally spaced) and minimal cycle length up, the
    colour (and the number in each cell of at least 0.05) the share of the random prompts'
    traces."""
    rows = [r for r in run.read_table("cycle_lengths") if r["kind"] == "random"]
    steps = sorted({r["step"] for r in rows})
    config = run.settings(Config)
    edges = bins(config.G, config.repeats)
    fig, axes = figstyle.figure(ncols=len(READINGS), width=figstyle.FULL, aspect=0.75,
                                sharey=True)
    for ax, (reading, title) in zip(axes[0], READINGS.items()):
        share = np.array([[sum(r["share"] for r in rows if r["step"] == step
                               and r["reading"] == reading and lo <= r["length"] <= hi)
                           for step in steps] for lo, hi in edges])
        image = ax.imshow(share, cmap="viridis", vmin=0, vmax=1, origin="lower",
                          aspect="auto")
        for (i, j), v in np.ndenumerate(share):
            if v >= 0.05:
                ax.text(j, i, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center",
                        fontsize=5, color="black" if v > 0.6 else "white")
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=90)
        ax.set_xlabel("training step (checkpoints)")
        ax.set_title(title)
        ax.grid(False)
    fig.suptitle(f"random prompts' traces by their minimal cycle repeated ≥ {config.repeats} "
                 "times", fontsize=8)
    axes[0][0].set_yticks(range(len(edges)), bin_labels(edges))
    axes[0][0].set_ylabel("minimal cycle length")
    bar = fig.colorbar(image, ax=axes[0].tolist(), location="right", shrink=0.9)
    bar.set_label("share of the random prompts' traces")
    return figstyle.save(fig, run.figures, "e7_cycle_heatmap")


def _curves(run: Run):
    """Against the training step: loop share and mean cycle length (end reading) per prompt
    kind, with their intervals; held-out loss and the unigram model's; the orbit statistics
    of f_P over the uniform random mapping's expectation."""
    loops = [r for r in run.read_table("loops") if r["reading"] == "end"]
    kinds = list(dict.fromkeys(r["kind"] for r in loops))
    fig, axes = figstyle.figure(ncols=2, nrows=2, width=figstyle.FULL, aspect=0.6, sharex=True)
    (share_ax, mean_ax), (loss_ax, orbit_ax) = axes
    for kind, colour in zip(kinds, figstyle.OTHERS):
        sel = sorted((r for r in loops if r["kind"] == kind), key=lambda r: r["step"])
        steps = [r["step"] for r in sel]
        share_ax.plot(steps, [r["loop_share"] for r in sel], marker="o", color=colour,
                      label=kind)
        share_ax.fill_between(steps, [r["loop_lo"] for r in sel], [r["loop_hi"] for r in sel],
                              color=colour, alpha=0.15, lw=0)
        mean = np.array([r["mean_cycle"] for r in sel])
        spread = np.array([[m - r["mean_lo"], r["mean_hi"] - m] for m, r in zip(mean, sel)]).T
        mean_ax.errorbar(steps, mean, np.nan_to_num(spread), marker="o", color=colour,
                         capsize=1.5, label=kind)
    share_ax.set_ylabel("share of traces that loop")
    share_ax.set_ylim(0, 1.05)
    share_ax.legend(loc="lower right", ncols=2)
    mean_ax.set_ylabel("mean cycle length\n(looping traces)")
    training = run.read_table("training")
    unigram = run.read_table("tokens")[0]
    loss_ax.plot([r["step"] for r in training], [r["heldout_loss"] for r in training],
                 marker="o", color="0.2", label="held-out loss")
    loss_ax.axhline(unigram["unigram_heldout_loss"], color="0.5", ls="--",
                    label="unigram model")
    loss_ax.set_ylabel("nats per token")
    loss_ax.legend(loc="upper right")
    orbits = run.read_table("orbits")
    steps = sorted({r["step"] for r in orbits})
    for k, colour in zip(STATS, figstyle.OTHERS[2:]):
        ratio = [np.mean([r[k] / r[f"{k}_expected"] for r in orbits if r["step"] == s])
                 for s in steps]
        orbit_ax.plot(steps, ratio, marker="s", color=colour, label=STATS[k])
    orbit_ax.axhline(1, color="0.5", lw=0.8)
    orbit_ax.set_yscale("log")
    orbit_ax.set_ylabel("f_P / random mapping")
    orbit_ax.legend(loc="best")
    for ax in axes.flat:
        step_axis(ax, steps[-1])
    for ax in axes[0]:
        ax.set_xlabel("")
    return figstyle.save(fig, run.figures, "e7_training")
