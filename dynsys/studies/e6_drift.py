"""E6: RoPE position drift of the Markov map, f_{P,τ} against τ, for prompts of period N.

f_{P,τ}(v) = argmax logits(P + [v]) with v at position n+τ. For P a random N-gram repeated to
n tokens, and τ = 0..T: the share of V with f_{P,τ}(v) ≠ f_{P,0}(v) and the logit change
max_u |logits_{P,τ}(v)_u − logits_{P,0}(v)_u| (dynsys.theory.dilution.position_drift). Without RoPE
f_{P,τ} = f_P exactly (proofs/position_drift.md, Prop. 0). With RoPE a shift by the period
exchanges only N keys, so logits_{P,τ+N} − logits_{P,τ} = O(N/n) (Prop. 1, one layer): the
period defect, the share of V with f_{P,τ+N}(v) ≠ f_{P,τ}(v), → 0 as n → ∞ and the map depends
on τ only through τ mod N; shifts by τ ≢ 0 (mod N) are not diluted.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

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
from dynsys.theory.dilution import position_drift

NAME = "e6"
TITLE = "RoPE position drift: f_{P,τ} against τ for prompts of period N"


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
    prompts: int = 4  # random N-grams per (rope, N, n)

    # T reaches the longest period: the period defect compares τ with τ + N
    LIMITS = {"seed": 0, "initializer_range": 0, "periods": 1, "lengths": 1,
              "offsets": lambda config: max(config.periods), "prompts": 1}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the token after it at
        offset T."""
        return max(self.lengths) + self.offsets + 1


SCALES = {"small": Config(periods=(2, 3), lengths=(256, 1024), offsets=6, prompts=1),
          "paper": Config()}


def build_model(config: Config) -> Model:
    """The checkpoint or preset `config.model`; a preset drawn with weight std
    `config.initializer_range` when that is non-zero."""
    if config.model not in PRESETS or not config.initializer_range:
        return load(config.model, seed=config.seed)
    cfg = PRESETS[config.model].replace(initializer_range=config.initializer_range)
    return Model(cfg, init_params(cfg, config.seed))


def unit_name(rope: bool, N: int, n: int, seed: int) -> str:
    return f"rope{int(rope)}_N{N}_n{n}_s{seed}"


def units(config: Config) -> list[tuple[bool, int, int, int]]:
    """Every (rope, N, n, prompt seed) of the sweep."""
    return list(itertools.product((True, False), config.periods, config.lengths,
                                  range(config.prompts)))


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

    def compute(rope: bool, N: int, n: int, seed: int) -> dict:
        prompt = make_prompt("ngram", model().config.vocab_size, n, seed, ngram=N)
        return drift_unit(model().with_rope(rope), prompt, config.offsets)

    run.fill(units(config), unit_name, compute, "E6 maps f_{P,τ}", progress)
    drift = drift_table(run, config)
    run.write_table("drift", drift)
    run.write_table("period", period_table(run, config, drift))


def shift_defect(f: np.ndarray, s: int) -> float:
    """Share of (τ, v), 0 ≤ τ ≤ T−s, with f_{P,τ+s}(v) ≠ f_{P,τ}(v); f is [T+1, V]."""
    return float((f[s:] != f[:-s]).mean())


def drift_table(run: Run, config: Config) -> list[dict]:
    """Per stored unit and τ = 1..T: share of V with f_{P,τ} ≠ f_{P,0}, the logit change's mean
    and max over V, and whether τ is a multiple of N."""
    rows = []
    for rope, N, n, seed in units(config):
        unit = run.load(unit_name(rope, N, n, seed))
        f, change = unit["next"], unit["logit_change"]
        for tau in range(1, f.shape[0]):
            rows.append({"rope": rope, "N": N, "n": n, "seed": seed, "tau": tau,
                         "multiple": tau % N == 0, "changed": float((f[tau] != f[0]).mean()),
                         "logit_change_mean": float(change[tau - 1].mean()),
                         "logit_change_max": float(change[tau - 1].max())})
    return rows


def period_table(run: Run, config: Config, drift: list[dict]) -> list[dict]:
    """Per (rope, N, n), over prompts: period_defect = shift_defect(f, N) and step_defect =
    shift_defect(f, 1); the mean logit change at τ = N against its mean over τ = 1..N−1
    (ratio_at_period; NaN for N = 1 and where nothing drifts); whether every f_{P,τ} equals
    f_{P,0}."""
    rows = []
    for rope, N, n in itertools.product((True, False), config.periods, config.lengths):
        maps = [run.load(unit_name(rope, N, n, s))["next"] for s in range(config.prompts)]
        sel = [r for r in drift if (r["rope"], r["N"], r["n"]) == (rope, N, n)]
        at_period = np.mean([r["logit_change_mean"] for r in sel if r["tau"] == N])
        before = [r["logit_change_mean"] for r in sel if r["tau"] < N]
        base = np.mean(before) if before else 0.0  # 0: N = 1, or no drift at all (RoPE off)
        rows.append({"rope": rope, "N": N, "n": n,
                     "period_defect": np.mean([shift_defect(f, N) for f in maps]),
                     "step_defect": np.mean([shift_defect(f, 1) for f in maps]),
                     "logit_change_at_period": at_period,
                     "ratio_at_period": at_period / base if base > 0 else float("nan"),
                     "max_changed": max(r["changed"] for r in sel),
                     "max_logit_change": max(r["logit_change_max"] for r in sel),
                     "identical": all(bool((f == f[0]).all()) for f in maps)})
    return rows


