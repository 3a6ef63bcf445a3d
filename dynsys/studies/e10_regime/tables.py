"""E10's tables, derived from its units (measure.py) and read by the verdicts and figures.

    prompts     (model, kind, n, prompt): the excess e (mean over steps r = 1..G−1, layers
                and heads), the sink share, the steps of the first `horizon` − 1 that disagree
                with f_{P,t−1} and with f_P, the terminal loop's period and onset; for a
                Markov test bed the share of the alphabet where the model's f_P is the Bayes
                predictor's, whether the trace is the Bayes predictor's trace, and the
                pollution: the share of the Bayes trace's steps 1..G−1 whose token is not the
                Bayes f_P of the token before (the generated tokens' own counts moved the
                argmax; the argument predicts it falls like G/n) (empty for other models)
    layers      (model, kind, n, prompt, layer): the excess e and the sink4 share (means over
                steps and heads)
    masses      (model, kind, n, layer): mean masses on sink1, sink4, body and generated
                tokens and the mean excess, over prompts, heads and steps
    agreement   (model, kind, n, g): per g in the horizons, n/g, the share of steps
                1..g−1 agreeing with f_{P,t−1} and with f_P, and the share of traces agreeing
                with f_{P,t−1} on all of them
    lambda      (model, lambda, prompt): the trace's loop period and onset and its steps
                agreeing with f_{P,t−1}, with the attention scores of the earlier generated
                keys shifted by log λ
    memory      (model, k): at the largest n, primary kind, the share of the steps
                1..G−1 of the greedy traces whose smallest explaining memory is k (k = 0:
                none up to measure.MEMORY), the share of traces whose every step has k = 1,
                and of the looping traces, how many end in a cycle of f_P (E5's test)
    sampled     (model, sampler, prompt): the sampled trace's loop period and onset, and the
                kernel chain's predicted loop probability (empty where not computed)
"""

from __future__ import annotations

import numpy as np

from dynsys.studies.e10_regime.measure import excess

HORIZONS = (4, 8, 16, 32, 64, 128)  # the g of the agreement table, up to G


def prompt_rows(model: str, kind: str, n: int, unit: dict, horizon: int) -> list[dict]:
    e = excess(unit["parts"], n).mean(axis=(1, 2, 3))
    sink = unit["parts"][..., 1].mean(axis=(1, 2, 3))
    rows = []
    for k in range(len(e)):
        row = {"model": model, "kind": kind, "n": n, "prompt": k, "excess": float(e[k]),
               "sink4": float(sink[k]), "steps": horizon - 1,
               "disagree_position": int((~unit["agree_position"][k, :horizon - 1]).sum()),
               "disagree_markov": int((~unit["agree_markov"][k, :horizon - 1]).sum()),
               "period": int(unit["period"][k]), "onset": int(unit["onset"][k])}
        markov = "f_bayes" in unit
        row["map_bayes"] = (float((unit["f_model"][k] == unit["f_bayes"][k]).mean())
                            if markov else None)
        row["trace_bayes"] = (bool((unit["traces"][k] == unit["bayes_traces"][k]).all())
                              if markov else None)
        row["pollution"] = pollution(unit["f_bayes"][k], unit["bayes_traces"][k]) \
            if markov else None
        rows.append(row)
    return rows


def pollution(f: np.ndarray, trace: np.ndarray) -> float:
    """The share of steps t = 1..G−1 of `trace` [G] with trace[t] ≠ f(trace[t − 1])."""
    return float((f[trace[:-1]] != trace[1:]).mean())


def layer_rows(model: str, kind: str, n: int, unit: dict) -> list[dict]:
    """Per prompt and layer: the excess e and the sink4 share (means over steps and heads)."""
    e = excess(unit["parts"], n).mean(axis=(1, 3))
    sink = unit["parts"][..., 1].mean(axis=(1, 3))
    return [{"model": model, "kind": kind, "n": n, "prompt": k, "layer": layer,
             "excess": float(e[k, layer]), "sink4": float(sink[k, layer])}
            for k in range(e.shape[0]) for layer in range(e.shape[1])]


def attention_rows(model: str, kind: str, n: int, unit: dict) -> list[dict]:
    parts, e = unit["parts"], excess(unit["parts"], n)
    return [{"model": model, "kind": kind, "n": n, "layer": layer,
             **{name: float(parts[:, :, layer, :, j].mean())
                for j, name in enumerate(("sink1", "sink4", "body", "generated"))},
             "excess": float(e[:, :, layer].mean())}
            for layer in range(parts.shape[2])]


def agreement_rows(model: str, kind: str, n: int, unit: dict) -> list[dict]:
    G = unit["agree_position"].shape[1] + 1
    return [{"model": model, "kind": kind, "n": n, "g": g, "n_over_g": n / g,
             "position": float(unit["agree_position"][:, :g - 1].mean()),
             "markov": float(unit["agree_markov"][:, :g - 1].mean()),
             "traces_position": float(unit["agree_position"][:, :g - 1].all(1).mean())}
            for g in HORIZONS if g <= G]


def lambda_rows(model: str, lambdas: tuple[float, ...], unit: dict) -> list[dict]:
    return [{"model": model, "lambda": lam, "prompt": k,
             "period": int(unit["period"][j, k]), "onset": int(unit["onset"][j, k]),
             "agree_position": int(unit["agree_position"][j, k].sum()),
             "steps": int(unit["agree_position"].shape[2])}
            for j, lam in enumerate(lambdas) for k in range(unit["period"].shape[1])]


def memory_rows(model: str, unit: dict) -> list[dict]:
    smallest = unit["smallest"]
    cycles = unit["cycle_of_map"] if "cycle_of_map" in unit else np.array([], int)
    return [{"model": model, "k": k, "steps": float((smallest == k).mean()),
             "traces_k1": float((smallest == 1).all(1).mean()),
             "looping": int((cycles >= 0).sum()), "cycles_of_map": int((cycles == 1).sum())}
            for k in range(int(smallest.max(initial=0)) + 1)]


def sampled_rows(model: str, labels: list[str], unit: dict) -> list[dict]:
    predicted = unit["predicted"] if "predicted" in unit else np.full(unit["period"].shape,
                                                                       np.nan)
    return [{"model": model, "sampler": label, "prompt": k,
             "period": int(unit["period"][j, k]), "onset": int(unit["onset"][j, k]),
             "predicted": "" if np.isnan(predicted[j, k]) else float(predicted[j, k])}
            for j, label in enumerate(labels) for k in range(unit["period"].shape[1])]


def select(rows: list[dict], **where) -> list[dict]:
    """The rows whose columns equal `where`."""
    return [r for r in rows if all(r[k] == v for k, v in where.items())]


def loop_share(rows: list[dict]) -> float:
    return float(np.mean([r["period"] > 0 for r in rows])) if rows else float("nan")
