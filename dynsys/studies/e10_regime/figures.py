"""E10's figures, from its tables only: the excess e against n (log–log), agreement with
f_{P,t−1} against n/g, and the loop share against λ; one colour per model, primary prompts."""

from __future__ import annotations

import numpy as np

from dynsys import figstyle
from dynsys.runs import Run
from dynsys.stats import proportion_interval
from dynsys.studies.e10_regime.tables import select


def _primary(rows: list[dict], model: str) -> list[dict]:
    kind = "source" if select(rows, model=model, kind="source") else "random"
    return select(rows, model=model, kind=kind)


def draw(run: Run):
    prompts, agreement = run.read_table("prompts"), run.read_table("agreement")
    lambdas = run.read_table("lambda")
    models = list(dict.fromkeys(r["model"] for r in prompts))
    colours = dict(zip(models, figstyle.PALETTE[2:] + figstyle.PALETTE[:2]))
    g_line = run.config["horizon"]  # the agreement claim's g: the line; other g: points
    fig, axes = figstyle.figure(ncols=3, width=figstyle.FULL, aspect=0.85)
    ax_e, ax_a, ax_l = axes[0]
    for model in models:
        rows = _primary(prompts, model)
        n = sorted({r["n"] for r in rows})
        e = [np.array([r["excess"] for r in select(rows, n=x)]) for x in n]
        ax_e.errorbar(n, [x.mean() for x in e],
                      [x.std(ddof=1) / np.sqrt(len(x)) if len(x) > 1 else 0 for x in e],
                      marker="o", capsize=1.5, color=colours[model], label=model)
        rows = _primary(agreement, model)
        ax_a.scatter([r["n_over_g"] for r in rows], [r["position"] for r in rows], s=4,
                     color=colours[model], alpha=0.35, linewidths=0)
        line = sorted(select(rows, g=max(r["g"] for r in rows if r["g"] <= g_line)),
                      key=lambda r: r["n"])
        ax_a.plot([r["n_over_g"] for r in line], [r["position"] for r in line], marker="o",
                  color=colours[model])
        lam = sorted({r["lambda"] for r in select(lambdas, model=model)})
        shares = [[r["period"] > 0 for r in select(lambdas, model=model, **{"lambda": x})]
                  for x in lam]
        k = [sum(s) for s in shares]
        bounds = [proportion_interval(a, len(s)) for a, s in zip(k, shares)]
        mid = [a / len(s) for a, s in zip(k, shares)]
        ax_l.errorbar(lam, mid, [[m - lo for m, (lo, _) in zip(mid, bounds)],
                                 [hi - m for m, (_, hi) in zip(mid, bounds)]],
                      marker="o", capsize=1.5, color=colours[model], label=model)
    ax_e.axhline(1, color="0.6", linewidth=0.6)
    ax_e.set(xscale="log", yscale="log", xlabel="prompt length n",
             ylabel="excess e, generated tokens")
    ax_a.axvline(100, color="0.6", linewidth=0.6, linestyle=":")
    ax_a.set(xscale="log", ylim=(-0.02, 1.02), xlabel="n / g (line: g of the claim)",
             ylabel=r"steps with $x_{t+1} = f_{P,t-1}(x_t)$")
    ax_l.set(ylim=(-0.02, 1.02), xlabel=r"$\lambda$ (weight of earlier generated keys)",
             ylabel="loop share (95% exact)")
    fig.legend(*ax_l.get_legend_handles_labels(), loc="outside lower center",
               ncols=min(len(models), 4), frameon=False)
    return figstyle.save(fig, run.figures, "e10_regime")
