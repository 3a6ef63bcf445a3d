"""E2: agreement of real greedy generation with the Markov map against n and G.

agreement(n, G) = the share of steps t < G with x_{t+1} = f_P(x_t), over random prompts of
length n (repeated N-grams and i.i.d. tokens), RoPE on and off. The argument predicts
agreement → 1 as n → ∞ at fixed G; with RoPE on, position drift can keep it below 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dynsys import figstyle
from dynsys.data.prompts import PROMPT_KINDS
from dynsys.io import load
from dynsys.runs import Run
from dynsys.studies.finding import Finding
from dynsys.studies.settings import Settings
from dynsys.studies.sweep import agreement_sweep, agreement_table

NAME = "e2"
TITLE = "Agreement with the Markov map vs prompt length n and generation length G"


HORIZONS = (4, 8, 16, 32, 64, 128, 256)  # the G of the agreement table's rows, up to G


@dataclasses.dataclass(frozen=True)
class Config(Settings):
    model: str = "tiny"  # preset or local Hugging Face checkpoint directory
    seed: int = 0  # random initialisation of a preset
    lengths: tuple[int, ...] = (64, 256, 1024, 4096, 16384)
    G: int = 64
    prompts: int = 16  # random prompts per (rope, kind, n)
    ngram: int = 3
    kinds: tuple[str, ...] = ("ngram", "random")

    # G reaches the shortest horizon, so that the table has rows
    LIMITS = {"seed": 0, "lengths": 1, "G": HORIZONS[0], "prompts": 1, "ngram": 1,
              "kinds": PROMPT_KINDS}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.lengths) + self.G


SCALES = {"small": Config(lengths=(64, 256, 1024), G=16, prompts=4), "paper": Config()}


def run(run: Run, config: Config, progress: bool = True) -> None:
    model = load(config.model, seed=config.seed)
    results = agreement_sweep(model, lengths=config.lengths, G=config.G, seeds=config.prompts,
                              kinds=config.kinds, ngram=config.ngram, run=run,
                              progress=progress)
    horizons = tuple(h for h in HORIZONS if h <= config.G)
    run.write_table("agreement", agreement_table(results, horizons=horizons))


def findings(run: Run) -> list[Finding]:
    rows = run.read_table("agreement")
    G = max(r["G"] for r in rows)
    out = []
    for rope in (True, False):
        by_n = {}
        for r in rows:
            if r["rope"] == rope and r["G"] == G:
                by_n.setdefault(r["n"], []).append(r["agreement"])
        if not by_n:
            continue
        lo, hi = min(by_n), max(by_n)
        first, last = np.mean(by_n[lo]), np.mean(by_n[hi])
        out.append(Finding(
            NAME, f"agreement with f_P grows towards 1 with n (G={G}, RoPE "
                  f"{'on' if rope else 'off'})",
            f"{first:.2f} at n={lo} -> {last:.2f} at n={hi}", bool(last > first)))
    return out


def figures(run: Run):
    rows = run.read_table("agreement")
    kinds = sorted({r["kind"] for r in rows})
    horizons = sorted({r["G"] for r in rows})
    styles = dict(zip(reversed(horizons), ("-", "--", ":", "-.") * 4))
    fig, axes = figstyle.figure(ncols=len(kinds), width=figstyle.FULL if len(kinds) > 1
                                else figstyle.COLUMN, aspect=0.7, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        for rope in (True, False):
            for G in horizons[-3:]:
                sel = sorted((r for r in rows if r["kind"] == kind and r["rope"] == rope
                              and r["G"] == G), key=lambda r: r["n"])
                if not sel:
                    continue
                n = [r["n"] for r in sel]
                ax.errorbar(n, [r["agreement"] for r in sel], [r["stderr"] for r in sel],
                            color=figstyle.ROPE_COLOURS[rope], linestyle=styles[G], marker="o",
                            capsize=1.5, label=f"{figstyle.rope_label(rope)}, G={G}")
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("prompt length n")
        ax.set_title({"ngram": "repeated N-gram prompts",
                      "random": "i.i.d. random prompts"}.get(kind, kind))
    axes[0][0].set_ylabel(r"agreement: $x_{t+1} = f_P(x_t)$")
    axes[0][-1].legend(loc="lower right")
    return figstyle.save(fig, run.figures, "e2_agreement")
