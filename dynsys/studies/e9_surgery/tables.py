"""E9's tables, from the stored units: prompts (rates per kind and the repetition detector),
provenance, ablation (the sweep's rows, `dynsys.surgery.ablation.Sweep.table`), neurons,
fixes (per fix, quantity and kind, `dynsys.surgery.judge.RateChange.row`, with the held-out
loss change), attractors (per fix and map prompt) and maps."""

from __future__ import annotations

import numpy as np

from dynsys.dynamics.traces import repetition_stop
from dynsys.runs import Run
from dynsys.stats import mean_interval, proportion_interval
from dynsys.studies.e9_surgery.config import (
    ATTRACTOR_STATS,
    BREAKERS,
    KINDS,
    LEVEL,
    Config,
    breaker_unit,
    fix_unit,
)
from dynsys.surgery.ablation import Sweep
from dynsys.surgery.attractors import attractors, surface
from dynsys.surgery.judge import RateChange, collapsing
from dynsys.surgery.loops import LoopRate, looping


def evaluation_traces(traces: dict, half: int) -> np.ndarray:
    """The test prompts' traces: each kind's traces from index `half` on, kinds in order."""
    return np.concatenate([traces[kind][half:] for kind in KINDS])


def rate_row(flags: np.ndarray) -> dict:
    lo, hi = proportion_interval(int(flags.sum()), flags.size, LEVEL)
    return {"rate": float(flags.mean()), "rate_lo": lo, "rate_hi": hi}


