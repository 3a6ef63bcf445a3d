"""E10's claims, thresholds fixed here before any data, and the rule that turns them into one
answer per model.

Per model, on its primary prompts (models.py):
  dilution   the excess e of the generated tokens (measure.py) stays bounded as n grows:
             the least-squares slope of log(mean e) on log n is below SLOPE, on its
             jackknife-t interval over prompts (prompt k of every n left out together; its
             coverage is simulated in experiments/coverage_e10_slope.py). Recency (the model
             attends to its own recent tokens whatever the prompt length) makes e grow like
             n: slope near 1.
  agreement  at the largest n, more than AGREE of the traces take f_{P,t−1}(x_t) on every
             step t = 1..g−1 (g = the config's horizon), exact (Clopper–Pearson) interval
             over prompts: the degeneration theorem's event at n/g as large as the model's
             context allows.
  forcing    forced-Markov decoding (λ = 0: the earlier generated keys masked) and normal
             decoding (λ = 1) loop at rates within MARGIN of each other, on the same prompts:
             paired equivalence, two one-sided score tests (dynsys.stats.paired_equivalence).
             If the loops come from Markov degeneration, forcing it changes them little.
The answer (a description derived from the three verdicts after Holm's correction over E10's
tested claims, as the report corrects them):
  the largest n/g is below REGIME     cannot tell here: not in the argument's regime
  any claim fails                     the argument fails here (naming the claims)
  all three hold                      the argument holds here
  otherwise                           cannot tell here (naming the undecided claims)
"""

from __future__ import annotations

import functools

import numpy as np

from dynsys.stats import (
    FAILS,
    HOLDS,
    adjusted_verdict,
    holm,
    paired_equivalence,
    proportion_interval,
    proportion_test,
)
from dynsys.studies.e10_regime.measure import MEMORY
from dynsys.studies.e10_regime.tables import select
from dynsys.studies.finding import DESCRIBE, Finding
from dynsys.studies.sweep import by_length, prompt_estimate

NAME = "e10"
SLOPE = 0.5  # dilution: the slope of log e on log n is below this
AGREE = 0.9  # agreement: the share of traces following f_{P,t−1} at the largest n is above this
MARGIN = 0.1  # forcing: |loop share forced − loop share normal| is below this
REGIME = 100  # the answer needs n/g at least this
CLAIMS = ("dilution", "agreement", "forcing")


def slope(lengths, columns: tuple[np.ndarray, ...]) -> float:
    """The least-squares slope of log(mean of each column) on log n."""
    return float(np.polyfit(np.log(lengths), np.log([c.mean() for c in columns]), 1)[0])


def _slope_of(lengths, *columns: np.ndarray) -> float:
    return slope(lengths, columns)


def dilution(model: str, rows: list[dict]) -> Finding:
    """The dilution claim on the prompts-table rows of one model and kind."""
    lengths, columns = by_length(rows, "excess")
    if len(lengths) < 2:
        return Finding(NAME, _claim(model, "dilution"), f"one prompt length ({lengths[0]}): "
                       "no slope", "not testable here", kind="test")
    found = prompt_estimate(columns, lambda *c: slope(lengths, c), SLOPE, side="below")
    e = [c.mean() for c in columns]
    return Finding(NAME, _claim(model, "dilution"),
                   f"slope {found.text()}, jackknife-t over {len(columns[0])} prompts; e "
                   f"{e[0]:.2f} at n={lengths[0]} -> {e[-1]:.2f} at n={lengths[-1]}",
                   found.verdict, test=found.test)


def agreement(model: str, rows: list[dict]) -> Finding:
    """The agreement claim on the prompts-table rows of one model and kind."""
    n = max(r["n"] for r in rows)
    sel = select(rows, n=n)
    k, m, g = sum(r["disagree_position"] == 0 for r in sel), len(sel), sel[0]["steps"] + 1
    test = proportion_test(k, m, AGREE)
    lo, hi = test.interval
    return Finding(NAME, _claim(model, "agreement", f" (n={n}, g={g}, n/g={n / g:.0f})"),
                   f"{k}/{m} = {k / m:.2f} [{lo:.2f}, {hi:.2f}] (exact, {m} prompts)",
                   test.verdict, test=test)


def forcing(model: str, rows: list[dict]) -> Finding:
    """The forcing claim on the lambda-table rows of one model (λ = 0 against λ = 1)."""
    forced = [r["period"] > 0 for r in sorted(select(rows, **{"lambda": 0.0}),
                                              key=lambda r: r["prompt"])]
    normal = [r["period"] > 0 for r in sorted(select(rows, **{"lambda": 1.0}),
                                              key=lambda r: r["prompt"])]
    if not forced or not normal:
        return Finding(NAME, _claim(model, "forcing"), "λ = 0 or λ = 1 was not run",
                       "not testable here", kind="test")
    test = paired_equivalence(forced, normal, MARGIN)
    lo, hi = test.interval
    return Finding(NAME, _claim(model, "forcing"),
                   f"loop share forced {np.mean(forced):.2f}, normal {np.mean(normal):.2f}; "
                   f"difference {test.difference:+.2f} [{lo:+.2f}, {hi:+.2f}] (90% score "
                   f"interval, {test.n} prompts)", test.verdict, test=test.test)


