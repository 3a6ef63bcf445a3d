"""E3: attention dilution along greedy traces, measured against uniform attention and against
the proved bounds, vs n.

Per prompt length n, i.i.d. prompts are continued by G greedy tokens. Step t has r = t − 1
generated keys among s = n + r + 1; per step, layer and head it measures the attention mass
a_t(R) of the generated keys and the logit change max_v |Δlogit_v| when they are hidden
(dynsys.theory.dilution). On the first `certified` prompts per n it also computes the
multi-layer bound on both and the certified horizon (dynsys.theory, proofs/multi_layer.md), and
the measured agreement horizon (leading steps whose greedy token is f_{P,t−1}(x_{n+t})). The
weight-only constants of the degeneration theorem (proofs/degeneration.md) give its explicit n₀,
and with each bounded prompt's measured partition functions Z′_P its n₀(P) (proofs/prompt_n0.md).

Proved: scores lie in [−S/2, S/2], so a(R) ≤ r e^S / (r e^S + n + 1), which falls like 1/n once
n ≫ r e^S, whatever the attention pattern; the bounds hold on every step. Uniform attention
gives a(R) = r/(n + r + 1), the same decay: a falling a(R) alone says nothing about the
argument's mechanism. What the argument needs is that the excess concentration, the ratio of
a(R) to its uniform value, stays bounded in n (it is at most e^S); it does not need it near 1.
Claims:
  decay    a(R) ∝ n^−β with β > DECAY: a(R) at the last step (mean over layers and heads),
           β from its mean over prompts per n, jackknife-t over prompts (sweep.exponent_estimate).
  uniform  at the largest n the excess concentration (a(R) over r/(n + r + 1), mean over the
           steps r ≥ 1, layers and heads; mean over prompts) is below EXCESS, on its jackknife-t
           interval over prompts: the dilution measured is that of near-uniform attention, as
           expected at random initialisation. A model whose heads favour the generated keys
           (recency) fails it and may still satisfy the argument, if the decay claim holds.
  bound    measured ≤ bound on every step with r ≥ 1, layer and head, up to float32 rounding:
           RTOL relative to the bound, and for the logits and residuals the unit's own rounding
           level, its value at r = 0 (exactly 0 in exact arithmetic).
  horizon  the certified horizon never exceeds the measured one, for the old certificate
           (max_v |Δlogit_v| < margin/2) and for the margin certificate (each margin's change
           bounded through the reference Jacobians, dynsys.theory.margin), whose enclosure of
           the measured margin changes must also hold, and for the history-uniform
           certificate (dynsys.theory.history: every history of r tokens, along the Markov
           orbit of the trace's first token; table `history`); the margin certificate's
           estimate (the propagated centre's margins, remainders dropped: not a bound) is
           reported beside them.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dynsys import figstyle
from dynsys.data import prompts
from dynsys.decode import generate, prefill
from dynsys.io import load, load_config
from dynsys.nn.cache import bucket
from dynsys.runs import Run
from dynsys.stats import INCONCLUSIVE
from dynsys.studies.finding import CHECK, Finding
from dynsys.studies.settings import Settings
from dynsys.studies.sweep import by_length, exponent_estimate, prompt_estimate
from dynsys.theory import (
    Certificate,
    markov_stats,
    perturbation_bound,
    uniform_bound,
    weight_constants,
)
from dynsys.theory.dilution import probe_trace
from dynsys.theory.history import FAMILIES as HISTORY_FAMILIES
from dynsys.theory.history import history_horizon
from dynsys.theory.margin import margin_bound, margin_change

NAME = "e3"
TITLE = "Attention dilution measured vs uniform attention vs bound vs prompt length n"
DECAY = 0.5  # decay: a(R)'s exponent in n is above this (the bound's limit and uniform: 1)
EXCESS = 1.1  # uniform: the excess concentration at the largest n is below this
# bound: float32 rounding allowed, relative to the bound. A softmax share computed in float32
# is off by ~1e-6 relative; the bounds are computed in float64 from float32 quantities.
RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "tiny"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset
    lengths: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    G: int = 32  # greedy steps per trace
    prompts: int = 16  # random prompts per n, all probed
    certified: int = 3  # of them, the first ones also bounded (markov_stats: the costly part)

    # G >= 2: a step with r >= 1; every bounded prompt is a probed one
    LIMITS = {"seed": 0, "lengths": 1, "G": 2, "certified": 1,
              "prompts": lambda config: config.certified}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.lengths) + self.G


# Small: 8 prompts per n (the fewest a bootstrap verdict takes, sweep.MIN_PROMPTS) are enough
# here: at random initialisation the excess concentration is 1.00 ± 0.01 per prompt, so both
# intervals are a few percent wide. One bounded prompt per n checks the bound on
# 7 × (16 + 4 + 1) comparisons per trace; the bound's compilation dominates the run time.
SCALES = {"small": Config(lengths=(64, 256, 1024), G=8, prompts=8, certified=1),
          "paper": Config()}


def unit_name(n: int, k: int) -> str:
    return f"n{n}_p{k}"


def make_prompt(vocab_size: int, n: int, k: int) -> np.ndarray:
    """Prompt k of length n: i.i.d. uniform tokens, seed 1000 n + k."""
    return prompts.random_tokens(vocab_size, n, seed=1000 * n + k)


def measure(model, weights, prompt: np.ndarray, G: int, capacity: int, bounded: bool) -> dict:
    """One unit: the greedy trace x_{n+1..n+G} of `prompt`, probed per step against its prefix
    of `capacity` slots (one capacity for every n: the probe and the bound compile once per
    run), and with `bounded` its bounds.

    mass [G, L, N]: a_t(R); logit_change [G]; residual [G, L]: ‖x_l − x′_l‖ leaving block l;
    margin [G] of the reference logits; agreement: the measured horizon. Bounded: mass_bound,
    logit_bound, residual_bound (same shapes), certified: the certified horizon, floor: the
    least rms of the reference streams (for the weight-only bound); the margin certificate's
    margin_certified (rigorous) and margin_estimated (estimate, not proved) horizons, and per step
    margin_bound ≥ max |Δ(ℓ_top − ℓ_v)| over the NEAR tokens of smallest margin, margin_change
    that measured maximum, margin_violations: tokens whose measured change leaves the
    enclosure; prefix_lse [G, L, N]: log Σ_{j∈P} e^{z′_j} of the reference steps (for the
    prompt-dependent n₀)."""
    prefix = prefill(model, prompt, capacity)
    trace = np.asarray(generate(model, prompt[None], G).tokens)[0]
    probe = probe_trace(model, prompt, trace, prefix)
    if not (probe.real_next[:-1] == trace[1:]).all():
        raise RuntimeError(f"n={len(prompt)}: the probe's real steps do not reproduce the "
                           "greedy trace")
    unit = dict(trace=trace, mass=probe.mass, logit_change=probe.logit_change,
                residual=probe.residual, margin=probe.margin, agreement=probe.agreement)
    if not bounded:
        return unit
    stats = markov_stats(model, prompt, trace, prefix)
    cert = Certificate(perturbation_bound(weights, stats), stats.margin, stats.next)
    floor = min(stats.spread_in.min(), stats.spread_mid.min(), stats.spread_final.min())
    margins = margin_bound(weights, stats)
    change = margin_change(model, prompt, trace, prefix)
    rows = np.arange(len(trace))[:, None]
    if model.config.family in HISTORY_FAMILIES:
        unit.update(history_columns(model, prompt, trace, prefix, change, probe.agreement))
    return dict(unit, mass_bound=cert.bound.mass, logit_bound=cert.bound.logits,
                residual_bound=cert.bound.residual, certified=cert.horizon, floor=floor,
                margin_certified=margins.horizon, margin_estimated=margins.estimated_horizon,
                prefix_lse=stats.prefix_lse,
                margin_bound=margins.change[rows, margins.near].max(1),
                margin_change=np.abs(change[rows, margins.near]).max(1),
                margin_violations=int((np.abs(change - margins.centre)
                                       > margins.radius * (1 + RTOL)).sum()))


def history_columns(model, prompt, trace, prefix, change: np.ndarray, agreement: int) -> dict:
    """The history-uniform certificate (dynsys.theory.history) along the Markov orbit of the
    trace's first token: history_certified, its certified horizon; per step t, history_worst
    [G] the least certified margin lower bound (over every history of t − 1 tokens),
    history_margin [G] the reference margin (top-1 − top-2), history_bound [G] its bound on the
    margin change (NEAR tokens) and history_change [G] the change measured on the real trace's
    history (the same query while the trace follows the orbit, t ≤ agreement; NaN after)."""
    h = history_horizon(model, prompt, int(trace[0]), len(trace), prefix)
    b, G = h.bound, len(trace)
    rows = np.arange(G)[:, None]
    measured = np.abs(change[rows, b.near]).max(1)
    measured[min(agreement, G):] = np.nan
    margin = b.margin.copy()
    margin[np.arange(G), b.top] = np.inf
    return dict(history_certified=h.horizon, history_orbit=h.orbit, history_worst=b.worst,
                history_margin=margin.min(1), history_bound=b.change[rows, b.near].max(1),
                history_change=measured)


def theorem(weights, floor: float, margin: float, G: int) -> dict:
    """The weight-only bound without and with the measured rms floor: score range S, gain and
    n₀(G, margin) of the degeneration theorem, per floor."""
    bounds = [uniform_bound(weights, rms_floor=f) for f in (0.0, floor)]
    return dict(rms_floor=[b.rms_floor for b in bounds],
                score_range=[b.score_range for b in bounds], gain=[b.gain for b in bounds],
                n0=[b.n0(G, margin) for b in bounds], margin=margin)


def prompt_theorem(weights, units: dict, floor: float, margin: float, G: int) -> dict:
    """Per bounded unit (n, prompt) that stored its prefix_lse and per rms floor (0, the measured
    one): the prompt-dependent n₀(P) of the degeneration theorem (`UniformBound.prompt_n0`, the
    measured Z′_P in place of (n + 1) e^{−S/2}) beside the weight-only n₀, same margin."""
    keys = [key for key, u in units.items() if "prefix_lse" in u]
    bounds = [uniform_bound(weights, rms_floor=f) for f in (0.0, floor)]
    return dict(n=[n for n, _ in keys], prompt=[k for _, k in keys],
                rms_floor=[b.rms_floor for b in bounds],
                n0=[b.n0(G, margin) for b in bounds],
                n0_prompt=[[b.prompt_n0(G, margin, units[key]["prefix_lse"], key[0])
                            for key in keys] for b in bounds])


def run(run: Run, config: Config, progress: bool = True) -> None:
    """The units not yet stored (one per n and prompt, then the weight-only theorem), then the
    tables from the stored units."""
    model = functools.cache(lambda: load(config.model, seed=config.seed))  # only if needed
    weights = functools.cache(lambda: weight_constants(model()))

    def compute(n: int, k: int) -> dict:
        prompt = make_prompt(model().config.vocab_size, n, k)
        return measure(model(), weights(), prompt, config.G, bucket(max(config.lengths)),
                       k < config.certified)

    keys = [(n, k) for n in config.lengths for k in range(config.prompts)]
    run.fill(keys, unit_name, compute, "dilution", progress)
    units = {key: run.load(unit_name(*key)) for key in keys}
    bounded = {key: u for key, u in units.items() if key[1] < config.certified}
    if not run.has("theorem"):
        floor = min(float(u["floor"]) for u in bounded.values())
        # the theorem needs the margin at every visited token: the smallest along the traces
        margin = float(np.min(np.concatenate([u["margin"] for u in units.values()])))
        run.save("theorem", **theorem(weights(), floor, margin, config.G))
    if not run.has("theorem_prompt"):
        t = run.load("theorem")
        run.save("theorem_prompt", **prompt_theorem(weights(), bounded, float(t["rms_floor"][1]),
                                                     float(t["margin"]), config.G))
    rows = [unit_row(n, k, u) for (n, k), u in units.items()]
    bound_rows = [bound_row(n, k, u) for (n, k), u in bounded.items()]
    run.write_table("units", rows)
    run.write_table("bounds", bound_rows)
    run.write_table("summary", summary(rows, bound_rows))
    run.write_table("layers", layer_rows(bounded))
    history = history_rows(bounded)
    if history:  # a family the history-uniform certificate refuses has none
        run.write_table("history", history)
    run.write_table("theorem", theorem_rows(run.load("theorem"), config.G))
    run.write_table("theorem_prompt", prompt_rows(run.load("theorem_prompt"), config.lengths))


# --- tables ------------------------------------------------------------------------------------


def uniform_mass(n: int, G: int) -> np.ndarray:
    """[G]: a(R) under uniform attention at steps r = 0..G−1, r/(n + r + 1)."""
    r = np.arange(G)
    return r / (n + r + 1)


def excess(mass: np.ndarray, n: int) -> float:
    """The excess concentration of a unit's mass [G, L, N]: a_t(R) over its uniform value,
    mean over the steps with r ≥ 1, layers and heads."""
    return float((mass[1:] / uniform_mass(n, len(mass))[1:, None, None]).mean())


def ratios(bound: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """bound / measured over the steps with r ≥ 1 generated keys (step 1 has none: both 0)."""
    return (bound[1:] / measured[1:]).ravel()


def unit_row(n: int, k: int, u: dict) -> dict:
    """One (n, prompt): a(R) (max over layers and heads) at r = 1 and at the last step, its mean
    over layers and heads at the last step and the uniform value there, the excess
    concentration, the logit change at r = 1 and at the last step, the measured horizon."""
    mass = u["mass"].max((1, 2))
    return dict(n=n, prompt=k, mass_r1=mass[1], mass_last=mass[-1],
                mass_mean_last=u["mass"][-1].mean(),
                uniform_last=uniform_mass(n, len(mass))[-1], excess=excess(u["mass"], n),
                logit_r1=u["logit_change"][1], logit_last=u["logit_change"][-1],
                median_margin=np.median(u["margin"]), agreement=int(u["agreement"]))


def violations(bound: np.ndarray, measured: np.ndarray, rounding=0.0) -> int:
    """Entries of the steps with r ≥ 1 where measured > bound (1 + RTOL) + rounding."""
    return int((measured[1:] > bound[1:] * (1 + RTOL) + rounding).sum())


def bound_row(n: int, k: int, u: dict) -> dict:
    """One bounded (n, prompt): the bounds at r = 1 and at the last step, the median (and max)
    bound/measured ratios over r ≥ 1, the comparisons made and violated, the float32 rounding
    level of the logits (their change at r = 0), the certified and measured horizons; the margin
    certificate's horizons (rigorous, estimate), its median bound/measured ratio
    over r ≥ 1 (NEAR tokens) and its enclosure violations (NaN for units stored before it)."""
    mass_bound = u["mass_bound"].max((1, 2))
    mass_ratio = ratios(u["mass_bound"], u["mass"])
    compared = sum(x[1:].size for x in (u["mass"], u["logit_change"], u["residual"]))
    return dict(
        n=n, prompt=k, mass_bound_r1=mass_bound[1], mass_bound_last=mass_bound[-1],
        logit_bound_r1=u["logit_bound"][1], logit_bound_last=u["logit_bound"][-1],
        mass_ratio=np.median(mass_ratio), mass_ratio_max=mass_ratio.max(),
        logit_ratio=np.median(ratios(u["logit_bound"], u["logit_change"])),
        compared=compared,
        violations=violations(u["mass_bound"], u["mass"])
        + violations(u["logit_bound"], u["logit_change"], u["logit_change"][0])
        + violations(u["residual_bound"], u["residual"], u["residual"][0]),
        rounding=u["logit_change"][0], certified=int(u["certified"]),
        agreement=int(u["agreement"]), **margin_columns(u))


def margin_columns(u: dict) -> dict:
    """The margin certificate's columns of `bound_row` (NaN where the unit predates it)."""
    if "margin_certified" not in u:
        return dict.fromkeys(("margin_certified", "margin_estimated", "margin_ratio",
                              "margin_violations"), np.nan)
    return dict(margin_certified=int(u["margin_certified"]),
                margin_estimated=int(u["margin_estimated"]),
                margin_ratio=np.median(ratios(u["margin_bound"], u["margin_change"])),
                margin_violations=int(u["margin_violations"]))


