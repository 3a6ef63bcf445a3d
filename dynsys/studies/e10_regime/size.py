"""E10's size ladder: the loop rate at matched held-out loss against parameters, and the number
of MLP neurons whose zeroing halves the loop rate, against parameters.

The ladder (Config.ladder): registered test beds that differ in size only (one corpus, one
tokenizer, the same windows in the same order; dynsys.testbeds' ladder-1..3), each trained first
if absent. Matched loss: the target is the largest of the rungs' final held-out losses (the
smallest model's, which every rung reaches); each rung is taken at its first checkpoint whose
held-out loss is at most the target (`matched`; the losses there are reported, they differ by
the checkpoint grid's resolution). Prompts: the same held-out windows of n tokens for every
rung, greedy G tokens.

Per rung, one unit:
    loops_matched, loops_final  [P] bool: the greedy trace loops (dynsys.surgery.loops: the
                                terminal period repeated K times), at the matched checkpoint
                                and at the final one
    rates, before               the neuron edits, final checkpoint: the MLP neurons ranked by
                                activation × gradient of the loop margin
                                (dynsys.surgery.attribution) on the looping traces of the first
                                half of the prompts; the top k zeroed together (k in `ks`, at
                                most the model's neurons) on the second half
                                (dynsys.surgery.confirm): the loop rate after each k, and
                                before any edit

The claim (a test, its threshold fixed here): at matched held-out loss the smallest rung loops
more often than the largest, on the same prompts (paired difference of loop flags, Tango score
interval, null: a difference of at most 0), the claim that small models fall into dead loops.
Described, not tested (three rungs are no test of a trend): the smallest k whose edit at least
halves the loop rate, against parameters (the claim that larger models need more edits).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dynsys.decode import generate
from dynsys.stats import paired_test
from dynsys.studies.e10_regime.models import prompts, subject
from dynsys.studies.e10_regime.tables import select
from dynsys.studies.finding import Finding
from dynsys.surgery.attribution import neuron_attribution
from dynsys.surgery.confirm import confirm
from dynsys.surgery.loops import looping
from dynsys.testbeds.registry import trained

NAME = "e10"
KS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)  # neurons zeroed together, the largest capped


def training_losses(key: str, root: str | Path) -> list[tuple[int, float]]:
    """(step, held-out loss) of every checkpoint of the registered test bed KEY, from its
    tables/training.csv (written when its training finished)."""
    path = Path(root) / key / "tables" / "training.csv"
    try:
        with open(path, newline="") as f:
            return [(int(r["step"]), float(r["heldout_loss"])) for r in csv.DictReader(f)]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"ladder rung {key!r}: no readable training table at {path} ({e})"
                         ) from None


def matched(losses: dict[str, list[tuple[int, float]]]) -> tuple[float, dict[str, int]]:
    """(target, {rung: step}): the target is the largest final held-out loss of the rungs, and
    each rung's step its first checkpoint with a held-out loss at most the target."""
    target = max(rows[-1][1] for rows in losses.values())
    return target, {key: next(step for step, loss in rows if loss <= target)
                    for key, rows in losses.items()}


def ladder(keys: tuple[str, ...], root: str | Path, progress: bool = True
           ) -> tuple[dict[str, int], dict[str, list[tuple[int, float]]]]:
    """The rungs trained (first, where absent): ({rung: matched step}, {rung: losses})."""
    for key in keys:
        trained(f"{key}@final", root, progress)
    losses = {key: training_losses(key, root) for key in keys}
    return matched(losses)[1], losses


