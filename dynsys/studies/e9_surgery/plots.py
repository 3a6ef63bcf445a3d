"""E9's figures, drawn from the stored tables only: the localisation (ablation heat map, top
neurons), the fixes (loop rate and held-out loss change against the edit size, the breakers)
and the attractors of f_P before and after each fix."""

from __future__ import annotations

import numpy as np
from matplotlib import ticker
from matplotlib.patches import Rectangle

from dynsys import figstyle
from dynsys.runs import Run
from dynsys.studies.e9_surgery.config import ATTRACTOR_STATS, BREAKERS, OPS, Config


def figures(run: Run):
    return [*_localise(run), *_fixes(run), *_attractors(run)]


# The names the tables use, in words (components are block sites, methods attribution scores).
COMPONENT_NAMES = {"attn_out": "attention output", "mlp_out": "MLP output"}
METHOD_NAMES = {"grad_x_act": "gradient × activation", "onset_diff": "activation change at "
                "the loop's onset"}


def _localise(run: Run):
    """Left: the ablation heat map (layer × component, the change of the loop rate when the
    component is zeroed, with its 95% interval; a framed cell's interval excludes 0), its
    colour bar labelled beneath it. Right: the top candidates' scores."""
    sweep = run.read_table("ablation")
    layers = sorted({r["layer"] for r in sweep})
    components = list(dict.fromkeys(r["component"] for r in sweep))
    cell = {(r["layer"], r["component"]): r for r in sweep}
    change = np.array([[cell[layer, c]["change"] for c in components] for layer in layers])
    fig, ((heat_ax, bar_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.85)
    bound = max(np.abs(change).max(), 1e-3)
    image = heat_ax.imshow(change, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    heat_ax.set_xticks(range(len(components)), [COMPONENT_NAMES.get(c, c) for c in components])
    heat_ax.set_yticks(range(len(layers)), layers)
    heat_ax.set_ylabel("layer")
    heat_ax.set_xlabel("component zeroed")
    heat_ax.grid(False)
    for i, layer in enumerate(layers):
        for j, c in enumerate(components):
            r = cell[layer, c]
            excludes = r["change_lo"] > 0 or r["change_hi"] < 0
            dark = abs(r["change"]) > 0.55 * bound  # white text on the saturated cells
            heat_ax.text(j, i, f"{r['change']:+.2f}{'*' if excludes else ''}\n"
                               f"[{r['change_lo']:+.2f}, {r['change_hi']:+.2f}]",
                         ha="center", va="center", fontsize=7,
                         fontweight="bold" if excludes else "normal",
                         color="white" if dark else "black")
            if excludes:
                heat_ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False,
                                            edgecolor="black", linewidth=1.2))
    heat_ax.set_title(f"loop rate of {figstyle.n_text(r['n'] for r in sweep)} traces, base "
                      f"{sweep[0]['base_rate']:.2f}\n(framed, *: 95% interval excludes 0)")
    bar = fig.colorbar(image, ax=heat_ax, location="bottom", shrink=0.8, aspect=30)
    bar.set_label("change of the loop rate when zeroed")
    if run.has_table("neurons"):
        neurons = run.read_table("neurons")[:16]
        method = run.settings(Config).method
        bar_ax.barh(range(len(neurons)), [r[method] for r in neurons],
                    color=figstyle.OTHERS[0])
        bar_ax.set_yticks(range(len(neurons)), [f"{r['layer']}:{r['neuron']}"
                                                for r in neurons], fontsize=6)
        bar_ax.invert_yaxis()
        bar_ax.set_ylabel("MLP neuron (layer:index)")
        bar_ax.set_xlabel(f"attribution score ({METHOD_NAMES.get(method, method)})")
        bar_ax.set_title("top candidate neurons\n(on the localisation traces)")
    else:
        bar_ax.text(0.5, 0.5, "no looping trace:\nno candidates", ha="center", va="center",
                    transform=bar_ax.transAxes)
    return figstyle.save(fig, run.figures, "e9_localise")


