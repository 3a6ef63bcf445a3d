"""E4: orbit structure of the Markov map f_P against the random-mapping null.

f_P : V → V is a functional graph; its cycles, cyclic points, largest basin, longest cycle,
mean tail and terminal points (no preimage) are compared with a uniform random mapping of
|V| points (Flajolet–Odlyzko: ~½ ln 2|V| cycles, ~√(π|V|/2) cyclic points, largest
component ~0.758 |V|), whose 5–95% spread is sampled, and with the in-degree-preserving
shuffle f∘σ (same hubs, random wiring). Prompts: repeated N-grams and i.i.d. tokens of length
n, RoPE on and off.

The argument says only that f_P, a map of a finite set, cycles; how few cyclic points it has
is measured. Claims, per RoPE setting and prompt kind at the largest n, on T = the mean number
of cyclic points of the prompts' maps, each a Monte Carlo test at level ALPHA (`mc_pvalue`):
  uniform  T is below the uniform random mapping's: one-sided, null draws = the same mean over
           as many independent uniform random mappings of V;
  shuffle  T differs from its in-degree shuffles' (the wiring matters beyond the hubs):
           two-sided, null draws = the mean over the prompts of f∘σ, σ uniform per map.
A claim holds when the Monte Carlo p-value (1 + k)/(M + 1), valid for any number M of draws,
is at most ALPHA. A p-value above ALPHA is absence of evidence, not evidence against the claim:
the uniform claim fails only when the opposite one-sided test is significant (T above the
null's, p_other <= ALPHA), and is inconclusive otherwise; the two-sided shuffle claim cannot
fail (no equivalence margin is claimed). The exact interval of the p-value the draws estimate
is reported beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

from dynsys import figstyle
from dynsys.data.prompts import PROMPT_KINDS, make_prompt
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.nullmodel import (
    compare_to_null,
    mapping_statistics,
    random_mapping,
    random_mapping_expectations,
)
from dynsys.io import load
from dynsys.runs import Run
from dynsys.stats import FAILS, HOLDS, INCONCLUSIVE, Evidence, proportion_interval
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings

NAME = "e4"
TITLE = "Orbit structure of f_P vs the random-mapping null"

# statistic → axis label; all from dynsys.dynamics.nullmodel.mapping_statistics
STATS = {"cycles": "cycles", "cyclic_nodes": "cyclic points",
         "largest_component": "largest basin", "longest_cycle": "longest cycle",
         "tail": "mean tail", "terminal_nodes": "terminal points"}
ALPHA = 0.05  # level of each Monte Carlo test
# null → (tail of the test, what its draws are)
NULLS = {"uniform": ("lower", "a uniform random mapping"),
         "shuffle": ("two-sided", "its in-degree-preserving shuffles f∘σ")}


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "tiny"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset; seeds the null samples
    lengths: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    prompts: int = 8  # random prompts per (rope, kind, n)
    prompt_seed: int = 0  # the first prompt's seed (prompts use prompt_seed, prompt_seed + 1, ...)
    ngram: int = 3
    kinds: tuple[str, ...] = ("ngram", "random")
    shuffles: int = 20  # in-degree-preserving shuffles per map, for the maps table
    null_samples: int = 9999  # Monte Carlo draws of each null (and of the figure's spread)

    LIMITS = {"seed": 0, "lengths": 1, "prompts": 1, "prompt_seed": 0, "ngram": 1,
              "kinds": PROMPT_KINDS, "shuffles": 1, "null_samples": 1}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the token after it."""
        return max(self.lengths) + 1

    def prompt_seeds(self) -> range:
        return range(self.prompt_seed, self.prompt_seed + self.prompts)


# Small: 8 prompts per (rope, kind, n). At n = 1024 the maps have 2.5 (N-grams) and 7.6
# (i.i.d.) cyclic points against 27.9 for a uniform random mapping: p is at its floor 1/(M+1)
# with 2 prompts already. Against their shuffles (1.9 and 5.3) the two-sided p came out
# 0.10–0.16 and 0.02–0.05 with 8 prompts (0.15 and 0.02 with 4 in a pilot): the i.i.d.
# prompts' difference is at the edge of what 8 maps detect. 999 draws resolve a p-value of
# 0.05 to about ±0.02 and one at the floor to [0, 0.004]. Those numbers came from prompt seeds
# 0..7, which chose the size; the reported verdicts come from fresh seeds 1000..1007.
PILOT_SEEDS = (0, 8)  # [first, end) of the pilot's prompt seeds (recorded by run_study)
SCALES = {"small": Config(lengths=(64, 1024), prompts=8, prompt_seed=1000, shuffles=10,
                          null_samples=999),
          "paper": Config()}


