"""E6: RoPE position drift of the Markov map, f_{P,τ} against τ, for prompts of period N.

f_{P,τ}(v) = argmax logits(P + [v]) with v at position n+τ. For P a random N-gram repeated to
n tokens, and τ = 0..T: the share of V with f_{P,τ}(v) ≠ f_{P,0}(v) and the logit change
max_u |logits_{P,τ}(v)_u − logits_{P,0}(v)_u| (dynsys.theory.dilution.position_drift), RoPE on.
Without RoPE f_{P,τ} = f_P exactly (proofs/position_drift.md, Prop. 0): a code invariant,
tested in tests/dynamics/test_invariants.py, not measured here. With RoPE a shift by the
period exchanges only N keys, so logits_{P,τ+N} − logits_{P,τ} = O(N/n) (Prop. 1, proved for
one layer): the map depends on τ only through τ mod N as n → ∞, while shifts by τ ≢ 0 (mod N)
are not diluted. Claims, per N, on the mean over V of the logit change, with bootstrap
intervals over prompts (sweep.exponent_estimate):
  period    the change at τ = N falls like n^−β with β > PERIOD (Prop. 1: β = 1 for one
            layer; deeper layers are measured);
  periodic  for N > 1, the ratio of the change at τ = N to its mean over τ = 1..N−1 falls like
            n^−γ with γ > 0: the drift becomes N-periodic (measured; not a theorem).
How far the argmax moves (the share of V with f_{P,τ} ≠ f_P) is reported, not tested: with
RoPE some token moves almost surely.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np
from matplotlib import ticker

from dynsys import figstyle
from dynsys.config import PRESETS
from dynsys.data.prompts import make_prompt
from dynsys.decode import prefill
from dynsys.dynamics.markov import suffix_map
from dynsys.io import load
from dynsys.nn import Model, init_params
from dynsys.runs import Run
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings
from dynsys.studies.sweep import by_length, exponent_estimate
from dynsys.theory.dilution import position_drift

NAME = "e6"
TITLE = "RoPE position drift: f_{P,τ} against τ for prompts of period N"
PERIOD = 0.5  # period: the exponent of the change at τ = N is above this
PERIODIC = 0.0  # periodic: the exponent of the ratio (at τ = N over τ < N) is above this


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "tiny"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset
    # weight std of a preset's random init (0: the preset's own, 0.02); a checkpoint's weights
    # are used as stored. At 0.02 the random model's attention is nearly uniform and the drift
    # is below 1e-3 (proofs/position_drift.md): no argmax moves.
    initializer_range: float = 0.1
    periods: tuple[int, ...] = (1, 2, 3, 4, 5)  # N
    lengths: tuple[int, ...] = (256, 1024, 4096, 16384)  # n
    offsets: int = 16  # T: τ = 0..T
    prompts: int = 16  # random N-grams per (N, n)

    # T reaches the longest period: the period defect compares τ with τ + N
    LIMITS = {"seed": 0, "initializer_range": 0, "periods": 1, "lengths": 1,
              "offsets": lambda config: max(config.periods), "prompts": 1}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the token after it at
        offset T."""
        return max(self.lengths) + self.offsets + 1


# Small: 8 prompts per (N, n), the fewest a bootstrap verdict takes (sweep.MIN_PROMPTS), and
# τ up to T = 3 (what the claims use for N <= 3). The per-prompt logit changes vary by ±30%
# around their mean, and the exponents' intervals over n = 256 -> 1024 came out about ±0.07
# wide: enough to tell β from 1/2 and γ from 0 unless γ is within ~0.07 of 0.
SCALES = {"small": Config(periods=(2, 3), lengths=(256, 1024), offsets=3, prompts=8),
          "paper": Config()}