def write_tables(run: Run, config: Config, unit: dict, traces: dict, found: dict,
                 ranking: list, fixes: list, delimiter) -> None:
    k, G, half = config.repeats, config.G, config.prompts // 2
    rows = []
    for kind in KINDS:
        x = traces[kind]
        loops = looping(x, k)
        stop = repetition_stop(x, config.stop_min_pattern,
                               min(config.stop_max_pattern, G // config.stop_min_count),
                               config.stop_min_count)
        stopped = stop < G
        collapse = (collapsing(x, delimiter, config.collapse_window) if delimiter is not None
                    else np.zeros(len(x), bool))
        rows.append({"kind": kind, "prompts": len(x), "prompt_tokens": unit[kind].shape[1],
                     **{f"loop_{c}": v for c, v in rate_row(loops).items()},
                     **{f"collapse_{c}": v for c, v in rate_row(collapse).items()},
                     "loop_rate_localise": float(loops[:half].mean()),
                     "loop_rate_test": float(loops[half:].mean()),
                     **{f"stop_{c}": v for c, v in rate_row(stopped).items()},
                     "stop_median": float(np.median(stop[stopped])) if stopped.any() else np.nan,
                     "stopped_loops": int((stopped & loops).sum()),
                     "stopped_not_loops": int((stopped & ~loops).sum()),
                     "tokens_saved": float((G - stop).mean() / G)})
    run.write_table("prompts", rows)
    run.write_table("provenance", [{"list_heldout": int(unit["list_heldout"]),
                                    "list_fresh": int(unit["list_fresh"]),
                                    "delimiters": int(unit["delimiter"].size),
                                    "dry_breakers": " ".join(map(str, unit["dry_breakers"])),
                                    "windows": len(unit["windows"]),
                                    "text_sha256": str(unit["text_sha256"])}])
    stored = run.load("ablation")
    sweep = Sweep.of(LoopRate.of_loops(stored["base"]),
                     [(layer, config.components[c], "zero", LoopRate.of_loops(loops))
                      for layer, c, loops in zip(stored["layer"], stored["component"],
                                                 stored["loops"])])
    run.write_table("ablation", [{**row, "base_rate": sweep.base.rate}
                                 for row in sweep.table()[1:]])  # [0]: the unablated rate
    if ranking:
        run.write_table("neurons", [
            {"rank": r, "layer": layer, "neuron": j,
             "grad_x_act": float(found["grad_x_act"][layer, j]),
             "onset_diff": float(found["onset_diff"][layer, j])}
            for r, (layer, j) in enumerate(ranking[:max(config.ks)], 1)])
    test_kinds = np.repeat(KINDS, config.prompts - half)
    fix_rows, attractor_rows = [], []
    for op, kk in fixes:
        u = run.load(fix_unit(op, kk))
        delta = u["loss_after"] - u["loss_before"]
        lo, hi = loss_interval(delta)
        fix_rows += [{**row, "loss_before": float(u["loss_before"].mean()),
                      "loss_change": float(delta.mean()), "loss_lo": lo, "loss_hi": hi}
                     for row in fix_table(op, kk, u, test_kinds)]
        attractor_rows += attractor_table(op, kk, u)
    base = run.load("maps")
    test_traces = evaluation_traces(traces, half)
    for name in BREAKERS:
        u = run.load(breaker_unit(name))
        u = {"loop_before": looping(test_traces, k), "loop_after": looping(u["traces"], k),
             **({"collapse_before": collapsing(test_traces, delimiter, config.collapse_window),
                 "collapse_after": collapsing(u["traces"], delimiter, config.collapse_window)}
                if delimiter is not None else {}), **u}
        fix_rows += [{**r, "loss_before": np.nan, "loss_change": 0.0, "loss_lo": 0.0,
                      "loss_hi": 0.0} for r in fix_table(name, 0, u, test_kinds)]
        attractor_rows += attractor_table(name, 0, u)
    reference = surface_arrays([surface(f, g, g[None], "unedited", config.near_steps)
                                for f, g in zip(base["next"], base["greedy"])])
    run.write_table("fixes", fix_rows)
    run.write_table("attractors", attractor_table("unedited", 0, reference) + attractor_rows)
    base_att = [attractors(f) for f in base["next"]]
    run.write_table("maps", [{"map": i, "prompt": int(j), "kind": test_kinds[j],
                              "loops": bool(looping(base["greedy"][i:i + 1], k)[0]),
                              **{s: getattr(a, s) for s in ATTRACTOR_STATS}}
                             for i, (j, a) in enumerate(zip(base["chosen"], base_att))])


def fix_table(fix: str, k: int, u: dict, kinds: np.ndarray) -> list[dict]:
    """Per quantity (loop, collapse) and kind (and all kinds): the rate before and after on
    the test prompts and the paired change."""
    rows = []
    for quantity in ("loop", "collapse"):
        if f"{quantity}_before" not in u:
            continue
        for kind in (*KINDS, "all"):
            sel = np.ones(len(kinds), bool) if kind == "all" else kinds == kind
            change = RateChange.of(quantity, u[f"{quantity}_before"][sel],
                                   u[f"{quantity}_after"][sel])
            rows.append({"fix": fix, "k": k, "kind": kind, **change.row()})
    return rows


def attractor_table(fix: str, k: int, u: dict) -> list[dict]:
    """Per map prompt: f_P's cycles, cyclic points and largest basin before and after (edits
    only; a breaker leaves f_P as it is) and where the fixed trace walks relative to C*."""
    rows = []
    for i in range(len(u["on"])):
        row = {"fix": fix, "k": k, "map": i, "on": float(u["on"][i]),
               "near": float(u["near"][i]), "elsewhere": float(u["elsewhere"][i])}
        for stat in ATTRACTOR_STATS:
            row[f"{stat}_before"] = int(u[f"before_{stat}"][i]) if f"before_{stat}" in u else -1
            row[f"{stat}_after"] = int(u[f"after_{stat}"][i]) if f"after_{stat}" in u else -1
        row["vanished"] = int(u["vanished"][i]) if "vanished" in u else 0
        row["appeared"] = int(u["appeared"][i]) if "appeared" in u else 0
        rows.append(row)
    return rows


def loss_interval(delta: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The paired t interval of the mean of `delta` (as dynsys.surgery.judge's), [0, 0] when
    every difference is 0."""
    if not np.asarray(delta).any():
        return 0.0, 0.0
    return mean_interval(delta, level)


def surface_arrays(surfaces) -> dict:
    """The shares of steps on C*, near it and in another basin, per map prompt."""
    return {"on": np.array([s.on for s in surfaces]), "near": np.array([s.near for s in surfaces]),
            "elsewhere": np.array([s.elsewhere for s in surfaces])}