def unit_name(rope: bool, kind: str, n: int, seed: int) -> str:
    return f"rope{int(rope)}_{kind}_n{n}_s{seed}"


def units(config: Config) -> list[tuple[bool, str, int, int]]:
    """Every (rope, kind, n, prompt seed) of the sweep."""
    return list(itertools.product((True, False), config.kinds, config.lengths,
                                  config.prompt_seeds()))


def null_sample(vocab_size: int, samples: int, seed: int) -> np.ndarray:
    """[samples, len(STATS)]: the statistics of uniform random mappings of vocab_size points."""
    rng = np.random.default_rng(seed)
    return np.array([[s[k] for k in STATS]
                     for s in (mapping_statistics(random_mapping(vocab_size, rng))
                               for _ in range(samples))])


def cyclic_points(maps: np.ndarray) -> np.ndarray:
    """The number of cyclic points of each map of `maps` [..., V]. A tail has fewer than V
    points, so f^(2^k) with 2^k ≥ V sends every point onto its cycle, and its image is the
    set of cyclic points (pointer doubling: k rounds)."""
    g = np.asarray(maps)
    V = g.shape[-1]
    for _ in range(max(V - 1, 1).bit_length()):
        g = np.take_along_axis(g, g, axis=-1)
    hit = np.zeros(g.shape, bool)
    np.put_along_axis(hit, g, True, axis=-1)
    return hit.sum(-1)


def null_means(draw, samples: int, chunk: int = 256) -> np.ndarray:
    """[samples]: the mean cyclic points over the maps of each draw; draw(m) gives m draws of
    the prompts' null maps, [m, prompts, V], made `chunk` at a time."""
    return np.concatenate([cyclic_points(draw(min(chunk, samples - i))).mean(-1)
                           for i in range(0, samples, chunk)])


def uniform_draws(vocab_size: int, prompts: int, rng: np.random.Generator):
    """draw(m) → m draws of `prompts` uniform random mappings of vocab_size points (f(x)
    i.i.d. uniform, as dynsys.dynamics.nullmodel.random_mapping)."""
    return lambda m: rng.integers(0, vocab_size, (m, prompts, vocab_size))


def shuffle_draws(maps: np.ndarray, rng: np.random.Generator):
    """draw(m) → m draws of f_i∘σ_i for the maps f_i [prompts, V], σ_i uniform permutations
    (as dynsys.dynamics.nullmodel.indegree_shuffle): every token keeps its in-degree."""
    return lambda m: np.take_along_axis(
        maps[None], rng.permuted(np.tile(np.arange(maps.shape[1]), (m, len(maps), 1)), axis=-1),
        axis=-1)


def mc_pvalue(observed: float, draws: np.ndarray, tail: str) -> tuple[float, tuple[float, float]]:
    """Monte Carlo p-value of `observed` against M draws of the statistic under the null:
    "lower" P(T* ≤ T), "two-sided" twice the smaller of P(T* ≤ T) and P(T* ≥ T). Returns
    (1 + k)/(M + 1) (a valid p-value for any M) and the exact (Clopper–Pearson) interval of the
    p-value k/M estimates (doubled for two-sided)."""
    k = int((draws <= observed).sum())
    if tail == "two-sided":
        k = min(k, int((draws >= observed).sum()))
    elif tail != "lower":
        raise ValueError(f"tail={tail!r} must be 'lower' or 'two-sided'")
    factor = 2 if tail == "two-sided" else 1
    M = len(draws)
    lo, hi = proportion_interval(k, M)
    return min(1.0, factor * (1 + k) / (M + 1)), (min(1.0, factor * lo), min(1.0, factor * hi))


def opposite_pvalue(observed: float, draws: np.ndarray, tail: str) -> float:
    """The Monte Carlo p-value of the tail opposite to `tail`: for "lower", P(T* ≥ T) as
    (1 + k)/(M + 1) (evidence that T is above the null's, against a "fewer" claim); for
    "two-sided", 1 (a claim of a difference has no opposite to test without a margin)."""
    return 1.0 if tail == "two-sided" else mc_pvalue(-observed, -draws, "lower")[0]