def findings(run: Run) -> list[Finding]:
    rows = run.read_table("period")
    off = [r for r in rows if not r["rope"]]
    on = [r for r in rows if r["rope"]]
    lo, hi = min(r["n"] for r in rows), max(r["n"] for r in rows)
    periods = sorted({r["N"] for r in rows})
    out = []
    if off:
        change = max(r["max_logit_change"] for r in off)
        out.append(Finding(
            NAME, "without RoPE f_{P,τ} = f_P for every τ (proofs/position_drift.md, Prop. 0)",
            f"max share of V changed {max(r['max_changed'] for r in off):.3g}, max logit "
            f"change {change:.3g} over {len(off)} (N, n)",
            all(r["identical"] for r in off) and change == 0))
    if not on:
        return out
    by = {(r["N"], r["n"]): r for r in on}
    out.append(Finding(
        NAME, "with RoPE the map drifts with the position of the current token",
        f"n={hi}: max share of V with f_{{P,τ}} ≠ f_P " + ", ".join(
            f"{by[N, hi]['max_changed']:.1%} (N={N})" for N in periods),
        any(r["max_changed"] > 0 for r in on)))
    if lo == hi:
        return out
    out.append(Finding(
        NAME, "a shift by the period N moves f_{P,τ} less and less as n grows (Prop. 1: "
              "f_{P,τ+N} → f_{P,τ})",
        f"share of (τ, v) with f_{{P,τ+N}}(v) ≠ f_{{P,τ}}(v), n={lo} → {hi}: " + ", ".join(
            f"{by[N, lo]['period_defect']:.2%} → {by[N, hi]['period_defect']:.2%} (N={N})"
            for N in periods),
        all(by[N, hi]["period_defect"] < by[N, lo]["period_defect"] for N in periods)))
    periodic = [N for N in periods if N > 1]
    if periodic:
        out.append(Finding(
            NAME, "the drift becomes N-periodic: logit change at τ = N over that at τ < N "
                  "falls as n grows (shifts τ ≢ 0 mod N are not diluted)",
            f"n={lo} → {hi}: " + ", ".join(
                f"{by[N, lo]['ratio_at_period']:.2f} → {by[N, hi]['ratio_at_period']:.2f} "
                f"(N={N})" for N in periodic),
            all(by[N, hi]["ratio_at_period"] < by[N, lo]["ratio_at_period"]
                for N in periodic)))
    return out


def _mean_curve(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    """τ and the mean of `column` over prompts, with τ = 0 (no change) prepended."""
    taus = sorted({r["tau"] for r in rows})
    return [0, *taus], [0.0, *(np.mean([r[column] for r in rows if r["tau"] == t])
                              for t in taus)]


def figures(run: Run):
    return [*_drift_figure(run), *_period_figure(run)]


def _drift_figure(run: Run):
    """Share of V changed (top) and mean logit change (bottom, RoPE on) against τ, per N."""
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
            sel = [r for r in rows if r["N"] == N and r["n"] == n and r["rope"]]
            if sel:
                top.plot(*_mean_curve(sel, "changed"), color=figstyle.ROPE_COLOURS[True],
                         alpha=shade[n], marker="o", label=f"RoPE on, n={n}")
                tau, change = _mean_curve(sel, "logit_change_mean")
                bottom.plot(tau[1:], change[1:], color=figstyle.ROPE_COLOURS[True],
                            alpha=shade[n], marker="o", label=f"n={n}")
        flat = [r for r in rows if r["N"] == N and r["n"] == lengths[-1] and not r["rope"]]
        if flat:
            top.plot(*_mean_curve(flat, "changed"), color=figstyle.ROPE_COLOURS[False],
                     ls="--", marker="s", mfc="white", label=f"RoPE off, n={lengths[-1]}")
        top.set_title(f"period N = {N}")
        bottom.set_yscale("log")
    fig.supxlabel(r"offset $\tau$ of the current token (dotted: multiples of N)", fontsize=8)
    axes[0][0].set_ylabel("share of $V$ with\n" r"$f_{P,\tau}(v) \neq f_P(v)$")
    axes[1][0].set_ylabel("mean logit change\n(RoPE on; off: 0)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper center", ncols=min(len(labels), 5))
    return figstyle.save(fig, run.figures, "e6_drift")


def _period_figure(run: Run):
    """RoPE on, against n: the period defect next to the one-step defect (left), and the logit
    change at τ = N relative to τ < N (right)."""
    rows = [r for r in run.read_table("period") if r["rope"]]
    periods = sorted({r["N"] for r in rows})
    colours = dict(zip(periods, figstyle.PALETTE))
    fig, axes = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.75)
    left, right = axes[0]
    for N in periods:
        sel = sorted((r for r in rows if r["N"] == N), key=lambda r: r["n"])
        n = [r["n"] for r in sel]
        left.plot(n, [r["period_defect"] for r in sel], color=colours[N], marker="o",
                  label=f"N={N}: shift by N")
        if N > 1:
            left.plot(n, [r["step_defect"] for r in sel], color=colours[N], ls="--",
                      marker="s", mfc="white", label=f"N={N}: shift by 1")
            right.plot(n, [r["ratio_at_period"] for r in sel], color=colours[N], marker="o",
                       label=f"N={N}")
    lengths = sorted({r["n"] for r in rows})
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths], minor=False)
        ax.set_yscale("log")
        ax.set_xlabel("prompt length n")
    right.axhline(1, color="0.4", lw=0.8)
    left.set_ylabel(r"share of $(\tau, v)$ changed by a shift $s$")
    left.set_title(r"$f_{P,\tau+s}(v) \neq f_{P,\tau}(v)$; $s = N$ (solid), $s = 1$ (dashed)")
    right.set_ylabel(r"logit change at $\tau = N$ / at $\tau < N$")
    right.set_title("below 1: the drift is N-periodic")
    handles, labels = left.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5))
    return figstyle.save(fig, run.figures, "e6_period")
