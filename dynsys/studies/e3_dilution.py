"""E3: attention dilution along greedy traces, measured against the proved bounds, vs n.

Per prompt length n, random i.i.d. prompts are continued by G greedy tokens. Step t has
r = t − 1 generated keys; per step, layer and head it measures the attention mass a_t(R) of the
generated keys and the logit change max_v |Δlogit_v| when they are hidden (dynsys.theory.dilution),
next to the multi-layer bound on both and the certified horizon (dynsys.theory,
proofs/multi_layer.md), and the measured agreement horizon (leading steps whose greedy token is
f_{P,t−1}(x_{n+t})). The argument predicts a(R) ~ r/n, a bound that holds everywhere, and a
certified horizon that grows with n and never exceeds the measured one. The weight-only
constants of the degeneration theorem (proofs/degeneration.md) give its explicit n₀.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dynsys import figstyle
from dynsys.data import prompts
from dynsys.decode import generate, prefill
from dynsys.io import load
from dynsys.nn.cache import bucket
from dynsys.runs import Run
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings
from dynsys.theory import (Certificate, markov_stats, perturbation_bound, uniform_bound,
                           weight_constants)
from dynsys.theory.dilution import probe_trace

NAME = "e3"
TITLE = "Attention dilution measured vs bound vs prompt length n"
SLACK = 1e-5  # float32 rounding allowed when checking bound ≥ measured (relative, and absolute)


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "tiny"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset
    lengths: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    G: int = 32  # greedy steps per trace
    prompts: int = 3  # random prompts per n

    LIMITS = {"seed": 0, "lengths": 1, "G": 2, "prompts": 1}  # G >= 2: a step with r >= 1

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.lengths) + self.G


SCALES = {"small": Config(lengths=(64, 256, 1024), G=8, prompts=1), "paper": Config()}


def unit_name(n: int, k: int) -> str:
    return f"n{n}_p{k}"


def make_prompt(vocab_size: int, n: int, k: int) -> np.ndarray:
    """Prompt k of length n: i.i.d. uniform tokens, seed 1000 n + k."""
    return prompts.random_tokens(vocab_size, n, seed=1000 * n + k)


def measure(model, weights, prompt: np.ndarray, G: int, capacity: int) -> dict:
    """One unit: the greedy trace x_{n+1..n+G} of `prompt`, probed and bounded per step
    against its prefix of `capacity` slots (one capacity for every n: the probe and the bound
    compile once per run).

    mass, mass_bound [G, L, N]: a_t(R) and its bound; logit_change, logit_bound [G];
    residual, residual_bound [G, L]: ‖x_l − x′_l‖ leaving block l; margin [G] of the reference
    logits; certified, agreement: the certified and the measured horizon; floor: the least rms
    of the reference streams (for the weight-only bound)."""
    prefix = prefill(model, prompt, capacity)
    trace = np.asarray(generate(model, prompt[None], G))[0]
    probe = probe_trace(model, prompt, trace, prefix)
    if not (probe.real_next[:-1] == trace[1:]).all():
        raise RuntimeError(f"n={len(prompt)}: the probe's real steps do not reproduce the "
                           "greedy trace")
    stats = markov_stats(model, prompt, trace, prefix)
    cert = Certificate(perturbation_bound(weights, stats), stats.margin, stats.next)
    floor = min(stats.spread_in.min(), stats.spread_mid.min(), stats.spread_final.min())
    return dict(trace=trace, mass=probe.mass, mass_bound=cert.bound.mass,
                logit_change=probe.logit_change, logit_bound=cert.bound.logits,
                residual=probe.residual, residual_bound=cert.bound.residual,
                margin=stats.margin, certified=cert.horizon, agreement=probe.agreement,
                floor=floor)


def theorem(weights, floor: float, margin: float, G: int) -> dict:
    """The weight-only bound without and with the measured rms floor: score range S, gain and
    n₀(G, margin) of the degeneration theorem, per floor."""
    bounds = [uniform_bound(weights, rms_floor=f) for f in (0.0, floor)]
    return dict(rms_floor=[b.rms_floor for b in bounds],
                score_range=[b.score_range for b in bounds], gain=[b.gain for b in bounds],
                n0=[b.n0(G, margin) for b in bounds], margin=margin)


def run(run: Run, config: Config, progress: bool = True) -> None:
    """The units not yet stored (one per n and prompt, then the weight-only theorem), then the
    tables from the stored units."""
    model = functools.cache(lambda: load(config.model, seed=config.seed))  # only if needed
    weights = functools.cache(lambda: weight_constants(model()))

    def compute(n: int, k: int) -> dict:
        prompt = make_prompt(model().config.vocab_size, n, k)
        return measure(model(), weights(), prompt, config.G, bucket(max(config.lengths)))

    keys = [(n, k) for n in config.lengths for k in range(config.prompts)]
    run.fill(keys, unit_name, compute, "dilution", progress)
    units = {key: run.load(unit_name(*key)) for key in keys}
    if not run.has("theorem"):
        floor = min(float(u["floor"]) for u in units.values())
        margin = float(np.median(np.concatenate([u["margin"] for u in units.values()])))
        run.save("theorem", **theorem(weights(), floor, margin, config.G))
    rows = [unit_row(n, k, u) for (n, k), u in units.items()]
    run.write_table("units", rows)
    run.write_table("summary", summary(rows))
    run.write_table("layers", layer_rows(units))
    run.write_table("theorem", theorem_rows(run.load("theorem"), config.G))


# --- tables ------------------------------------------------------------------------------------


def ratios(bound: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """bound / measured over the steps with r ≥ 1 generated keys (step 1 has none: both 0)."""
    return (bound[1:] / measured[1:]).ravel()


def unit_row(n: int, k: int, u: dict) -> dict:
    """One (n, prompt): a(R) (max over layers and heads) and the logit change at r = 1 and at
    the last step, their bounds, the median bound/measured ratios over r ≥ 1, the horizons."""
    mass, mass_bound = u["mass"].max((1, 2)), u["mass_bound"].max((1, 2))
    mass_ratio = ratios(u["mass_bound"], u["mass"])
    return dict(
        n=n, prompt=k,
        mass_r1=mass[1], mass_bound_r1=mass_bound[1],
        mass_last=mass[-1], mass_bound_last=mass_bound[-1],
        logit_r1=u["logit_change"][1], logit_bound_r1=u["logit_bound"][1],
        logit_last=u["logit_change"][-1], logit_bound_last=u["logit_bound"][-1],
        mass_ratio=np.median(mass_ratio), mass_ratio_max=mass_ratio.max(),
        logit_ratio=np.median(ratios(u["logit_bound"], u["logit_change"])),
        holds=bool(holds(u["mass_bound"], u["mass"]) and holds(u["logit_bound"],
                                                               u["logit_change"])),
        median_margin=np.median(u["margin"]),
        certified=int(u["certified"]), agreement=int(u["agreement"]))


def holds(bound: np.ndarray, measured: np.ndarray) -> bool:
    """measured ≤ bound everywhere, up to float32 rounding (SLACK)."""
    return bool((measured <= bound * (1 + SLACK) + SLACK).all())


def summary(rows: list[dict]) -> list[dict]:
    """Per n: the mean over prompts of every column of `unit_row` (`holds`: all prompts)."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        sel = [r for r in rows if r["n"] == n]
        out.append(dict(n=n, prompts=len(sel), holds=all(r["holds"] for r in sel),
                        **{k: float(np.mean([r[k] for r in sel])) for k in sel[0]
                           if k not in ("n", "prompt", "holds")}))
    return out