def run(run: Run, config: Config, progress: bool = True) -> None:
    model = functools.cache(lambda: load(config.model, seed=config.seed))  # only if needed

    def compute(rope: bool, kind: str, n: int, seed: int) -> dict:
        prompt = make_prompt(kind, model().config.vocab_size, n, seed, config.ngram)
        fmap = markov_map(model().with_rope(rope), prompt, progress=False)
        return {"next": fmap.next, "margin": fmap.margin}

    run.fill(units(config), unit_name, compute, "E4 Markov maps", progress)
    maps = map_table(run, config)
    vocab = maps[0]["vocab"]
    if not run.has("null"):
        rng = np.random.default_rng([config.seed, 0])
        run.save("null", stats=null_sample(vocab, config.null_samples, config.seed),
                 cyclic=null_means(uniform_draws(vocab, config.prompts, rng),
                                   config.null_samples))
    null = run.load("null")
    run.write_table("maps", maps)
    run.write_table("orbits", summary_table(maps))
    run.write_table("null", null_table(null["stats"], vocab))
    run.write_table("tests", mc_table(run, config, null["cyclic"]))


def map_table(run: Run, config: Config) -> list[dict]:
    """Per stored map: each statistic observed, and its mean over in-degree shuffles."""
    rows = []
    for rope, kind, n, seed in units(config):
        unit = run.load(unit_name(rope, kind, n, seed))
        null = compare_to_null(unit["next"], shuffles=config.shuffles, seed=seed)
        rows.append({"rope": rope, "kind": kind, "n": n, "seed": seed,
                     "vocab": unit["next"].size,
                     **{k: null[k].observed for k in STATS},
                     **{f"{k}_shuffled": null[k].shuffled_mean for k in STATS},
                     "margin_median": float(np.median(unit["margin"]))})
    return rows


def summary_table(maps: list[dict]) -> list[dict]:
    """Per (rope, kind, n, statistic): mean over prompts, its standard error, the uniform
    random mapping's expectation E, ratio = mean / E, and the in-degree shuffles' mean."""
    rows = []
    for rope, kind, n in dict.fromkeys((r["rope"], r["kind"], r["n"]) for r in maps):
        sel = [r for r in maps if (r["rope"], r["kind"], r["n"]) == (rope, kind, n)]
        expected = dataclasses.asdict(random_mapping_expectations(sel[0]["vocab"]))
        for k in STATS:
            x = np.array([r[k] for r in sel])
            rows.append({"rope": rope, "kind": kind, "n": n, "statistic": k,
                         "mean": x.mean(), "stderr": x.std(ddof=1) / np.sqrt(x.size)
                         if x.size > 1 else float("nan"),
                         "expected": expected[k], "ratio": x.mean() / expected[k],
                         "shuffled": np.mean([r[f"{k}_shuffled"] for r in sel]),
                         "vocab": sel[0]["vocab"]})
    return rows


def mc_table(run: Run, config: Config, uniform: np.ndarray) -> list[dict]:
    """Per (rope, kind, n) and null (NULLS): the mean cyclic points of the prompts' maps, the
    null draws' mean and the Monte Carlo test (mc_pvalue). `uniform`: the uniform null's
    draws (seeded by (config.seed, 0)); the shuffles are drawn here, seeded by (config.seed,
    1, cell index)."""
    rows = []
    cells = dict.fromkeys(key[:3] for key in units(config))
    for i, (rope, kind, n) in enumerate(cells):
        maps = np.stack([run.load(unit_name(rope, kind, n, s))["next"]
                         for s in config.prompt_seeds()])
        observed = float(cyclic_points(maps).mean())
        shuffled = null_means(shuffle_draws(maps, np.random.default_rng([config.seed, 1, i])),
                              config.null_samples)
        for null, draws in (("uniform", uniform), ("shuffle", shuffled)):
            p, (lo, hi) = mc_pvalue(observed, draws, NULLS[null][0])
            other = opposite_pvalue(observed, draws, NULLS[null][0])
            rows.append({"rope": rope, "kind": kind, "n": n, "null": null,
                         "tail": NULLS[null][0], "prompts": len(maps), "observed": observed,
                         "null_mean": float(draws.mean()), "draws": len(draws),
                         "p": p, "p_lo": lo, "p_hi": hi, "p_other": other})
    return rows


def null_table(stats: np.ndarray, vocab_size: int) -> list[dict]:
    """Per statistic: the expectation for a uniform random mapping of vocab_size points and
    the 5% / 95% quantiles of the sampled ones."""
    expected = dataclasses.asdict(random_mapping_expectations(vocab_size))
    lo, hi = np.quantile(stats, [0.05, 0.95], axis=0)
    return [{"statistic": k, "expected": expected[k], "sample_mean": stats[:, i].mean(),
             "q05": lo[i], "q95": hi[i], "samples": len(stats), "vocab": vocab_size}
            for i, k in enumerate(STATS)]


def _at_longest(rows: list[dict], rope: bool) -> dict[tuple[str, str], dict]:
    """(kind, statistic) → summary row at the longest n, for one RoPE setting."""
    n = max(r["n"] for r in rows)
    return {(r["kind"], r["statistic"]): r for r in rows if r["rope"] == rope and r["n"] == n}


