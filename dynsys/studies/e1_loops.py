"""E1: an untrained transformer falls into loops, with RoPE and without (H. Fan's experiment).

A randomly initialised model (Hugging Face initialisation), once with RoPE and once with RoPE
replaced by the identity (same weights), continues prompts made of a random N-gram repeated
(N = 1..4) by greedy decoding. For each trace x_1..x_G: the minimal cycle length (the smallest
p whose last k·p tokens are p-periodic, k = `repeats`; 0: the trace does not loop), the
terminal cycle {x_{G−p+1}, .., x_G}, the onset and period of its periodic suffix
(dynsys.dynamics.traces.periodicity), and its loop timeline (loop_segments: the loops in
order, each >= k copies of its smallest period).

Any memory-1 map on V loops within its tail + cycle, about sqrt(π|V|/2) steps for a uniform
random one, so that a trace loops says nothing by itself. The claims, each decided by
dynsys.stats.decide on an exact interval against a threshold fixed here before the run:

1. the traces end in shorter cycles than the orbits of a uniform random map on V, read the
   same way (the null, `random_map_null`): more than the null's share of them end in a cycle
   no longer than the null's median. Hub tokens alone shorten cycles, so claims 1 and 2 are
   also tested against a null that keeps them: orbits of f_P∘σ (σ a uniform permutation:
   f_P's in-degrees, random wiring; `indegree_orbit_null`) for the first `maps` prompts of
   each N and RoPE setting. The argument predicts it: decoding follows a memory-1
   map, and those maps have far fewer cyclic points than a uniform random one (E4);
2. they settle into their final loop sooner than such an orbit: onset + period (= tail +
   cycle length for an orbit) is at most the null's median in more than the null's share.
   The argument predicts it in its regime (G ≪ n), where a trace is the orbit of one map
   with few cyclic points; a trace that leaves its loop for another settles late;
3. looping does not depend on the positional encoding: on the same prompts, the loop shares
   with RoPE on and off differ by less than MARGIN, and so do the shares of traces that end
   in a fixed point (the shortest terminal cycle, where RoPE's effect shows first; paired
   TOSTs; McNemar's test and the TOST's power at no difference alongside);
4. H. Fan's observation of the loop timeline: most traces start with a uni-gram loop
   (share > MOST) ...
5. ... and move on to longer loops: in most traces the last loop has a longer period than
   the first. A memory-1 map keeps its first loop for ever, so this measures how far the
   traces are from the argument's regime.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections import Counter

import numpy as np
from matplotlib.patches import Patch

from dynsys import figstyle
from dynsys.data import prompts
from dynsys.decode import generate
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.nullmodel import indegree_orbit_null, random_map_null
from dynsys.dynamics.traces import Periodicity, loop_segments, periodicity_batch
from dynsys.io import load, load_config
from dynsys.runs import Run
from dynsys.stats import equivalence_power, mcnemar, paired_equivalence, proportion_test
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings
from dynsys.studies.training import length_bins

NAME = "e1"
TITLE = "Loops of an untrained model: minimal cycle lengths, RoPE on and off"
ROPES = (True, False)
MARGIN = 0.1  # claim 3: equivalence margin of the paired difference of loop shares
MOST = 0.5  # claims 4 and 5: "most traces" is a share above this
TIMELINE_ROWS = 2  # traces per N drawn in the timeline figure
# Period bins of the timeline figure, coloured with the palette after the two RoPE colours.
PERIOD_BINS = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 8), (9, None))


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
    # prompts per (N, RoPE) whose full map f_P is computed for the in-degree-matched null (0:
    # none; a map costs V forward rows, about 53 min for llama-3.2-1b on 2 CPU cores)
    maps: int = 1
    shuffles: int = 50  # draws of f∘σ per map, each one orbit from a uniform start

    # A prompt holds its N-gram at least twice (shorter, it is not repeated at all).
    LIMITS = {"seed": 0, "ngrams": 1, "length": lambda c: 2 * max(c.ngrams), "new_tokens": 1,
              "prompts": 1, "batch": 1, "repeats": 2, "top": 1, "maps": 0, "shuffles": 1}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return self.length + self.new_tokens


# Claim 3's paired TOST (margin 0.1, α = 0.05, no true difference) has power
# 2Φ(0.1·sqrt(n/ψ) − z_0.95) − 1 >= 0.8 with n >= ψ·((z_0.95 + z_0.90)/0.1)² = 857·ψ pairs,
# ψ the share of discordant pairs (loops with one setting only). The small scale's 4 · 32 = 128
# pairs reach it for ψ <= 0.15 (loop shares >= 0.93 on both sides), at about 15 s of greedy
# decoding on 2 cores; the paper's 1024 pairs for every ψ. 128 traces per RoPE setting give
# the exact intervals of claims 1, 2, 4 and 5 a half-width of at most 0.09.
SCALES = {"small": Config(model="tiny", length=256, new_tokens=256, prompts=32, batch=32,
                          maps=4),
          "paper": Config()}


def unit_name(rope: bool, ngram: int, batch: int) -> str:
    return f"rope{int(rope)}_N{ngram}_b{batch}"


def _batches(config: Config) -> range:
    return range(-(-config.prompts // config.batch))


def _units(config: Config) -> list[tuple[int, int, bool]]:
    """(N, batch index, rope) in computing order: RoPE on and off of a batch side by side."""
    return list(itertools.product(config.ngrams, _batches(config), ROPES))


def make_prompt(config: Config, vocab_size: int, ngram: int, j: int) -> np.ndarray:
    """Prompt j [length]: the N-gram drawn from seed (config.seed, N, j), repeated to
    `length` tokens."""
    return prompts.repeated_ngram(
        vocab_size, ngram, config.length,
        int(np.random.SeedSequence((config.seed, ngram, j)).generate_state(1)[0]))


def make_prompts(config: Config, vocab_size: int, ngram: int, batch: int) -> np.ndarray:
    """Prompts [B, length] of batch `batch` (make_prompt)."""
    rows = range(batch * config.batch, min(config.prompts, (batch + 1) * config.batch))
    return np.stack([make_prompt(config, vocab_size, ngram, j) for j in rows])


def map_name(rope: bool, ngram: int, j: int) -> str:
    return f"map_rope{int(rope)}_N{ngram}_p{j}"


def _map_units(config: Config) -> list[tuple[int, int, bool]]:
    """(N, prompt, rope) of the maps behind the in-degree-matched null."""
    return list(itertools.product(config.ngrams, range(min(config.maps, config.prompts)),
                                  ROPES))


def run(run: Run, config: Config, progress: bool = True) -> None:
    model = functools.cache(lambda: load(config.model, seed=config.seed))  # only if needed

    def compute(ngram: int, batch: int, rope: bool) -> dict:
        batch_prompts = make_prompts(config, model().config.vocab_size, ngram, batch)
        return {"prompts": batch_prompts,
                "traces": generate(model().with_rope(rope), batch_prompts,
                                   config.new_tokens).tokens}

    run.fill(_units(config), lambda ngram, batch, rope: unit_name(rope, ngram, batch), compute,
             "E1 untrained loops", progress)

    def compute_map(ngram: int, j: int, rope: bool) -> dict:
        prompt = make_prompt(config, model().config.vocab_size, ngram, j)
        return {"next": markov_map(model().with_rope(rope), prompt, progress=False).next}

    run.fill(_map_units(config), lambda ngram, j, rope: map_name(rope, ngram, j), compute_map,
             "E1 maps for the in-degree null", progress)
    write_tables(run, config, load_config(config.model).vocab_size)


def write_tables(run: Run, config: Config, vocab_size: int) -> None:
    """The tables of the stored traces, and the null of a uniform random map on vocab_size
    tokens. `segments` and `attractors` are absent when no trace loops."""
    traces = stored_traces(run, config)
    found = {key: periodicity_batch(t, config.repeats) for key, t in traces.items()}
    shortest = {key: f.shortest for key, f in found.items()}
    timelines = {key: [loop_segments(x, config.repeats) for x in t]
                 for key, t in traces.items()}
    run.write_table("loops", loop_table(shortest))
    run.write_table("cycle_lengths", cycle_length_table(shortest))
    run.write_table("traces", trace_table(found, timelines))
    nulls = null_table(random_map_null(vocab_size, config.new_tokens, config.repeats),
                       config.new_tokens, {"null": "uniform", "rope": "", "vocab_size": vocab_size,
                                           "maps": 0})
    for rope in ROPES if config.maps else ():
        maps = np.stack([run.load(map_name(rope, ngram, j))["next"]
                         for ngram, j, r in _map_units(config) if r == rope])
        nulls += null_table(indegree_orbit_null(maps, config.new_tokens, config.repeats,
                                                config.shuffles, config.seed),
                            config.new_tokens, {"null": "indegree", "rope": rope,
                                                "vocab_size": vocab_size, "maps": len(maps)})
    run.write_table("null", nulls)
    for name, rows in (("segments", segment_table(timelines)),
                       ("attractors", attractor_table(traces, shortest, config.top))):
        if rows:
            run.write_table(name, rows)


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


def trace_table(found: dict[tuple[bool, int], Periodicity], timelines: dict) -> list[dict]:
    """Per trace (rope, N, prompt): minimal cycle length, period and onset of its periodic
    suffix (0, 0, G if it does not loop), its number of loops, and the periods of its first
    and last loop (0 if none)."""
    rows = []
    for (rope, ngram), f in found.items():
        for j, loops in enumerate(timelines[rope, ngram]):
            rows.append({"rope": rope, "N": ngram, "prompt": j, "shortest": int(f.shortest[j]),
                         "period": int(f.period[j]), "onset": int(f.onset[j]),
                         "loops": len(loops),
                         "first_period": loops[0].period if loops else 0,
                         "last_period": loops[-1].period if loops else 0})
    return rows


def segment_table(timelines: dict) -> list[dict]:
    """Per loop of every trace (rope, N, prompt), in order: start, end, period, repeats."""
    return [{"rope": rope, "N": ngram, "prompt": j, **loop._asdict()}
            for (rope, ngram), rows in timelines.items()
            for j, loops in enumerate(rows) for loop in loops]


def null_table(laws: dict[str, np.ndarray], G: int, labels: dict) -> list[dict]:
    """Per statistic of a null's laws ({"cycle", "rho"}, indexed 0..G; `random_map_null`,
    `indegree_orbit_null`): its median m (the least value with P(<= m) >= 1/2; an orbit not
    seen to loop counts as longer than any, and m = G when most are not) and P(<= m), the
    thresholds of claims 1 and 2, with `labels` (which null) on every row."""
    rows = []
    for statistic, law in laws.items():
        cdf = np.cumsum(law)
        median = int(np.argmax(cdf >= 0.5)) if cdf[-1] >= 0.5 else G  # G: any loop counts
        rows.append({**labels, "statistic": statistic, "median": median,
                     "share": float(cdf[median]), "G": G})
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


def _optional_table(run: Run, name: str) -> list[dict]:
    """A table that is absent when no trace loops (segments, attractors): its rows, or []."""
    return run.read_table(name) if run.has_table(name) else []


def _proportion(claim: str, hits: np.ndarray, threshold: float, detail: str) -> Finding:
    """The claim "the share of traces with `hits` is above `threshold`", decided on its exact
    (Clopper–Pearson) 95% interval."""
    test = proportion_test(int(hits.sum()), hits.size, threshold)
    lo, hi = test.interval
    return Finding(NAME, claim, f"{int(hits.sum())}/{hits.size} = {test.estimate:.2f} "
                                f"[{lo:.2f}, {hi:.2f}]; {detail}", test.verdict, test=test)


ROPE_OUTCOMES = {"loop": ("traces that loop", lambda shortest: shortest > 0),
                 "fixed point": ("traces that end in a fixed point",
                                 lambda shortest: shortest == 1)}


def _rope_finding(rows: dict, outcome: str) -> Finding:
    """Claim 3 on one outcome (ROPE_OUTCOMES): paired TOST of the outcome on the same (N,
    prompt), RoPE on vs off, with the test's power at no difference for the observed rate of
    discordant pairs (dynsys.stats.equivalence_power)."""
    name, indicator = ROPE_OUTCOMES[outcome]
    pairs = sorted(key for key in rows if key[0] and (False, *key[1:]) in rows)
    on = np.array([indicator(rows[key]["shortest"]) for key in pairs])
    off = np.array([indicator(rows[(False, *key[1:])]["shortest"]) for key in pairs])
    test = paired_equivalence(on, off, MARGIN)
    lo, hi = test.interval
    discordant = int((on != off).sum())
    power = equivalence_power(test.n, discordant / test.n, MARGIN)
    return Finding(
        NAME, f"the positional encoding does not change the share of {name}: on the same "
              f"prompts, RoPE on and off differ by less than {MARGIN} (paired TOST of Tango's "
              f"score tests, 90% interval)",
        f"{on.mean():.2f} on vs {off.mean():.2f} off; paired difference {test.difference:+.3f} "
        f"[{lo:.3f}, {hi:.3f}], n = {test.n} pairs, {discordant} discordant "
        f"(McNemar p = {mcnemar(on, off):.2f}); power at no difference with this discordance "
        f"{power:.2f}", test.verdict, test=test.test)


def _claims(null: dict, repeats: int, vs: str) -> list[tuple[str, object, float, object]]:
    """Claims 1, 2, 4 and 5 as (claim, hits, threshold, detail): the claim is that the share
    of traces t with hits(t) is above threshold; detail(t) says more about the sample.
    Claims 1 and 2 compare with the null `null` ({statistic: row of the null table}), which
    `vs` names."""
    cycle, rho = null["cycle"], null["rho"]
    return [
        ((f"the traces end in shorter cycles than {vs} (memory-1 null): more than the null's "
          f"{cycle['share']:.2f} of them end in a cycle of length <= {cycle['median']}, its "
          "median"),
         lambda t: (t["shortest"] > 0) & (t["shortest"] <= cycle["median"]), cycle["share"],
         lambda t: f"{int((t['shortest'] > 0).sum())} loop at all"),
        ((f"the traces settle into their final loop sooner than {vs}: onset + period (tail + "
          f"cycle length for an orbit) <= {rho['median']}, the null's median, in more than its "
          f"{rho['share']:.2f}"),
         lambda t: (t["period"] > 0) & (t["onset"] + t["period"] <= rho["median"]),
         rho["share"],
         lambda t: f"median onset + period {np.median(t['onset'] + t['period']):.0f}"),
        ((f"the first loop is a uni-gram loop (H. Fan): in most traces the first loop (>= "
          f"{repeats} copies of its period) has period 1"),
         lambda t: t["first_period"] == 1, MOST,
         lambda t: f"{int((t['loops'] > 0).sum())} have a loop"),
        (("later loops are longer (H. Fan): in most traces the last loop has a longer period "
          "than the first (a memory-1 map keeps its first loop)"),
         lambda t: t["last_period"] > t["first_period"], MOST,
         lambda t: f"{int((t['loops'] > 1).sum())} have more than one loop"),
    ]


def findings(run: Run) -> list[Finding]:
    rows = {(r["rope"], r["N"], r["prompt"]): r for r in run.read_table("traces")}
    columns = ("shortest", "period", "onset", "loops", "first_period", "last_period")
    per_rope = {rope: {c: np.array([r[c] for key, r in rows.items() if key[0] == rope])
                       for c in columns} for rope in ROPES}
    nulls = run.read_table("null")
    null = {r["statistic"]: r for r in nulls if r.get("null", "uniform") == "uniform"}
    config = run.settings(Config)
    uniform = f"orbits of a uniform random map on V = {null['cycle']['vocab_size']} tokens"
    tested = [_proportion(f"{claim} ({figstyle.rope_label(rope)})", hits(per_rope[rope]),
                          threshold, detail(per_rope[rope]))
              for claim, hits, threshold, detail in _claims(null, config.repeats, uniform)
              for rope in ROPES]
    out = [*tested[:4], *(_rope_finding(rows, o) for o in ROPE_OUTCOMES), *tested[4:]]
    for rope in ROPES:  # claims 1 and 2 against the in-degree-matched null, where computed
        matched = {r["statistic"]: r for r in nulls
                   if r.get("null") == "indegree" and r["rope"] == rope}
        if matched:
            vs = (f"orbits of random maps with f_P's in-degrees (f∘σ, {matched['cycle']['maps']}"
                  f" maps x {config.shuffles} draws)")
            out += [_proportion(f"{claim} ({figstyle.rope_label(rope)})", hits(per_rope[rope]),
                                threshold, detail(per_rope[rope]))
                    for claim, hits, threshold, detail in _claims(matched, config.repeats, vs)[:2]]
    lengths = run.read_table("cycle_lengths")
    attractors = _optional_table(run, "attractors")
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
    return [*_histograms(run), *_loop_shares(run), *_timeline(run)]


def _histograms(run: Run):
    """Share of traces by minimal cycle length (binned), one panel per N, RoPE on vs off:
    points with exact 95% intervals, n traces per (RoPE, N) in the panel's title."""
    rows = run.read_table("cycle_lengths")
    ngrams = sorted({r["N"] for r in rows})
    bins = length_bins(max(r["length"] for r in rows))
    labels = ["none" if hi == 0 else f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in bins]
    x = np.arange(len(bins))
    fig, axes = figstyle.figure(ncols=len(ngrams), width=figstyle.FULL, aspect=0.9,
                                sharey=True)
    for ax, ngram in zip(axes[0], ngrams):
        totals = []
        for shift, rope in zip((-0.15, 0.15), ROPES):
            sel = [r for r in rows if r["rope"] == rope and r["N"] == ngram]
            total = sum(r["count"] for r in sel)
            counts = [sum(r["count"] for r in sel if lo <= r["length"] <= hi) for lo, hi in bins]
            figstyle.proportions(ax, x + shift, counts, [total] * len(bins),
                                 figstyle.ROPE_COLOURS[rope], figstyle.rope_label(rope),
                                 show_n=False)
            totals.append(total)
        ax.set_xticks(x, labels, rotation=90 if len(bins) > 6 else 0)
        ax.set_title(f"N = {ngram} ({figstyle.n_text(totals)})")
        ax.set_xlabel("minimal cycle length p")
    axes[0][0].set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("share of traces\n(95% exact interval)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    return figstyle.save(fig, run.figures, "e1_cycle_lengths")


def _loop_shares(run: Run):
    """The share of traces that loop (left) and that end in a fixed point (right) per N,
    RoPE on vs off: points with exact 95% intervals; n traces per point in the titles."""
    rows = run.read_table("loops")
    ngrams = sorted({r["N"] for r in rows})
    fig, axes = figstyle.figure(ncols=2, width=figstyle.FULL * 0.62, aspect=1.0, sharey=True)
    x = np.arange(len(ngrams))
    panels = (("the trace loops", lambda r: r["looping"]),
              ("ends in a fixed point (period 1)",
               lambda r: round(r["fixed_point_share"] * r["traces"])))
    for ax, (title, hits) in zip(axes[0], panels):
        for shift, rope in zip((-0.12, 0.12), ROPES):
            sel = [next(r for r in rows if r["rope"] == rope and r["N"] == N) for N in ngrams]
            figstyle.proportions(ax, x + shift, [hits(r) for r in sel],
                                 [r["traces"] for r in sel], figstyle.ROPE_COLOURS[rope],
                                 figstyle.rope_label(rope), show_n=False)
        ax.set_xticks(x, [str(N) for N in ngrams])
        ax.set_xlim(-0.5, len(ngrams) - 0.5)
        ax.set_title(f"{title}\n({figstyle.n_text(r['traces'] for r in rows)} per point)")
    fig.supxlabel("N (the prompt is a random N-gram repeated)", fontsize=8)
    axes[0][0].set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("share of traces\n(95% exact interval)")
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside upper center", ncols=2)
    return figstyle.save(fig, run.figures, "e1_loop_share")


def _period_bin(period: int) -> int:
    """The index of the PERIOD_BINS bin that holds `period`."""
    return next(i for i, (lo, hi) in enumerate(PERIOD_BINS) if lo <= period
                and (hi is None or period <= hi))


def _timeline(run: Run):
    """The loops of the first TIMELINE_ROWS traces of each N along the generated tokens, one
    row per trace, coloured by period; RoPE on and off side by side."""
    segments = _optional_table(run, "segments")
    config = run.settings(Config)
    ngrams, G = config.ngrams, config.new_tokens
    traces = [(N, j) for N in ngrams for j in range(min(TIMELINE_ROWS, config.prompts))]
    colours = figstyle.FILLS
    fig, axes = figstyle.figure(ncols=len(ROPES), width=figstyle.FULL,
                                aspect=0.1 * len(traces) + 0.2, sharey=True)
    for ax, rope in zip(axes[0], ROPES):
        for y, (N, j) in enumerate(traces):
            loops = [r for r in segments if (r["rope"], r["N"], r["prompt"]) == (rope, N, j)]
            ax.broken_barh([(r["start"], r["end"] - r["start"]) for r in loops], (y - 0.4, 0.8),
                           color=[colours[_period_bin(r["period"])] for r in loops],
                           edgecolor="white", linewidth=0.5)  # white: where one loop ends
        ax.set_xlim(0, G)
        ax.set_title(figstyle.rope_label(rope))
        ax.set_xlabel("generated token t")
        ax.grid(axis="y", visible=False)
    axes[0][0].set_yticks(range(len(traces)), [f"N={N} #{j}" for N, j in traces])
    axes[0][0].invert_yaxis()
    labels = [f"{lo}" if lo == hi else f"{lo}+" if hi is None else f"{lo}–{hi}"
              for lo, hi in PERIOD_BINS]
    fig.legend(handles=[Patch(color=c, label=f"period {label}")
                        for c, label in zip(colours, labels)],
               loc="outside lower center", ncols=len(PERIOD_BINS))
    return figstyle.save(fig, run.figures, "e1_timeline")