def _fixes(run: Run):
    """Left: the loop rate on the test prompts against the edit size k per edit, with exact
    intervals, the unedited rate and each breaker's. Right: the held-out loss change."""
    rows = [r for r in run.read_table("fixes") if r["quantity"] == "loop" and r["kind"] == "all"]
    fig, ((rate_ax, loss_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.6)
    before = rows[0]["before"]
    for op, colour in zip(OPS, figstyle.OTHERS):
        sel = sorted((r for r in rows if r["fix"] == op), key=lambda r: r["k"])
        if not sel:
            continue
        ks = [r["k"] for r in sel]
        rate = np.array([r["after"] for r in sel])
        spread = np.array([[m - r["after_lo"], r["after_hi"] - m] for m, r in zip(rate, sel)]).T
        rate_ax.errorbar(ks, rate, spread, marker="o", capsize=1.5, color=colour, label=op)
        loss = np.array([r["loss_change"] for r in sel])
        spread = np.array([[m - r["loss_lo"], r["loss_hi"] - m] for m, r in zip(loss, sel)]).T
        loss_ax.errorbar(ks, loss, spread, marker="o", capsize=1.5, color=colour, label=op)
    rate_ax.axhline(before, color="0.3", ls="--", label="unedited")
    for name, colour, style in zip(BREAKERS, (*figstyle.OTHERS[3:5], "0.55"), (":", ":", "-.")):
        row = next(r for r in rows if r["fix"] == name)
        rate_ax.axhline(row["after"], color=colour, ls=style, label=f"{name} breaker")
    for ax in (rate_ax, loss_ax):
        ax.set_xscale("log", base=2)
        figstyle.plain_log_ticks(ax.xaxis)
        ax.xaxis.set_minor_locator(ticker.NullLocator())
    rate_ax.set_xlabel("edited neurons k")
    rate_ax.set_ylabel("loop rate, test prompts")
    rate_ax.set_ylim(-0.03, 1.05)
    fig.legend(*rate_ax.get_legend_handles_labels(), loc="outside lower center", ncols=7)
    loss_ax.axhline(0, color="0.5", lw=0.8)
    tolerance = run.settings(Config).loss_tolerance
    loss_ax.axhline(tolerance, color="0.5", ls="--")
    loss_ax.text(1, tolerance, " tolerance", va="bottom", fontsize=6,
                 transform=loss_ax.get_yaxis_transform(), ha="right")
    loss_ax.set_xlabel("edited neurons k")
    loss_ax.set_ylabel("held-out loss change (nats/token)")
    return figstyle.save(fig, run.figures, "e9_fixes")


def _attractors(run: Run):
    """Left: f_P's cycles, cyclic points and largest basin before and after each edit at its
    largest k (means over map prompts). Right: where each fix's trace from a map prompt walks:
    on the unedited greedy trace's cycle C of f_P, near it, elsewhere in its basin, in
    another basin."""
    rows = run.read_table("attractors")
    edits = [r for r in rows if r["fix"] in OPS]  # "unedited": the reference surface
    largest = {op: max(r["k"] for r in edits if r["fix"] == op)
               for op in dict.fromkeys(r["fix"] for r in edits)}
    fig, ((att_ax, surf_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.6)
    labels = ["unedited", *(f"{op} {k} neurons" for op, k in largest.items())]
    x = np.arange(len(ATTRACTOR_STATS))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        if i == 0:
            sel = [r for r in edits if (r["fix"], r["k"]) == next(iter(largest.items()))] \
                if largest else []
            values = [np.mean([r[f"{s}_before"] for r in sel]) if sel else 0
                      for s in ATTRACTOR_STATS]
        else:
            op, k = list(largest.items())[i - 1]
            sel = [r for r in edits if (r["fix"], r["k"]) == (op, k)]
            values = [np.mean([r[f"{s}_after"] for r in sel]) for s in ATTRACTOR_STATS]
        att_ax.bar(x + (i - (len(labels) - 1) / 2) * width, np.maximum(values, 0.5), width,
                   color="0.5" if i == 0 else figstyle.OTHERS[i - 1], label=label)
    att_ax.set_xticks(x, list(ATTRACTOR_STATS.values()))
    att_ax.set_yscale("log")
    att_ax.set_ylabel("size in f_P (mean over map prompts)")
    att_ax.legend(loc="best", fontsize=6)
    fixes = ["unedited greedy", *(f"{op} {k} neurons" for op, k in largest.items()),
             *(f"{name} breaker" for name in BREAKERS)]
    keys = [("unedited", 0), *largest.items(), *((name, 0) for name in BREAKERS)]
    # C: the cycle of the unedited f_P that the unedited greedy trace ends in ("C*" in the
    # docs), spelled out in the legend's title.
    shares = {"on C": [], "near C": [], "elsewhere in C's basin": [], "in another basin": []}
    for fix, k in keys:
        sel = [r for r in rows if (r["fix"], r["k"]) == (fix, k)]
        on, near, other = (np.mean([r[c] for r in sel]) for c in ("on", "near", "elsewhere"))
        shares["on C"].append(on)
        shares["near C"].append(near - on)
        shares["elsewhere in C's basin"].append(1 - near - other)
        shares["in another basin"].append(other)
    bottom = np.zeros(len(fixes))
    for (label, values), colour in zip(shares.items(), figstyle.OTHERS):
        surf_ax.bar(range(len(fixes)), values, 0.7, bottom=bottom, color=colour, label=label)
        bottom += np.array(values)
    surf_ax.set_xticks(range(len(fixes)), fixes, rotation=30, ha="right")
    surf_ax.set_ylabel("share of steps of the fixed trace\n(unedited f_P, map prompts)")
    surf_ax.set_ylim(0, 1.42)
    surf_ax.legend(loc="upper center", ncols=2, fontsize=6,
                   title="C: the unedited greedy trace's cycle of f_P", title_fontsize=6)
    return figstyle.save(fig, run.figures, "e9_attractors")
