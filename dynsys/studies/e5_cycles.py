"""E5: the terminal cycle of a real greedy trace against the periodic orbits of f_P.

For a prompt P of length n and its greedy trace x_1..x_G: the trace's eventual period p and
onset (first index of its periodic suffix, the period repeated >= 3 times), and, under the
Markov map f_P (= f_{P,0}: the next token at position n), the tail length and cycle length of
x_1. If generation were exactly f_P, the trace would be the orbit of x_1: onset = tail, p =
cycle length, and the terminal cycle {x_onset, .., x_{onset+p−1}} a periodic orbit of f_P
(f_P(x_i) = x_{i+1} around it). Without RoPE the argument predicts exactly this more and more
often as n grows; with RoPE its object is the time-dependent f_{P,t−1}, and f_P is measured as
its approximation.

Per share (SHARES) and RoPE setting the claim is that, at the largest n, the share of traces
is above 1/2 (its exact 95% interval above 1/2) and above the share at the smallest n (the
95% interval of the difference above 0; a tie never holds). Each part is decided by
dynsys.stats.decide on its interval, and only on cells of at least CELL traces: fewer cannot
measure a share to ±0.1, and their verdict is inconclusive whatever the data.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
from matplotlib import ticker
from matplotlib.lines import Line2D

from dynsys import figstyle
from dynsys.data.prompts import PROMPT_KINDS, make_prompt
from dynsys.decode import generate, prefill
from dynsys.dynamics.compare import compare
from dynsys.dynamics.markov import markov_map
from dynsys.io import load
from dynsys.nn.cache import bucket
from dynsys.runs import Run
from dynsys.stats import (
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    Evidence,
    difference_interval,
    interval_test,
    proportion_test,
)
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings

NAME = "e5"
TITLE = "Terminal cycles of real traces vs periodic orbits of the Markov map"
ROPES = (True, False)
SCALARS = ("trace_period", "trace_onset", "map_tail", "map_cycle", "cycle_is_orbit",
           "first_divergence")
SHARES = {"cycle_is_orbit": "terminal cycle is an orbit of $f_P$",
          "period_is_cycle": "period = cycle length",
          "onset_is_tail": "onset = tail"}
# share → whether one trace (a row of the cycles table) counts
HITS = {"cycle_is_orbit": lambda r: bool(r["cycle_is_orbit"]),
        "period_is_cycle": lambda r: r["trace_period"] == r["map_cycle"],
        "onset_is_tail": lambda r: r["trace_onset"] == r["map_tail"]}
# Traces per cell (RoPE setting, n) for every exact 95% interval of a share to have
# half-width <= 0.1 (the widest is at k/n = 1/2; 103 traces give 0.1002). A cell with fewer
# decides nothing: its claims are inconclusive.
CELL = 104


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "tiny"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset
    lengths: tuple[int, ...] = (64, 256, 1024, 4096, 16384)  # prompt lengths n
    G: int = 256  # greedy tokens per prompt
    prompts: int = 52  # random prompts per (rope, kind, n): 2 kinds fill a CELL
    ngram: int = 3
    kinds: tuple[str, ...] = ("ngram", "random")
    repeats: int = 3  # the trace's period must repeat at least this many times

    # G >= 2: a comparison needs a transition
    LIMITS = {"seed": 0, "lengths": 1, "G": 2, "prompts": 1, "ngram": 1,
              "kinds": PROMPT_KINDS, "repeats": 2}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.lengths) + self.G


# The small scale's cells hold 6 traces, not CELL: 4 · 104 units at 0.3–0.7 s each (after
# about 20 s of compiling) would take some 200 s on 2 cores. Its verdicts are inconclusive.
SCALES = {"small": Config(lengths=(64, 1024), G=96, prompts=3), "paper": Config()}


def unit_name(rope: bool, kind: str, n: int, seed: int) -> str:
    return f"rope{int(rope)}_{kind}_n{n}_s{seed}"


def _units(config: Config) -> list[tuple[bool, str, int, int]]:
    return list(itertools.product(ROPES, config.kinds, config.lengths, range(config.prompts)))


def cycle_unit(model, prompt: np.ndarray, G: int, repeats: int, capacity: int) -> dict:
    """The greedy trace of `prompt`, the full map f_P (next, margin) and the comparison's
    loop-level numbers. The prompt's cache has `capacity` slots: one capacity for every n
    compiles the map and the comparison once per RoPE setting."""
    trace = np.asarray(generate(model, prompt[None], G).tokens)[0]
    prefix = prefill(model, prompt, capacity=capacity)
    fmap = markov_map(model, prompt, prefix=prefix, progress=False)
    gap = compare(model, prompt, trace, fmap, memory_ks=(), repeats=repeats, prefix=prefix)
    return {"prompt": prompt, "trace": trace, "map_next": fmap.next, "map_margin": fmap.margin,
            "agreement": gap.agreement, **{k: getattr(gap, k) for k in SCALARS}}


def run(run: Run, config: Config, progress: bool = True) -> None:
    model = functools.cache(lambda: load(config.model, seed=config.seed))  # only if needed

    def compute(rope: bool, kind: str, n: int, seed: int) -> dict:
        prompt = make_prompt(kind, model().config.vocab_size, n, seed, config.ngram)
        return cycle_unit(model().with_rope(rope), prompt, config.G, config.repeats,
                          bucket(max(config.lengths)))

    run.fill(_units(config), unit_name, compute, "E5 trace cycles vs orbits", progress)
    rows = prompt_table(run, config)
    run.write_table("cycles", rows)
    run.write_table("summary", summary_table(rows))


def prompt_table(run: Run, config: Config) -> list[dict]:
    """Per prompt (rope, kind, n, seed): the stored comparison numbers and agreement."""
    rows = []
    for rope, kind, n, seed in _units(config):
        unit = run.load(unit_name(rope, kind, n, seed))
        rows.append({"rope": rope, "kind": kind, "n": n, "seed": seed,
                     **{k: unit[k].item() for k in (*SCALARS, "agreement")}})
    return rows


def _mean(values) -> float:
    return float(np.mean(values))


def summary_table(rows: list[dict]) -> list[dict]:
    """Per (rope, n), pooled over prompt kinds: the share of traces that loop, whose terminal
    cycle is a periodic orbit of f_P, whose period equals the cycle length of x_1 under f_P,
    and whose onset equals its tail."""
    out = []
    for rope in ROPES:
        for n in sorted({r["n"] for r in rows if r["rope"] == rope}):
            sel = [r for r in rows if r["rope"] == rope and r["n"] == n]
            out.append({
                "rope": rope, "n": n, "prompts": len(sel),
                "looping": _mean([r["trace_period"] > 0 for r in sel]),
                **{key: _mean([HITS[key](r) for r in sel]) for key in SHARES},
                "agreement": _mean([r["agreement"] for r in sel])})
    return out


def _both(share: Evidence, gain: Evidence) -> Evidence:
    """The test of "share and gain" (an intersection-union test): fails if either fails,
    holds if both hold; its p-value is the larger of the two (valid for the conjunction), or
    the failing one's; the share's estimate and interval are reported."""
    verdicts = (share.verdict, gain.verdict)
    verdict = FAILS if FAILS in verdicts else HOLDS if verdicts == (HOLDS, HOLDS) \
        else INCONCLUSIVE
    p = min(t.p for t in (share, gain) if t.verdict == FAILS) if verdict == FAILS \
        else max(share.p, gain.p)
    return dataclasses.replace(share, p=p, verdict=verdict)


def findings(run: Run) -> list[Finding]:
    """Per share and RoPE setting: the share at the largest n is above 1/2 and above the
    share at the smallest n, each on its 95% interval; inconclusive on cells under CELL."""
    rows = run.read_table("cycles")
    out = []
    for key, claim in SHARES.items():
        for rope in ROPES:
            hits = {}  # n → (traces that count, traces)
            for r in rows:
                if r["rope"] == rope:
                    k, m = hits.get(r["n"], (0, 0))
                    hits[r["n"]] = (k + HITS[key](r), m + 1)
            if not hits:
                continue
            lo, hi = min(hits), max(hits)
            (k_lo, m_lo), (k_hi, m_hi) = hits[lo], hits[hi]
            test = _both(proportion_test(k_hi, m_hi, 0.5), interval_test(
                k_hi / m_hi - k_lo / m_lo,
                functools.partial(difference_interval, k_hi, m_hi, k_lo, m_lo),
                m_hi + m_lo, 0.0, "above"))
            share, diff = test.interval, difference_interval(k_hi, m_hi, k_lo, m_lo)
            sized = min(m_lo, m_hi) >= CELL
            which = "f_P" + (" (= f_{P,0}; the theorem's map with RoPE is f_{P,t−1})"
                             if rope else "")
            out.append(Finding(
                NAME, f"real traces follow {which} more and more as n grows: "
                      f"{claim.replace('$', '')} in more than half of the traces at n={hi}, and "
                      f"in more than at n={lo} ({figstyle.rope_label(rope)})",
                f"n={hi}: {k_hi}/{m_hi} = {k_hi / m_hi:.2f} [{share[0]:.2f}, {share[1]:.2f}]; "
                f"n={lo}: {k_lo}/{m_lo} = {k_lo / m_lo:.2f}; difference "
                f"{k_hi / m_hi - k_lo / m_lo:+.2f} [{diff[0]:+.2f}, {diff[1]:+.2f}]"
                + ("" if sized else f"; cells under {CELL} traces decide nothing"),
                test.verdict if sized else INCONCLUSIVE, test=test if sized else None))
    return out


def figures(run: Run):
    return [*_scatter(run), *_shares(run)]


def _counts(rows: list[dict], x: str, y: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (x, y) pairs of `rows` and how many rows have each."""
    pairs, counts = np.unique([(r[x], r[y]) for r in rows], axis=0, return_counts=True)
    return pairs[:, 0], pairs[:, 1], counts


