"""E9's run: the units in order (prompts, greedy traces, the ablation sweep, the attribution,
the unedited model's Markov maps and baseline, one unit per weight edit and per breaker), then
the tables. Every fix is judged against one stored baseline of the unedited model
(dynsys.surgery.judge.Baseline): its test traces, window losses and maps are computed once."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dynsys.decode import generate
from dynsys.dynamics.markov import markov_map
from dynsys.io import load
from dynsys.runs import Run
from dynsys.studies.e9_surgery.config import (
    ATTRACTOR_STATS,
    ATTRIBUTION_BATCH,
    BREAKERS,
    KINDS,
    Config,
    breaker_unit,
    fix_unit,
)
from dynsys.studies.e9_surgery.prompts import halves, map_choice, prompt_unit
from dynsys.studies.e9_surgery.tables import evaluation_traces, surface_arrays, write_tables
from dynsys.studies.training import checkpoints, write_training_tables
from dynsys.surgery import NeuronEdit, ablation_sweep, apply_edit, judge, neuron_attribution
from dynsys.surgery.attractors import surface
from dynsys.surgery.judge import Baseline
from dynsys.surgery.loops import looping


def run(run: Run, config: Config, progress: bool = True) -> None:
    saved = checkpoints(run, config, progress)
    final = saved[-1][1]
    model = functools.cache(lambda: load(final))
    run.fill([()], lambda: "prompts", lambda: prompt_unit(run, config), "E9 prompts", progress)
    unit = run.load("prompts")
    loc, test, test_kinds = halves(config, unit)
    G, k = config.G, config.repeats
    delimiter = unit["delimiter"] if unit["delimiter"].size else None

    def base() -> dict:
        return {kind: np.asarray(generate(model(), list(unit[kind]), G).tokens) for kind in KINDS}

    run.fill([()], lambda: "base", base, "E9 greedy traces", progress)
    traces = run.load("base")
    half = config.prompts // 2
    loc_traces = np.concatenate([traces[kind][:half] for kind in KINDS])
    test_traces = evaluation_traces(traces, half)

    def ablation() -> dict:
        sweep = ablation_sweep(model(), loc, G, config.components, "zero", k=k)
        return {"base": sweep.base.loops,
                "layer": np.array([r.layer for r in sweep.rows]),
                "component": np.array([config.components.index(r.component)
                                       for r in sweep.rows]),
                "loops": np.stack([r.result.loops for r in sweep.rows])}

    def attribution() -> dict:
        found = neuron_attribution(model(), loc, loc_traces, k=k, batch=ATTRIBUTION_BATCH)
        return {"grad_x_act": found.grad_x_act, "onset_diff": found.onset_diff,
                "used": found.used, "period": found.period, "onset": found.onset,
                "margin": found.margin}

    run.fill([()], lambda: "ablation", ablation, "E9 ablation sweep", progress)
    if looping(loc_traces, k).any():
        run.fill([()], lambda: "attribution", attribution, "E9 attribution", progress)
    else:  # nothing loops: no candidates (the edits are skipped, the breakers still run)
        run.fill([()], lambda: "attribution", lambda: {"used": np.zeros(0, np.int64)},
                 "E9 attribution", progress)
    found = run.load("attribution")
    ranking = ranked(found, config.method) if found["used"].size else []
    control = np.random.default_rng([config.seed, 99]).permutation(config.layers * config.ffn)
    random_pairs = [(int(i // config.ffn), int(i % config.ffn)) for i in control]
    chosen = map_choice(looping(test_traces, k), test_kinds, config.maps)
    map_prompts = [test[i] for i in chosen]

    def maps() -> dict:
        nexts = np.stack([markov_map(model(), p, progress=False).next for p in map_prompts])
        return {"chosen": chosen, "next": nexts,
                "greedy": np.stack([np.asarray(generate(model(), [p], G).tokens)[0]
                                    for p in map_prompts])}

    def unedited() -> dict:  # the rest of the baseline every fix is judged against
        found = Baseline.of(model(), test, G, unit["windows"])
        return {"traces": found.traces, "losses": found.losses}

    run.fill([()], lambda: "maps", maps, "E9 Markov maps", progress)
    run.fill([()], lambda: "baseline", unedited, "E9 baseline", progress)
    base_maps, stored = run.load("maps"), run.load("baseline")
    baseline = Baseline(stored["traces"], stored["losses"], base_maps["next"],
                        base_maps["greedy"])

    def fix(op: str, kk: int) -> dict:
        pairs = (random_pairs if op == "random" else ranking)[:kk]
        after = apply_edit(model(), NeuronEdit(tuple(pairs), "zero" if op == "random" else op))
        found = judge(model(), after, test, G, unit["windows"], map_prompts, baseline=baseline,
                      delimiter=delimiter, window=config.collapse_window,
                      near_steps=config.near_steps, k=k)
        rates = {r.name: r for r in found.rates}
        out = {"neurons": np.array(pairs, np.int64).reshape(-1, 2),
               "loop_before": rates["loop"].flags_before, "loop_after": rates["loop"].flags_after,
               "loss_before": found.loss.losses_before, "loss_after": found.loss.losses_after,
               **{f"{side}_{stat}": np.array([getattr(getattr(a, side), stat)
                                              for a in found.attractors])
                  for side in ("before", "after") for stat in ATTRACTOR_STATS},
               "vanished": np.array([len(a.vanished) for a in found.attractors]),
               "appeared": np.array([len(a.appeared) for a in found.attractors]),
               **surface_arrays([s[0] for s in found.surfaces])}
        if "collapse" in rates:
            out.update(collapse_before=rates["collapse"].flags_before,
                       collapse_after=rates["collapse"].flags_after)
        return out

    fixes = [(op, kk) for op in config.ops for kk in config.ks
             if op == "random" or len(ranking) >= kk]
    run.fill(fixes, fix_unit, fix, "E9 weight edits", progress)

    def breaker(name: str) -> dict:
        sampler = config.sampler(name)
        if name == "dry":
            sampler = dataclasses.replace(sampler, dry_sequence_breakers=tuple(
                int(b) for b in unit["dry_breakers"]))
        after = np.asarray(generate(model(), test, G, sampler=sampler, seed=config.seed).tokens)
        from_maps = after[chosen]  # the map prompts are test prompts
        surfaces = [surface(f, g, x[None], name, config.near_steps)
                    for f, g, x in zip(base_maps["next"], base_maps["greedy"], from_maps)]
        return {"traces": after, "from_maps": from_maps, **surface_arrays(surfaces)}

    run.fill([(name,) for name in BREAKERS], breaker_unit, breaker, "E9 loop breakers",
             progress)
    write_training_tables(run, config)
    write_tables(run, config, unit, traces, found, ranking, fixes, delimiter)


def ranked(found: dict, method: str) -> list[tuple[int, int]]:
    """The neurons (layer, index) by decreasing score of `method` (ties by layer, index)."""
    scores = found[method]
    order = np.argsort(-scores, axis=None, kind="stable")
    layers, neurons = np.unravel_index(order, scores.shape)
    return [(int(i), int(j)) for i, j in zip(layers, neurons)]