def _claim(model: str, which: str, detail: str = "") -> str:
    text = {"dilution": f"dilution: the excess attention on generated tokens is bounded in n "
                        f"(slope of log e on log n < {SLOPE:g})",
            "agreement": f"agreement: more than {AGREE:g} of the traces follow f_{{P,t−1}} on "
                         f"every step at the largest n/g{detail}",
            "forcing": f"forcing: forced-Markov and normal decoding loop at rates within "
                       f"{MARGIN:g}"}[which]
    return f"{model}: {text}"


def answer(model: str, adjusted: dict[str, str], n_over_g: float) -> Finding:
    """The one-line answer for one model (module docstring's rule) from its claims'
    adjusted verdicts."""
    failed = [c for c in CLAIMS if adjusted[c] == FAILS]
    undecided = [c for c in CLAIMS if adjusted[c] != HOLDS and c not in failed]
    if n_over_g < REGIME:
        text = f"cannot tell here: n/g reaches {n_over_g:.0f} < {REGIME}, outside the regime"
    elif failed:
        text = f"the argument fails here ({', '.join(failed)} fails)"
    elif not undecided:
        text = "the argument holds here (dilution, agreement and forcing hold)"
    else:
        text = f"cannot tell here ({', '.join(undecided)} undecided)"
    return Finding(NAME, f"{model}: the answer, by the rule stated in the code",
                   text + "; " + ", ".join(f"{c} {adjusted[c]}" for c in CLAIMS), None,
                   kind=DESCRIBE)


def model_findings(model: str, prompt_rows: list[dict], lambda_rows: list[dict]
                   ) -> dict[str, Finding]:
    """The three tested claims of one model, by name."""
    return {"dilution": dilution(model, prompt_rows),
            "agreement": agreement(model, prompt_rows),
            "forcing": forcing(model, lambda_rows)}


def answers(claims: dict[str, dict[str, Finding]], n_over_g: dict[str, float]
            ) -> list[Finding]:
    """Per model, its answer from the Holm-adjusted verdicts of all models' claims (one
    family: E10's tested claims)."""
    flat = [(model, name, f) for model, found in claims.items() for name, f in found.items()]
    adjusted_p = holm([f.p for _, _, f in flat])
    adjusted = {}
    for (model, name, f), p in zip(flat, adjusted_p):
        adjusted.setdefault(model, {})[name] = adjusted_verdict(f.verdict, p)
    return [answer(model, adjusted[model], n_over_g[model]) for model in claims]


def layer_finding(model: str, rows: list[dict]) -> Finding:
    """Per layer, the slope of log e and of log(sink4 share) on log n with jackknife-t
    intervals over prompts (a description: the claim is on the mean over layers)."""
    parts = []
    for layer in sorted({r["layer"] for r in rows}):
        sel = select(rows, layer=layer)
        estimates = []
        for key in ("excess", "sink4"):
            lengths, columns = by_length(sel, key)
            if len(lengths) < 2:
                return Finding(NAME, f"{model}: per-layer slopes", "one prompt length", None)
            estimates.append(prompt_estimate(
                columns, functools.partial(_slope_of, lengths), SLOPE, side="below").text())
        parts.append(f"layer {layer}: e {estimates[0]}, sink {estimates[1]}")
    return Finding(NAME, f"{model}: slope of log e and of log(sink share, first 4 tokens) on "
                         "log n, per layer (mean over heads; jackknife-t over prompts)",
                   "; ".join(parts), None)


def sampled_finding(model: str, rows: list[dict]) -> Finding:
    """Loop share per sampler with its exact interval, beside the kernel chain's predicted
    share (the mean of the per-prompt predicted probabilities) where it was computed (a
    description)."""
    labels = list(dict.fromkeys(r["sampler"] for r in rows))
    parts = []
    for label in labels:
        sel = select(rows, sampler=label)
        k = sum(r["period"] > 0 for r in sel)
        lo, hi = proportion_interval(k, len(sel))
        predicted = [r["predicted"] for r in sel if r.get("predicted", "") != ""]
        parts.append(f"{label}: {k / len(sel):.2f} [{lo:.2f}, {hi:.2f}]"
                     + (f", kernel chain {np.mean(predicted):.2f}" if predicted else ""))
    return Finding(NAME, f"{model}: loop share of sampled traces, by sampler (exact interval; "
                         "the sampled-decoding theorem's kernel chain's prediction where V is "
                         f"small; {len(select(rows, sampler=labels[0]))} prompts, largest n)",
                   "; ".join(parts), None)


def memory_finding(model: str, rows: list[dict]) -> Finding:
    """The distribution of the smallest explaining memory k over the greedy steps at the
    largest n (a description)."""
    parts = [f"k={r['k']}: {r['steps']:.2f}" if r["k"] else f"none up to {MEMORY}: "
             f"{r['steps']:.2f}" for r in sorted(rows, key=lambda r: (r["k"] == 0, r["k"]))]
    return Finding(NAME, f"{model}: the smallest memory k (the prompt and the last k generated "
                         "tokens at their real positions) that gives each greedy step's token, "
                         "share of steps at the largest n",
                   "; ".join(parts) + f"; traces with k = 1 at every step "
                   f"{rows[0]['traces_k1']:.2f}; terminal cycles that are cycles of f_P "
                   f"{rows[0].get('cycles_of_map', '-')}/{rows[0].get('looping', '-')} looping "
                   "traces", None)