def layer_rows(units: dict) -> list[dict]:
    """Per n and layer: bound / measured ‖x_l − x′_l‖ at r = 1 and at the last step, geometric
    mean over prompts: where in the network the bound loses its tightness."""
    out = []
    for n in sorted({n for n, _ in units}):
        ratio = np.stack([u["residual_bound"][[1, -1]] / u["residual"][[1, -1]]
                          for (m, _), u in units.items() if m == n])  # [prompts, 2, L]
        mean = np.exp(np.log(ratio).mean(0))
        out += [dict(n=n, layer=i, ratio_r1=mean[0, i], ratio_last=mean[1, i])
                for i in range(mean.shape[1])]
    return out


def theorem_rows(t: dict, G: int) -> list[dict]:
    return [dict(rms_floor=f, score_range=s, gain=g, G=G, margin=float(t["margin"]), n0=n0)
            for f, s, g, n0 in zip(t["rms_floor"], t["score_range"], t["gain"], t["n0"])]


# --- findings and figures ----------------------------------------------------------------------


def _span(rows: list[dict], key: str, fmt: str = ".2g") -> str:
    """`key` at the smallest and the largest n of the per-n summary."""
    return f"{rows[0][key]:{fmt}} at n={rows[0]['n']} -> {rows[-1][key]:{fmt}} at n={rows[-1]['n']}"


def decay_slope(n, mass) -> float:
    """Least-squares slope of log a(R) against log n (−1 for a(R) ∝ 1/n)."""
    return float(np.polyfit(np.log(n), np.log(mass), 1)[0]) if len(n) > 1 else float("nan")