def _share(row: dict, column: str = "mean") -> str:
    """A largest-component count as a share of V."""
    return f"{row[column] / row['vocab']:.0%}"


def findings(run: Run) -> list[Finding]:
    rows = run.read_table("orbits")
    n = max(r["n"] for r in rows)
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    out = [mc_finding(r) for r in run.read_table("tests") if r["n"] == n]
    for rope in (True, False):
        at = _at_longest(rows, rope)
        if not at:
            continue
        basin = [at[kind, "largest_component"] for kind in kinds]
        out.append(Finding(
            NAME, f"share of V in the largest attractor's basin (n={n}, "
                  f"{figstyle.rope_label(rope)}; uniform random mapping: "
                  f"{_share(basin[0], 'expected')})",
            "; ".join(f"{r['kind']}: {_share(r)}" for r in basin), None))
    on, off = _at_longest(rows, True), _at_longest(rows, False)
    if on and off:
        out.append(Finding(
            NAME, f"orbit statistics, RoPE on / off (n={n}; claim 4: looping does not depend "
                  "on the positional encoding)",
            "; ".join(f"{kind} {STATS[k]}: {on[kind, k]['mean']:.1f} / {off[kind, k]['mean']:.1f}"
                      for kind in kinds for k in ("cycles", "cyclic_nodes", "largest_component")),
            None))
    return out


def mc_finding(row: dict) -> Finding:
    """The claim of one row of the tests table: holds when p <= ALPHA, fails when the
    opposite one-sided p_other <= ALPHA, else inconclusive (module docstring)."""
    tail, null = NULLS[row["null"]]
    other = row.get("p_other", 1.0)
    verdict = HOLDS if row["p"] <= ALPHA else FAILS if other <= ALPHA else INCONCLUSIVE
    test = Evidence(row["p"], (row["p_lo"], row["p_hi"]), row["draws"], ALPHA, "below",
                min(row["p"], other), verdict)
    relation = "fewer" if tail == "lower" else "a different number of"
    return Finding(
        NAME, f"f_P has {relation} cyclic points than {null} (n={row['n']}, {row['kind']} "
              f"prompts, {figstyle.rope_label(row['rope'])}; "
              f"{'one-sided' if tail == 'lower' else tail} Monte Carlo test at level "
              f"{ALPHA:g}; measured)",
        f"{row['observed']:.1f} vs {row['null_mean']:.1f} cyclic points (mean over "
        f"{row['prompts']} maps); p = {row['p']:.2g} [{row['p_lo']:.2g}, {row['p_hi']:.2g}] "
        f"({row['draws']} draws)", verdict, test=test)


def figures(run: Run):
    rows = run.read_table("orbits")
    null = {r["statistic"]: r for r in run.read_table("null")}
    kinds = sorted({r["kind"] for r in rows})
    markers = dict(zip(kinds, "os^v"))
    styles = dict(zip(kinds, ("-", "--", ":", "-.")))
    fig, axes = figstyle.figure(ncols=3, nrows=2, width=figstyle.FULL, aspect=0.75, sharex=True)
    lengths = sorted({r["n"] for r in rows})
    for ax, k in zip(axes.flat, STATS):
        band = null[k]
        ax.axhspan(band["q05"] / band["expected"], band["q95"] / band["expected"],
                   color="0.85", lw=0, label="random mapping, 5–95%")
        ax.axhline(1, color="0.4", lw=0.8)
        for rope, kind in itertools.product((True, False), kinds):
            sel = sorted((r for r in rows if r["statistic"] == k and r["rope"] == rope
                          and r["kind"] == kind), key=lambda r: r["n"])
            if not sel:
                continue
            jitter = 0.96 if rope else 1.04  # RoPE on and off often coincide: keep both visible
            ax.errorbar([r["n"] * jitter for r in sel], [r["ratio"] for r in sel],
                        [np.nan_to_num(r["stderr"] / r["expected"]) for r in sel],
                        color=figstyle.ROPE_COLOURS[rope], marker=markers[kind],
                        linestyle=styles[kind], capsize=1.5,
                        mfc="white" if not rope else None,
                        label=f"{figstyle.rope_label(rope)}, {kind} prompts")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(lengths, [str(n) for n in lengths], minor=False)
        ax.set_title(STATS[k])
    for ax in axes[1]:
        ax.set_xlabel("prompt length n")
    fig.supylabel("observed mean / uniform random mapping's expectation", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3)
    return figstyle.save(fig, run.figures, "e4_orbits")