def build_model(config: Config) -> Model:
    """The checkpoint or preset `config.model` with RoPE on; a preset drawn with weight std
    `config.initializer_range` when that is non-zero."""
    if config.model not in PRESETS or not config.initializer_range:
        return load(config.model, seed=config.seed).with_rope(True)
    cfg = PRESETS[config.model].replace(initializer_range=config.initializer_range)
    return Model(cfg, init_params(cfg, config.seed))


def unit_name(N: int, n: int, seed: int) -> str:
    return f"N{N}_n{n}_s{seed}"


def units(config: Config) -> list[tuple[int, int, int]]:
    """Every (N, n, prompt seed) of the sweep."""
    return list(itertools.product(config.periods, config.lengths, range(config.prompts)))


def drift_unit(model: Model, prompt: np.ndarray, T: int) -> dict[str, np.ndarray]:
    """next, margin [T+1, V]: f_{P,τ} on all of V for τ = 0..T (one suffix map, per-row
    offsets); logit_change [T, V]: max_u |logits_{P,τ}(v)_u − logits_{P,0}(v)_u|, τ = 1..T."""
    V = model.config.vocab_size
    taus = np.arange(T + 1)
    prefix = prefill(model, prompt)
    fmap = suffix_map(model, prompt, np.tile(np.arange(V), T + 1)[:, None],
                      offset=np.repeat(taus, V), prefix=prefix, progress=False)
    drift = position_drift(model, prompt, np.arange(V), taus[1:], prefix)
    return {"next": fmap.next.reshape(T + 1, V), "margin": fmap.margin.reshape(T + 1, V),
            "logit_change": drift.logit_change}


def run(run: Run, config: Config, progress: bool = True) -> None:
    model = functools.cache(lambda: build_model(config))  # only if a unit is missing

    def compute(N: int, n: int, seed: int) -> dict:
        prompt = make_prompt("ngram", model().config.vocab_size, n, seed, ngram=N)
        return drift_unit(model(), prompt, config.offsets)

    run.fill(units(config), unit_name, compute, "E6 maps f_{P,τ}", progress)
    prompts = prompt_table(run, config)
    run.write_table("drift", drift_table(run, config))
    run.write_table("prompts", prompts)
    run.write_table("period", period_table(prompts))


def shift_defect(f: np.ndarray, s: int) -> float:
    """Share of (τ, v), 0 ≤ τ ≤ T−s, with f_{P,τ+s}(v) ≠ f_{P,τ}(v); f is [T+1, V]."""
    return float((f[s:] != f[:-s]).mean())


def drift_table(run: Run, config: Config) -> list[dict]:
    """Per stored unit and τ = 1..T: share of V with f_{P,τ} ≠ f_{P,0}, the logit change's mean
    and max over V, and whether τ is a multiple of N."""
    rows = []
    for N, n, seed in units(config):
        unit = run.load(unit_name(N, n, seed))
        f, change = unit["next"], unit["logit_change"]
        for tau in range(1, f.shape[0]):
            rows.append({"N": N, "n": n, "seed": seed, "tau": tau,
                         "multiple": tau % N == 0, "changed": float((f[tau] != f[0]).mean()),
                         "logit_change_mean": float(change[tau - 1].mean()),
                         "logit_change_max": float(change[tau - 1].max())})
    return rows


def prompt_table(run: Run, config: Config) -> list[dict]:
    """Per stored unit (N, n, seed): the mean logit change over V at τ = N (at_period) and
    its mean over τ = 1..N−1 (before), their ratio (NaN for N = 1), the period and one-step
    defects (shift_defect) and the largest share of V with f_{P,τ} ≠ f_P."""
    rows = []
    for N, n, seed in units(config):
        unit = run.load(unit_name(N, n, seed))
        change = unit["logit_change"].mean(1)  # τ = 1..T
        before = float(change[:N - 1].mean()) if N > 1 else float("nan")
        rows.append({"N": N, "n": n, "seed": seed, "at_period": float(change[N - 1]),
                     "before": before, "ratio": float(change[N - 1]) / before,
                     "period_defect": shift_defect(unit["next"], N),
                     "step_defect": shift_defect(unit["next"], 1),
                     "max_changed": float((unit["next"][1:] != unit["next"][0]).mean(1).max())})
    return rows


