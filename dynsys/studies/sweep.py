"""agreement(n, G): how often real greedy generation follows the Markov map, by prompt length.

A unit is (rope, prompt kind, n): `seeds` prompts of length n, each continued by G greedy
tokens; per step t, whether x_{t+1} = f_P(x_t) and whether x_{t+1} = f_{P,t−1}(x_t). Each
finished unit is saved in a run directory (dynsys.runs), so a killed sweep resumes where it
stopped.
"""

from __future__ import annotations

import itertools

import numpy as np
from rich.progress import Progress

from dynsys.data.prompts import PROMPT_KINDS, make_prompt
from dynsys.decode import generate, prefill
from dynsys.dynamics.markov import suffix_map
from dynsys.nn import Model
from dynsys.runs import Run


def _unit(model: Model, kind: str, n: int, seeds: int, G: int, ngram: int) -> dict:
    batch = np.stack([make_prompt(kind, model.config.vocab_size, n, s, ngram)
                      for s in range(seeds)])
    traces = np.asarray(generate(model, batch, G))
    markov, exact = [], []
    for prompt, trace in zip(batch, traces):
        prefix = prefill(model, prompt)
        rows = trace[:-1, None]
        markov.append(suffix_map(model, prompt, rows, prefix=prefix, progress=False).next
                      == trace[1:])
        exact.append(suffix_map(model, prompt, rows, offset=np.arange(G - 1), prefix=prefix,
                                progress=False).next == trace[1:])
    return {"traces": traces, "agree_markov": np.array(markov), "agree_position": np.array(exact)}


def unit_name(rope: bool, kind: str, n: int) -> str:
    return f"rope{int(rope)}_{kind}_n{n}"


def agreement_sweep(model: Model, lengths=(64, 256, 1024, 4096, 16384), G: int = 64,
                    seeds: int = 8, kinds=PROMPT_KINDS, ropes=(True, False), ngram: int = 3,
                    run: Run | None = None, progress: bool = True) -> list[dict]:
    """Per (rope, kind, n): arrays agree_markov / agree_position [seeds, G−1] and the traces.

    With a run directory, units already there are loaded, not recomputed (the run's config
    must pin the model and these settings; see dynsys.runs.open_run).
    """
    for kind in kinds:
        make_prompt(kind, 2, 1, 0)  # validates the kind before any work
    if G < 2:
        raise ValueError(f"G={G} must be at least 2")
    units = list(itertools.product(ropes, kinds, lengths))

    def compute(rope: bool, kind: str, n: int) -> dict:
        return _unit(model.with_rope(rope), kind, n, seeds, G, ngram)

    if run is None:
        with Progress(disable=not progress) as bar:
            arrays = [compute(*u) for u in bar.track(units, description="agreement sweep")]
    else:
        run.fill(units, unit_name, compute, "agreement sweep", progress)
        arrays = [run.load(unit_name(*u)) for u in units]
    return [{"rope": rope, "kind": kind, "n": n, **unit}
            for (rope, kind, n), unit in zip(units, arrays)]


def agreement_table(results: list[dict], horizons=(8, 16, 32, 64)) -> list[dict]:
    """Rows (rope, kind, n, G): mean agreement over the first G−1 steps and seeds, with its
    standard error over seeds, for f_P and for the position-exact f_{P,t−1}."""
    rows = []
    for r in results:
        for G in horizons:
            if G - 1 > r["agree_markov"].shape[1]:
                continue
            per_seed = r["agree_markov"][:, :G - 1].mean(1)
            rows.append({
                "rope": r["rope"], "kind": r["kind"], "n": r["n"], "G": G,
                "agreement": float(per_seed.mean()),
                "stderr": float(per_seed.std(ddof=1) / np.sqrt(len(per_seed)))
                if len(per_seed) > 1 else float("nan"),
                "agreement_position": float(r["agree_position"][:, :G - 1].mean()),
            })
    return rows