def history_rows(units: dict) -> list[dict]:
    """Per bounded (n, prompt) with the history-uniform certificate: the start token, its
    certified history-uniform horizon beside the measured agreement and the old and margin
    certified horizons; the least certified margin lower bound against the reference margin
    at r = 1 and at the last step; the median bound/measured margin change over the steps
    2..agreement (measured on the real trace's history)."""
    out = []
    for (n, k), u in sorted(units.items()):
        if "history_certified" not in u:
            continue
        ratio = u["history_bound"][1:] / u["history_change"][1:]
        ratio = ratio[np.isfinite(ratio)]
        out.append(dict(n=n, prompt=k, start=int(u["trace"][0]),
                        history_certified=int(u["history_certified"]),
                        agreement=int(u["agreement"]), certified=int(u["certified"]),
                        margin_certified=int(u["margin_certified"]),
                        worst_r1=float(u["history_worst"][1]),
                        margin_r1=float(u["history_margin"][1]),
                        worst_last=float(u["history_worst"][-1]),
                        margin_last=float(u["history_margin"][-1]),
                        history_ratio=float(np.median(ratio)) if ratio.size else np.nan))
    return out


def summary(rows: list[dict], bound_rows: list[dict]) -> list[dict]:
    """Per n: the mean over prompts of every column of `unit_row`, and over the bounded
    prompts of every column of `bound_row` (agreement: of all prompts)."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        row = {"n": n}
        for name, table in (("prompts", rows), ("bounded", bound_rows)):
            sel = [r for r in table if r["n"] == n]
            row[name] = len(sel)
            row.update({k: float(np.mean([r[k] for r in sel])) for k in sel[0]
                        if k not in ("n", "prompt") and k not in row})
        out.append(row)
    return out


def layer_rows(units: dict) -> list[dict]:
    """Per n and layer: bound / measured ‖x_l − x′_l‖ at r = 1 and at the last step, geometric
    mean over the bounded prompts: where in the network the bound loses its tightness."""
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


def prompt_rows(t: dict, lengths) -> list[dict]:
    """Per n and rms floor: the weight-only n₀ and the prompt-dependent n₀(P), max over the
    bounded prompts of that n (NaN where no unit stored prefix_lse), and whether n ≥ n₀(P)."""
    out = []
    for f, n0, per in zip(t["rms_floor"], t["n0"], t["n0_prompt"]):
        for n in lengths:
            sel = [x for m, x in zip(t["n"], per) if m == n]
            worst = max(sel) if sel else np.nan
            out.append(dict(n=n, rms_floor=f, n0=n0, n0_prompt=worst, prompts=len(sel),
                            applies=bool(n >= worst)))
    return out


# --- findings and figures ----------------------------------------------------------------------


def _span(rows: list[dict], key: str, fmt: str = ".2g") -> str:
    """`key` at the smallest and the largest n of the per-n summary."""
    return f"{rows[0][key]:{fmt}} at n={rows[0]['n']} -> {rows[-1][key]:{fmt}} at n={rows[-1]['n']}"


def findings(run: Run) -> list[Finding]:
    rows, bounds = run.read_table("summary"), run.read_table("bounds")
    config, top = run.settings(Config), rows[-1]
    G = config.G
    layers = [r["ratio_r1"] for r in run.read_table("layers") if r["n"] == top["n"]]
    limit = load_config(config.model).max_position_embeddings
    return [
        *measured_findings(run.read_table("units"), G),
        bound_finding(bounds),
        Finding(NAME, "the a(R) bound is tight for long prompts (median bound/measured, r >= 1)",
                f"{_span(rows, 'mass_ratio', '.3g')}: within "
                f"{100 * (top['mass_ratio'] - 1):.2g}% at n={top['n']}", None),
        Finding(NAME, "the logit bound is loose (median bound/measured, r >= 1)",
                f"{_span(rows, 'logit_ratio', '.2g')} (at r=1: "
                f"{top['logit_bound_r1'] / top['logit_r1']:.2g}x at n={top['n']}); "
                f"bound/measured ||x_l - x'_l|| by layer "
                f"at r=1, n={top['n']}: {' '.join(f'{x:.2g}' for x in layers)}", None),
        horizon_finding(bounds, G,
                        run.read_table("history") if run.has_table("history") else []),
        Finding(NAME, "the weight-only n0 of the degeneration theorem (minimum margin along "
                      "the traces); vacuous where it exceeds the model's max positions",
                "; ".join(f"rms floor {r['rms_floor']:.2g}: S={r['score_range']:.2g}, gain "
                          f"{r['gain']:.2g}, n0 = {r['n0']:.2g} (G={G}, margin "
                          f"{r['margin']:.2g}; "
                          f"{'vacuous: ' if r['n0'] > limit else ''}max positions {limit})"
                          for r in run.read_table("theorem")), None),
        Finding(NAME, "the prompt-dependent n0(P) (measured prompt partition functions Z_P in "
                      "place of (n+1) e^(-S/2); never above the weight-only n0): old vs new by n",
                "; ".join(f"rms floor {r['rms_floor']:.2g}, n={r['n']}: {r['n0']:.2g} vs "
                          f"{r['n0_prompt']:.2g}{' (n >= n0(P))' if r['applies'] else ''}"
                          for r in run.read_table("theorem_prompt")), None),
    ]


def measured_findings(units: list[dict], G: int) -> list[Finding]:
    """The decay and uniform claims (module docstring) from the rows of the units table."""
    lengths, mass = by_length(units, "mass_mean_last")
    out = []
    if len(lengths) > 1:
        beta = exponent_estimate(lengths, mass, threshold=DECAY)
        out.append(Finding(
            NAME, f"the generated keys' attention mass a(R) falls like n^-β, β > {DECAY:g} "
                  "(proved: a(R) <= r e^S/(r e^S + n + 1), β -> 1; uniform attention: β = 1)",
            f"β = {beta.text()}, jackknife-t over {len(mass[0])} prompts per n; a(R) at step "
            f"G={G}, mean over layers and heads: {mass[0].mean():.2g} at n={lengths[0]} -> "
            f"{mass[-1].mean():.2g} at n={lengths[-1]}", beta.verdict, test=beta.test))
    n, excess = lengths[-1], by_length(units, "excess")[1][-1]
    ratio = prompt_estimate((excess,), np.mean, EXCESS, "below")
    out.append(Finding(
        NAME, f"no excess concentration: at n={n} the generated keys get less than {EXCESS:g}x "
              "their share under uniform attention, r/(n+r+1) (measured; the argument needs "
              "only a ratio bounded in n, <= e^S, proved)",
        f"a(R) / uniform = {ratio.text('.3f')}, mean over r >= 1, layers, heads; jackknife-t over "
        f"{len(excess)} prompts", ratio.verdict, test=ratio.test))
    return out


def bound_finding(bounds: list[dict]) -> Finding:
    """Measured ≤ bound on every comparison of every bounded trace (`violations`); with no
    comparison, inconclusive."""
    bad, total = sum(r["violations"] for r in bounds), sum(r["compared"] for r in bounds)
    return Finding(
        NAME, "the multi-layer bound is above the measured a(R), ||x_l - x'_l|| and logit "
              f"change on every step with r >= 1, layer and head (proved; float32 rounding: "
              f"{RTOL:g} of the bound, and the level measured at r = 0)",
        f"{bad} of {total} comparisons violated, {len(bounds)} traces; rounding level of the "
        f"logits up to {max((r['rounding'] for r in bounds), default=0):.1g}",
        bad == 0 if total else INCONCLUSIVE, kind=CHECK)


def horizon_finding(bounds: list[dict], G: int, history: list[dict] = ()) -> Finding:
    """Certified ≤ measured horizon on every bounded trace, for the old, the margin and the
    history-uniform certificates (rows of the `history` table), and the margin enclosure never
    violated; with no bounded trace, inconclusive. The measured line gives, per n, the old /
    margin (rigorous) / estimated horizons against the measured one (means over the bounded
    prompts) and the margin bound/measured ratio, then the history-uniform horizons."""
    claim = ("the certified horizon never exceeds the measured agreement horizon (proved; old "
             "certificate max_v |dlogit_v| < margin/2, margin certificate, whose enclosure "
             "of every measured margin change must hold, and history-uniform certificate)")
    if not bounds:
        return Finding(NAME, claim, "no bounded trace", INCONCLUSIVE, kind=CHECK)
    # a trace counts once, whichever of its certificates exceeds the measured horizon
    bad = len({(r["n"], r.get("prompt")) for r in bounds
               if r["certified"] > r["agreement"] or r.get("margin_certified", 0) > r["agreement"]
               or r.get("margin_violations", 0) > 0}
              | {(r["n"], r.get("prompt")) for r in history
                 if r["history_certified"] > r["agreement"]})

    def mean(rows, key):
        return np.mean([r.get(key, np.nan) for r in rows])

    per_n = "; ".join(
        f"n={n}: {mean(sel, 'certified'):.1f} / {mean(sel, 'margin_certified'):.1f} / "
        f"{mean(sel, 'margin_estimated'):.1f} vs {mean(sel, 'agreement'):.1f} (margin "
        f"bound/measured {mean(sel, 'margin_ratio'):.2g})"
        for n in sorted({r["n"] for r in bounds}) for sel in [[r for r in bounds if r["n"] == n]])
    return Finding(
        NAME, claim, f"{bad} of {len(bounds)} traces exceed it; certified "
        f"{mean(bounds, 'certified'):.1f} (old), {mean(bounds, 'margin_certified'):.1f} (margin; "
        f"estimate, not proved: {mean(bounds, 'margin_estimated'):.1f}) vs measured "
        f"{mean(bounds, 'agreement'):.1f} steps of G={G} (mean); old / margin / estimate vs "
        f"measured by n: {per_n}{history_line(history)}", bad == 0, kind=CHECK)


def history_line(history: list[dict]) -> str:
    """'; history-uniform certified vs measured by n: ...' (means over prompts), or ''."""
    if not history:
        return ""
    return "; history-uniform certified vs measured by n: " + "; ".join(
        f"n={n}: {np.mean([r['history_certified'] for r in sel]):.1f} vs "
        f"{np.mean([r['agreement'] for r in sel]):.1f}"
        for n in sorted({r["n"] for r in history})
        for sel in [[r for r in history if r["n"] == n]])


OFF_SCALE = 1e4  # the logit panel shows bounds up to this many times the largest measured value


def figures(run: Run):
    rows = run.read_table("summary")
    n, G = [r["n"] for r in rows], run.settings(Config).G
    fig, axes = figstyle.figure(ncols=3, width=figstyle.FULL, aspect=0.85)
    mass, logit, horizon = axes[0]
    for ax, key in ((mass, "mass"), (logit, "logit")):
        for step, colour, r in (("r1", figstyle.OTHERS[0], 1), ("last", figstyle.OTHERS[1],
                                                                G - 1)):
            ax.plot(n, [row[f"{key}_{step}"] for row in rows], "o-", color=colour,
                    label=f"measured, r = {r}")
            ax.plot(n, [row[f"{key}_bound_{step}"] for row in rows], "s--", color=colour,
                    label=f"bound, r = {r}")
    uniform, = mass.plot(n, [r["uniform_last"] for r in rows], ":", color="0.4",
                         label=f"uniform attention, r = {G - 1}")
    mass.legend(handles=[uniform], loc="lower left")
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
    horizon.plot(n, [r["agreement"] for r in rows], "o-", color=figstyle.OTHERS[2],
                 label="measured agreement")
    horizon.plot(n, [r["certified"] for r in rows], "s--", color=figstyle.OTHERS[3],
                 label="certified (old)")
    if all("margin_certified" in r for r in rows):
        horizon.plot(n, [r["margin_certified"] for r in rows], "^--", color=figstyle.OTHERS[4],
                     label="certified (margin)")
        horizon.plot(n, [r["margin_estimated"] for r in rows], "v:", color=figstyle.OTHERS[4],
                     label="estimate (not proved)")
    horizon.axhline(G, color="0.5", linewidth=0.6, linestyle=":")
    horizon.set_ylim(0, G * 1.05)
    horizon.set_ylabel("steps (mean over prompts)")
    horizon.set_title(f"horizon (of G = {G})")
    horizon.legend(loc="center right")
    return figstyle.save(fig, run.figures, "e3_dilution")