def findings(run: Run) -> list[Finding]:
    rows, units = run.read_table("summary"), run.read_table("units")
    G, top = run.config["G"], rows[-1]
    mass = [r["mass_last"] for r in rows]
    sound = all(r["certified"] <= r["agreement"] for r in units)
    layers = [r["ratio_r1"] for r in run.read_table("layers") if r["n"] == top["n"]]
    return [
        Finding(NAME, "the generated keys' attention mass a(R) falls with n (like r/n)",
                f"a(R) at step G={G}: {_span(rows, 'mass_last')}; log-log slope "
                f"{decay_slope([r['n'] for r in rows], mass):.2f}",
                bool(mass[-1] < mass[0]) if len(rows) > 1 else None),
        Finding(NAME, "the multi-layer bound is above the measured a(R) and logit change on "
                      "every step, layer and head",
                f"{sum(r['holds'] for r in units)} of {len(units)} traces",
                all(r["holds"] for r in units)),
        Finding(NAME, "the a(R) bound is tight for long prompts (median bound/measured, r >= 1)",
                f"{_span(rows, 'mass_ratio', '.3g')}: within "
                f"{100 * (top['mass_ratio'] - 1):.2g}% at n={top['n']}", None),
        Finding(NAME, "the logit bound is loose (median bound/measured, r >= 1)",
                f"{_span(rows, 'logit_ratio', '.2g')} (at r=1: "
                f"{top['logit_bound_r1'] / top['logit_r1']:.2g}x at n={top['n']}); "
                f"bound/measured ||x_l - x'_l|| by layer "
                f"at r=1, n={top['n']}: {' '.join(f'{x:.2g}' for x in layers)}", None),
        Finding(NAME, "the certified horizon never exceeds the measured agreement horizon",
                f"certified {_span(rows, 'certified', '.1f')} vs measured "
                f"{_span(rows, 'agreement', '.1f')} steps of G={G}", sound),
        Finding(NAME, "the weight-only n0 of the degeneration theorem",
                "; ".join(f"rms floor {r['rms_floor']:.2g}: S={r['score_range']:.2g}, gain "
                          f"{r['gain']:.2g}, n0 = {r['n0']:.2g} (G={G}, margin "
                          f"{r['margin']:.2g})" for r in run.read_table("theorem")), None),
    ]


OFF_SCALE = 1e4  # the logit panel shows bounds up to this many times the largest measured value


def figures(run: Run):
    rows = run.read_table("summary")
    n, G = [r["n"] for r in rows], run.config["G"]
    fig, axes = figstyle.figure(ncols=3, width=figstyle.FULL, aspect=0.85)
    mass, logit, horizon = axes[0]
    for ax, key in ((mass, "mass"), (logit, "logit")):
        for step, colour, r in (("r1", figstyle.PALETTE[0], 1), ("last", figstyle.PALETTE[1],
                                                                 G - 1)):
            ax.plot(n, [row[f"{key}_{step}"] for row in rows], "o-", color=colour,
                    label=f"measured, r = {r}")
            ax.plot(n, [row[f"{key}_bound_{step}"] for row in rows], "s--", color=colour,
                    label=f"bound, r = {r}")
    logit.plot(n, [r["median_margin"] / 2 for r in rows], ":", color="0.4",
               label="median margin / 2")
    for ax in (mass, logit, horizon):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length n")
    for ax in (mass, logit):
        ax.set_yscale("log")
    shown = [r[k] for r in rows for k in ("logit_r1", "logit_last", "median_margin")]
    logit.set_ylim(min(shown) / 10, max(shown) * OFF_SCALE)
    mass.set_ylabel("$a(R)$, max over heads, layers")
    mass.set_title("attention on the generated keys")
    logit.set_ylabel(r"$\max_v |\Delta\,\mathrm{logit}_v|$")
    logit.set_title("logit change without them")
    fig.legend(*logit.get_legend_handles_labels(), loc="outside lower center", ncols=5)
    horizon.plot(n, [r["agreement"] for r in rows], "o-", color=figstyle.PALETTE[2],
                 label="measured agreement")
    horizon.plot(n, [r["certified"] for r in rows], "s--", color=figstyle.PALETTE[3],
                 label="certified")
    horizon.axhline(G, color="0.5", linewidth=0.6, linestyle=":")
    horizon.set_ylim(0, G * 1.05)
    horizon.set_ylabel("steps (mean over prompts)")
    horizon.set_title(f"horizon (of G = {G})")
    horizon.legend(loc="center right")
    return figstyle.save(fig, run.figures, "e3_dilution")