def period_table(prompts: list[dict]) -> list[dict]:
    """Per (N, n): the mean over prompts of every column of `prompt_table`."""
    out = []
    for N, n in dict.fromkeys((r["N"], r["n"]) for r in prompts):
        sel = [r for r in prompts if (r["N"], r["n"]) == (N, n)]
        out.append({"N": N, "n": n, "prompts": len(sel),
                    **{k: float(np.mean([r[k] for r in sel])) for k in sel[0]
                       if k not in ("N", "n", "seed")}})
    return out


def findings(run: Run) -> list[Finding]:
    return verdicts(run.read_table("prompts"))


def verdicts(rows: list[dict]) -> list[Finding]:
    """Per N: the descriptive drift, then the period and periodic claims (module docstring),
    from the rows of the prompts table; the claims need two lengths or more."""
    out = []
    for N in dict.fromkeys(r["N"] for r in rows):
        sel = [r for r in rows if r["N"] == N]
        lengths, change = by_length(sel, "at_period", "seed")
        top = [r for r in sel if r["n"] == lengths[-1]]
        out.append(Finding(
            NAME, f"with RoPE the map drifts with the position of the current token (N={N})",
            f"n={lengths[-1]}: share of V with f_{{P,τ}} ≠ f_P up to "
            f"{np.mean([r['max_changed'] for r in top]):.1%} (mean over {len(top)} prompts)",
            None))
        if len(lengths) < 2:
            continue
        span = f"n={lengths[0]} -> {lengths[-1]}, jackknife-t over {len(top)} prompts per n"
        beta = exponent_estimate(lengths, change, threshold=PERIOD)
        out.append(Finding(
            NAME, f"a shift by the period moves the logits less and less as n grows: the logit "
                  f"change at τ = N = {N} falls like n^-β, β > {PERIOD:g} (Prop. 1: β = 1, "
                  "proved for one layer; measured here)",
            f"β = {beta.text()}; mean change {change[0].mean():.3g} -> {change[-1].mean():.3g}, "
            f"{span}", beta.verdict, test=beta.test))
        if N > 1:
            ratio = by_length(sel, "ratio", "seed")[1]
            gamma = exponent_estimate(lengths, ratio, threshold=PERIODIC)
            out.append(Finding(
                NAME, f"the drift becomes N-periodic (N={N}): the logit change at τ = N over its "
                      f"mean at τ < N falls like n^-γ, γ > {PERIODIC:g} (measured; shifts "
                      "τ ≢ 0 mod N are not diluted)",
                f"γ = {gamma.text()}; ratio {ratio[0].mean():.2f} -> {ratio[-1].mean():.2f}, "
                f"{span}", gamma.verdict, test=gamma.test))
    return out


