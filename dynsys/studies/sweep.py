"""agreement(n, G): how often real greedy generation follows the Markov map, by prompt length;
and the statistics of a quantity against n that E2, E3 and E6 share.

A unit is (rope, prompt kind, n): `seeds` prompts of length n, each continued by G greedy
tokens; per step t, whether x_{t+1} = f_P(x_t) and whether x_{t+1} = f_{P,t−1}(x_t). Each
finished unit is saved in a run directory (dynsys.runs), so a killed sweep resumes where it
stopped.

Scaling in n. A level that falls like n^−β has the exponent β = minus the least-squares slope
of log level on log n over the prompt lengths (`exponent`). Its interval is the jackknife-t
over prompts, prompt k of every n left out together (E2 and E6 draw prompt k of every n from
seed k, so they are paired; where they are independent, as in E3, pairing biases nothing):
the percentile bootstrap it replaced covered a slope 0.87-0.88 of the time at 8 prompts and
0.91 at 16 for a nominal 0.95, the jackknife-t 0.93-0.95 (experiments/coverage_e10_slope.py).
Under MIN_PROMPTS prompts a verdict is "inconclusive" whatever the data (`prompt_estimate`).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import numpy as np
from rich.progress import Progress

from dynsys.data.prompts import PROMPT_KINDS, make_prompt
from dynsys.decode import generate, prefill
from dynsys.dynamics.markov import suffix_map
from dynsys.nn import Model
from dynsys.runs import Run
from dynsys.stats import INCONCLUSIVE, Evidence, jackknife_test
from dynsys.stats.verdict import Verdict

# Prompts a verdict over prompts needs (the jackknife-t of a slope covers 0.93-0.94 at 8).
MIN_PROMPTS = 8


def trace_agreement(model: Model, prompts: np.ndarray, traces: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt [B, n] and its greedy trace [B, G], whether step t (t = 1..G−1) takes the
    map's image of x_t: (x_{t+1} = f_P(x_t), x_{t+1} = f_{P,t−1}(x_t)), bool [B, G−1] each."""
    G = traces.shape[1]
    # one map call per prompt: rows 0..G−2 at offset 0 (f_P), rows G−1.. at offset t−1
    offsets = np.concatenate([np.zeros(G - 1, int), np.arange(G - 1)])
    markov, exact = [], []
    for prompt, trace in zip(prompts, traces):
        rows = np.tile(trace[:-1], 2)[:, None]
        agree = suffix_map(model, prompt, rows, offset=offsets, prefix=prefill(model, prompt),
                           progress=False).next == np.tile(trace[1:], 2)
        markov.append(agree[:G - 1])
        exact.append(agree[G - 1:])
    return np.array(markov).reshape(-1, G - 1), np.array(exact).reshape(-1, G - 1)


def _unit(model: Model, kind: str, n: int, seeds: range, G: int, ngram: int) -> dict:
    batch = np.stack([make_prompt(kind, model.config.vocab_size, n, s, ngram) for s in seeds])
    traces = np.asarray(generate(model, batch, G).tokens)
    markov, exact = trace_agreement(model, batch, traces)
    return {"traces": traces, "agree_markov": markov, "agree_position": exact}


def unit_name(rope: bool, kind: str, n: int) -> str:
    return f"rope{int(rope)}_{kind}_n{n}"


def agreement_sweep(model: Model, lengths=(64, 256, 1024, 4096, 16384), G: int = 64,
                    seeds: int = 8, kinds=PROMPT_KINDS, ropes=(True, False), ngram: int = 3,
                    run: Run | None = None, progress: bool = True,
                    first_seed: int = 0) -> list[dict]:
    """Per (rope, kind, n): arrays agree_markov / agree_position [seeds, G−1] and the traces,
    the prompts drawn with seeds first_seed, ..., first_seed + seeds − 1.

    With a run directory, units already there are loaded, not recomputed (the run's config
    must pin the model and these settings; see dynsys.runs.open_run).
    """
    for kind in kinds:
        make_prompt(kind, 2, 1, 0)  # validates the kind before any work
    if G < 2:
        raise ValueError(f"G={G} must be at least 2")
    units = list(itertools.product(ropes, kinds, lengths))

    def compute(rope: bool, kind: str, n: int) -> dict:
        return _unit(model.with_rope(rope), kind, n, range(first_seed, first_seed + seeds), G,
                     ngram)

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
            if r["agree_markov"].shape[1] < G - 1:
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


def prompt_table(results: list[dict]) -> list[dict]:
    """Rows (rope, kind, n, prompt): the steps t = 1..G−1 compared and, per reference map, the
    steps whose greedy token it does not give (disagree_markov: f_P; disagree_position:
    f_{P,t−1})."""
    return [{"rope": r["rope"], "kind": r["kind"], "n": r["n"], "prompt": k,
             "steps": r["agree_markov"].shape[1],
             "disagree_markov": int((~r["agree_markov"][k]).sum()),
             "disagree_position": int((~r["agree_position"][k]).sum())}
            for r in results for k in range(len(r["agree_markov"]))]


# --- statistics shared by the studies ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic, its 95% interval (None where the sample is too small for one), the
    verdict of the claim about it, against a threshold fixed in the code, and the Evidence behind
    the verdict (None without an interval)."""

    value: float
    interval: tuple[float, float] | None
    verdict: Verdict
    test: Evidence | None = None

    def text(self, fmt: str = ".2f") -> str:
        """'value [lo, hi]', or the value alone with the reason there is no interval."""
        if self.interval is None:
            return f"{self.value:{fmt}} (no interval: under {MIN_PROMPTS} prompts)"
        lo, hi = self.interval
        return f"{self.value:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def exponent(lengths, levels) -> float:
    """β in level ∝ n^−β: minus the least-squares slope of log level on log n."""
    return -float(np.polyfit(np.log(lengths), np.log(levels), 1)[0])


def prompt_estimate(samples: tuple[np.ndarray, ...], statistic: Callable[..., float],
                    threshold: float, side: str = "above") -> Estimate:
    """statistic(*samples) (equal-length arrays, one entry per prompt), its jackknife-t interval
    over prompts (the arrays left out together; dynsys.stats.jackknife_test) and decide(interval,
    threshold, side); under MIN_PROMPTS prompts no interval and "inconclusive"."""
    value = float(statistic(*samples))
    if len(samples[0]) < MIN_PROMPTS:
        return Estimate(value, None, INCONCLUSIVE)
    test = jackknife_test(tuple(samples), statistic, threshold, side)
    return Estimate(value, test.interval, test.verdict, test)


def by_length(rows: list[dict], key: str, prompt: str = "prompt"
              ) -> tuple[list[int], tuple[np.ndarray, ...]]:
    """The lengths n of table rows (sorted) and, per n, the values of `key` in the order of
    the column `prompt`: the columns `exponent_estimate` takes."""
    lengths = sorted({r["n"] for r in rows})
    return lengths, tuple(np.array([r[key] for r in sorted(
        (r for r in rows if r["n"] == n), key=lambda r: r[prompt])]) for n in lengths)


def exponent_estimate(lengths, columns: tuple[np.ndarray, ...],
                      level: Callable[[np.ndarray], float] = np.mean,
                      threshold: float = 0.0) -> Estimate:
    """The exponent β of level(column) ∝ n^−β, one column of per-prompt values per length,
    with its jackknife-t interval over prompts; claim: β > threshold."""
    return prompt_estimate(columns, lambda *c: exponent(lengths, [level(x) for x in c]),
                              threshold)