def _scatter(run: Run):
    """Onset vs tail (top) and period vs cycle length (bottom), one column per n; marker
    area ∝ number of prompts, RoPE on and off shifted apart; the diagonal is f_P exactly."""
    rows = run.read_table("cycles")
    lengths = sorted({r["n"] for r in rows})
    panels = (("map_tail", "trace_onset", "tail of $x_1$ under $f_P$", "trace onset"),
              ("map_cycle", "trace_period", "cycle length of $x_1$", "trace period"))
    fig, axes = figstyle.figure(ncols=len(lengths), nrows=2, width=figstyle.FULL, aspect=0.75)
    for col, n in enumerate(lengths):
        for row, (x, y, xlabel, ylabel) in enumerate(panels):
            ax = axes[row][col]
            top = max(max(r[x], r[y]) for r in rows if r["n"] == n) + 1
            ax.plot([0, top], [0, top], color="0.6", linewidth=0.6, zorder=0)
            for shift, rope in zip((-0.01, 0.01), ROPES):
                sel = [r for r in rows if r["n"] == n and r["rope"] == rope]
                xs, ys, counts = _counts(sel, x, y)
                ax.scatter(xs + shift * top, ys, s=8 * counts, alpha=0.6, linewidths=0,
                           color=figstyle.ROPE_COLOURS[rope])
            ax.set_xlabel(xlabel)
            if col == 0:
                ax.set_ylabel(ylabel)
            if row == 0:
                ax.set_title(f"n = {n}")
    fig.legend(handles=[Line2D([], [], marker="o", linestyle="", alpha=0.6,
                               label=figstyle.rope_label(rope),
                               color=figstyle.ROPE_COLOURS[rope]) for rope in ROPES],
               loc="outside upper center", ncols=2, title="marker area ∝ number of prompts")
    return figstyle.save(fig, run.figures, "e5_scatter")


def _shares(run: Run):
    """Each summary share against n, one panel per share, RoPE on vs off: points with exact
    95% intervals (no lines: the n are separate experiments), n prompts per point."""
    rows = run.read_table("summary")
    lengths = sorted({r["n"] for r in rows})
    fig, axes = figstyle.figure(ncols=len(SHARES), width=figstyle.FULL, aspect=0.8,
                                sharey=True)
    for ax, (key, label) in zip(axes[0], SHARES.items()):
        for shift, rope in zip((-0.08, 0.08), ROPES):
            sel = sorted((r for r in rows if r["rope"] == rope), key=lambda r: r["n"])
            figstyle.proportions(ax, [r["n"] * 2.0 ** shift for r in sel],
                                 [round(r[key] * r["prompts"]) for r in sel],
                                 [r["prompts"] for r in sel], figstyle.ROPE_COLOURS[rope],
                                 figstyle.rope_label(rope), show_n=False)
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("prompt length n")
        ax.set_title(f"{label}\n({figstyle.n_text(r['prompts'] for r in rows)} prompts per "
                     "point)")
    axes[0][0].set_ylabel("share of traces\n(95% exact interval)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return figstyle.save(fig, run.figures, "e5_shares")