def _mean_curve(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    """τ and the mean of `column` over prompts, with τ = 0 (no change) prepended."""
    taus = sorted({r["tau"] for r in rows})
    return [0, *taus], [0.0, *(np.mean([r[column] for r in rows if r["tau"] == t])
                              for t in taus)]


def figures(run: Run):
    return [*_drift_figure(run), *_period_figure(run)]


def _drift_figure(run: Run):
    """Share of V changed (top) and mean logit change (bottom) against τ, per N."""
    rows = run.read_table("drift")
    periods = sorted({r["N"] for r in rows})
    lengths = sorted({r["n"] for r in rows})
    shade = dict(zip(lengths, np.linspace(0.35, 1, len(lengths))))
    fig, axes = figstyle.figure(ncols=len(periods), nrows=2, width=figstyle.FULL,
                                aspect=min(1.1, 0.3 * len(periods)), sharex="col",
                                sharey="row")
    for col, N in enumerate(periods):
        top, bottom = axes[0][col], axes[1][col]
        T = max(r["tau"] for r in rows if r["N"] == N)
        for ax in (top, bottom):
            for k in range(N, T + 1, N):
                ax.axvline(k, color="0.6", lw=0.6, ls=":")
        for n in lengths:
            sel = [r for r in rows if r["N"] == N and r["n"] == n]
            top.plot(*_mean_curve(sel, "changed"), color=figstyle.ROPE_COLOURS[True],
                     alpha=shade[n], marker="o", label=f"n={n}")
            tau, change = _mean_curve(sel, "logit_change_mean")
            bottom.plot(tau[1:], change[1:], color=figstyle.ROPE_COLOURS[True],
                        alpha=shade[n], marker="o", label=f"n={n}")
        top.set_title(f"period N = {N}")
        bottom.set_yscale("log")
    fig.supxlabel(r"offset $\tau$ of the current token (dotted: multiples of N)", fontsize=8)
    axes[0][0].set_ylabel("share of $V$ with\n$f_{P,\\tau}(v) \\neq f_P(v)$")
    axes[1][0].set_ylabel("mean logit change\n(RoPE on; off it is exactly 0)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5))
    return figstyle.save(fig, run.figures, "e6_drift")


def _period_figure(run: Run):
    """Against n: the period defect next to the one-step defect (left), and the logit change
    at τ = N relative to τ < N (right); lines are the means over prompts, bands their range
    (min to max over the prompts), which holds the mean and the ratio of means."""
    rows = run.read_table("period")
    prompts = run.read_table("prompts")
    periods = sorted({r["N"] for r in rows})
    colours = dict(zip(periods, figstyle.OTHERS))
    fig, axes = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.75)
    left, right = axes[0]

    def band(ax, N, column, colour):
        lengths = sorted({r["n"] for r in prompts if r["N"] == N})
        values = [[r[column] for r in prompts if (r["N"], r["n"]) == (N, n)] for n in lengths]
        ax.fill_between(lengths, [min(v) for v in values], [max(v) for v in values],
                        color=colour, alpha=0.15, lw=0)

    for N in periods:
        sel = sorted((r for r in rows if r["N"] == N), key=lambda r: r["n"])
        n = [r["n"] for r in sel]
        left.plot(n, [r["period_defect"] for r in sel], color=colours[N], marker="o",
                  label=f"N = {N}, shift s = N")
        band(left, N, "period_defect", colours[N])
        if N > 1:
            left.plot(n, [r["step_defect"] for r in sel], color=colours[N], ls="--",
                      marker="s", mfc="white", label=f"N = {N}, shift s = 1")
            band(left, N, "step_defect", colours[N])
            right.plot(n, [r["ratio"] for r in sel], color=colours[N], marker="o",
                       label=f"N = {N}")
            band(right, N, "ratio", colours[N])
    lengths = sorted({r["n"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths], minor=False)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
        ax.set_yscale("log")
        figstyle.plain_log_ticks(ax.yaxis)
        ax.set_xlabel("prompt length n")
    right.axhline(1, color="0.4", lw=0.8)
    left.set_ylabel("share of (offset τ, token v) whose next\ntoken changes when τ moves by s")
    left.set_title(r"$f_{P,\tau+s}(v) \neq f_{P,\tau}(v)$: s = N solid, s = 1 dashed")
    right.set_ylabel("logit change at τ = N\n/ logit change at τ < N")
    right.set_title("below 1: the drift is N-periodic")
    handles, labels = left.get_legend_handles_labels()
    count = figstyle.n_text(len([p for p in prompts if (p["N"], p["n"]) == (r["N"], r["n"])])
                            for r in rows)
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5),
               title=f"lines: mean over prompts; bands: their range ({count} prompts)")
    return figstyle.save(fig, run.figures, "e6_period")
