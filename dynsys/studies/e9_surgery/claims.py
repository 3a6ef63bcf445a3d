"""E9's findings, read from a run's tables and units: the descriptive rows (rates per kind,
the best ablation, the two attribution methods' overlap) and claims (a)-(e) of the package
docstring, each on its 95% interval (`dynsys.stats`)."""

from __future__ import annotations

import numpy as np

from dynsys.runs import Run
from dynsys.stats import bootstrap_distribution, bootstrap_test, interval_test, paired_test
from dynsys.studies.e9_surgery.config import BREAKERS, LEVEL, NAME, Config, breaker_unit, fix_unit
from dynsys.studies.e9_surgery.study import ranked
from dynsys.studies.e9_surgery.tables import evaluation_traces, loss_interval
from dynsys.studies.finding import CHECK, TEST, Finding
from dynsys.surgery.loops import looping


def rate_finding(claim: str, before: np.ndarray, after: np.ndarray, kind: str = TEST
                 ) -> Finding:
    """"`claim`: the loop rate is lower after than before" on paired flags: the paired
    difference after − before on Tango's score interval, below 0."""
    test = paired_test(after, before, 0.0, "below", LEVEL)
    lo, hi = test.interval
    return Finding(NAME, claim + " (null: no change)",
                   f"loop rate {np.mean(before):.2f} -> {np.mean(after):.2f}; paired "
                   f"difference {test.estimate:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                   f"n={np.size(after)} test prompts", test.verdict, kind=kind, test=test)


def loss_finding(claim: str, delta: np.ndarray, tolerance: float) -> Finding:
    """"`claim`: the held-out loss rises by less than `tolerance`" from the per-window
    changes: the paired t interval of their mean (loss_interval), below `tolerance`."""
    delta = np.asarray(delta, np.float64)
    test = interval_test(delta.mean(), lambda level: loss_interval(delta, level), delta.size,
                         tolerance, "below", LEVEL)
    lo, hi = test.interval
    return Finding(NAME, claim + f" (null: a rise of at least {tolerance:g} nats)",
                   f"held-out loss change {np.mean(delta):+.4f} [{lo:+.4f}, {hi:+.4f}] "
                   f"nats/token (paired t), n={np.size(delta)} windows", test.verdict,
                   test=test)


def stay_finding(claim: str, near: np.ndarray, threshold: float, near_steps: int,
                 resamples: int, seed: int, reference: float | None = None) -> Finding:
    """"`claim`: the trace stays near the attractor" from the share of steps within
    `near_steps` of C* per map prompt: the mean with a percentile bootstrap interval over
    map prompts, above `threshold` (one value for every prompt: that value as the interval;
    under 2 prompts: [0, 1]). `reference`: the same share of the unedited greedy traces (its
    transient counts), reported beside it."""
    near = np.asarray(near, np.float64)
    if near.size < 2 or np.ptp(near) == 0:
        fixed = (float(near.mean()),) * 2 if near.size >= 2 else (0.0, 1.0)
        test = interval_test(near.mean(), lambda level: fixed, near.size, threshold, "above",
                             LEVEL)
    else:
        test = bootstrap_test(near.mean(), bootstrap_distribution(near, np.mean, resamples,
                                                                   seed),
                              near.size, threshold, "above", LEVEL)
    interval = test.interval
    return Finding(NAME, claim + f" (null: at most {threshold:g} of the steps)",
                   f"share of steps within {near_steps} step(s) of C* {near.mean():.2f} "
                   f"[{interval[0]:.2f}, {interval[1]:.2f}] (bootstrap), n={near.size} map "
                   "prompts" + ("" if reference is None else
                                f"; the unedited greedy traces {reference:.2f}"),
                   test.verdict, test=test)


def findings(run: Run) -> list[Finding]:
    config = run.settings(Config)
    out = []
    rows = run.read_table("prompts")
    out.append(Finding(NAME, "greedy traces of the trained model per prompt kind: loop rate, "
                             "list-collapse rate, and where the repetition detector would stop",
                       "; ".join(f"{r['kind']}: loop {r['loop_rate']:.2f} [{r['loop_rate_lo']:.2f}"
                                 f", {r['loop_rate_hi']:.2f}], collapse "
                                 f"{r['collapse_rate']:.2f}, stopped {r['stop_rate']:.2f} "
                                 f"(median step {r['stop_median']:.0f}, "
                                 f"{r['stopped_not_loops']} non-looping)" for r in rows),
                       None))
    sweep = run.read_table("ablation")
    best = min(sweep, key=lambda r: (r["change"], r["layer"]))
    out.append(Finding(NAME, "the zero ablation that lowers the loop rate most (localisation "
                             "prompts)",
                       f"layer {best['layer']} {best['component']}: {best['base_rate']:.2f} -> "
                       f"{best['rate']:.2f}, paired {best['change']:+.3f} "
                       f"[{best['change_lo']:+.3f}, {best['change_hi']:+.3f}], n={best['n']}",
                       None))
    found = run.load("attribution")
    if found["used"].size:
        n = max(config.ks)
        top = {m: set(ranked(found, m)[:n]) for m in ("grad_x_act", "onset_diff")}
        out.append(Finding(NAME, f"the top-{n} neurons of the two attribution methods "
                                 "(activation x gradient of the loop margin, onset difference)",
                           f"{len(top['grad_x_act'] & top['onset_diff'])} of {n} shared; "
                           f"scores from {found['used'].size} looping localisation traces",
                           None))
    ks = sorted(config.ks)
    top = max((k for k in ks if run.has(fix_unit("zero", k))), default=None)
    if top is not None:
        u = run.load(fix_unit("zero", top))
        out.append(rate_finding(f"zeroing the top-{top} neurons ({config.method}) lowers "
                                "the loop rate on held-out test prompts",
                                u["loop_before"], u["loop_after"]))
        out.append(loss_finding(f"zeroing the top-{top} neurons raises the held-out loss by "
                                f"less than {config.loss_tolerance:g} nats per token",
                                u["loss_after"] - u["loss_before"], config.loss_tolerance))
        if "random" in config.ops:
            r = run.load(fix_unit("random", top))
            test = paired_test(u["loop_after"], r["loop_after"], 0.0, "below", LEVEL)
            out.append(Finding(
                NAME, f"the top-{top} neurons matter more than {top} random ones: zeroing them "
                      "leaves a lower loop rate (null: the same)",
                f"loop rate {r['loop_after'].mean():.2f} (random) vs "
                f"{u['loop_after'].mean():.2f} (top); paired difference {test.estimate:+.3f} "
                f"[{test.interval[0]:+.3f}, {test.interval[1]:+.3f}], "
                f"n={u['loop_after'].size}", test.verdict, test=test))
    else:
        out.append(Finding(NAME, "weight edits of the top neurons", "no localisation trace "
                           "loops: no candidates, no edits", None))
    reference = np.mean([r["near"] for r in run.read_table("attractors")
                         if r["fix"] == "unedited"])
    before = looping(evaluation_traces(run.load("base"), config.prompts // 2), config.repeats)
    for name in BREAKERS:
        u = run.load(breaker_unit(name))
        # no-repeat-ngram forbids repeating an n-gram, and a period p >= 2 repeated three
        # times repeats a trigram: its lower loop rate is a check, and its trace cannot stay
        # on a cycle of f_P (no claim)
        if name == "ngram":
            out.append(rate_finding(f"the breaker {name} lowers the loop rate on held-out test "
                                    "prompts (by construction)", before,
                                    looping(u["traces"], config.repeats), CHECK))
            continue
        out.append(rate_finding(f"the breaker {name} lowers the loop rate on held-out test "
                                "prompts", before, looping(u["traces"], config.repeats)))
        out.append(stay_finding(f"with {name}, the trace from a map prompt stays near the "
                                "attractor of f_P its greedy trace ends in (the breaker changes "
                                f"the loop's surface, not the attractor): more than "
                                f"{config.stay_share:g} of its steps within "
                                f"{config.near_steps} of C*",
                                u["near"], config.stay_share, config.near_steps,
                                config.resamples, config.seed, reference))
    return out