def unit(key: str, step: int, root: str, n: int, count: int, G: int, seed: int,
         ks: tuple[int, ...] = KS) -> dict[str, np.ndarray]:
    """One rung's unit (module docstring): `count` held-out prompts of n tokens."""
    final, at = subject(f"{key}@final", root, False), subject(f"{key}@{step}", root, False)
    drawn = prompts(final, "source", count, n, seed)
    traces = {name: np.asarray(generate(s.model, drawn, G).tokens)
              for name, s in (("matched", at), ("final", final))}
    loops = {name: looping(t) for name, t in traces.items()}
    half = count // 2
    cfg = final.model.config
    chosen = tuple(k for k in ks if k <= cfg.num_layers * cfg.intermediate_size)
    localise = drawn[:half]
    if not loops["final"][:half].any():
        rates = np.full(len(chosen), np.nan)
        before = float(loops["final"][half:].mean())
    else:
        ranked = neuron_attribution(final.model, localise, traces["final"][:half]).ranked(
            top=max(chosen))
        found = confirm(final.model, drawn[half:], G, ranked, "zero", chosen)
        rates, before = np.array([r.result.rate for r in found.rows]), found.before.rate
    return {"prompts": drawn, "loops_matched": loops["matched"], "loops_final": loops["final"],
            "ks": np.array(chosen), "rates": rates, "before": np.float64(before)}


def halving(ks: np.ndarray, rates: np.ndarray, before: float) -> int:
    """The smallest k whose loop rate is at most half of `before` (0: none of them; also when
    nothing loops before the edit)."""
    if not before > 0:
        return 0
    hit = np.flatnonzero(np.asarray(rates) <= before / 2)
    return int(np.asarray(ks)[hit[0]]) if hit.size else 0


def rows(key: str, params: int, step: int, losses: list[tuple[int, float]], found: dict
         ) -> tuple[list[dict], list[dict]]:
    """(size rows, neuron rows) of one rung's unit: per checkpoint (matched, final) the loop
    count and rate; per k the loop rate after zeroing the top k."""
    loss = dict(losses)
    final = losses[-1][0]
    size = [{"model": key, "params": params, "checkpoint": which, "step": at,
             "heldout_loss": loss[at], "loops": int(found[f"loops_{which}"].sum()),
             "prompts": int(found[f"loops_{which}"].size),
             "rate": float(found[f"loops_{which}"].mean())}
            for which, at in (("matched", step), ("final", final))]
    k_half = halving(found["ks"], found["rates"], float(found["before"]))
    neurons = [{"model": key, "params": params, "k": int(k), "rate": float(r),
                "before": float(found["before"]), "halving_k": k_half}
               for k, r in zip(found["ks"], found["rates"])]
    return size, neurons


def findings(size_rows: list[dict], neuron_rows: list[dict],
             loops: dict[str, np.ndarray]) -> list[Finding]:
    """The claim at matched loss (smallest rung against largest, paired by prompt) and the
    description of the neuron counts; `loops` = {rung: matched-checkpoint loop flags}."""
    matched_rows = select(size_rows, checkpoint="matched")
    small, large = (min(matched_rows, key=lambda r: r["params"]),
                    max(matched_rows, key=lambda r: r["params"]))
    test = paired_test(loops[small["model"]], loops[large["model"]], 0.0, "above")
    lo, hi = test.interval
    parts = ", ".join(f"{r['model']} ({r['params'] / 1e6:.2f}M, step {r['step']}, held-out "
                      f"{r['heldout_loss']:.2f}) {r['loops']}/{r['prompts']}"
                      for r in sorted(matched_rows, key=lambda r: r["params"]))
    claim = Finding(NAME, f"size: at matched held-out loss the smallest model "
                          f"({small['model']}) loops more often than the largest "
                          f"({large['model']})",
                    f"{parts}; difference {test.estimate:+.2f} [{lo:+.2f}, {hi:+.2f}] (paired "
                    f"score interval, {test.n} prompts)", test.verdict, test=test)
    counts = []
    for key in dict.fromkeys(r["model"] for r in neuron_rows):
        sel = select(neuron_rows, model=key)
        k, largest = sel[0]["halving_k"], sel[-1]["k"]
        if np.isnan(sel[0]["rate"]):
            text = "no trace of the localisation half loops: nothing to attribute"
        else:
            text = (f"loop rate {sel[0]['before']:.2f}, halved by "
                    + (f"{k} neurons" if k else f"no k up to {largest}"))
        counts.append(f"{key} ({sel[0]['params'] / 1e6:.2f}M): {text}")
    described = Finding(NAME, "size: the fewest top-attributed MLP neurons whose zeroing halves "
                              "the loop rate (held-out half of the prompts), against parameters",
                        "; ".join(counts) if counts else "no rung loops", None)
    return [claim, described]
