"""What a trained test bed is: the numbers that show it is a non-trivial model of its source
(issue 24's closing note), read from the registry and the run, and measured on its latest
checkpoint.

    training      parameters, context, tokens seen, training time and the held-out loss at
                  the checkpoint (the training log), beside the source's reference predictors
                  (the unigram; for a Markov source the Bayes-optimal in-context predictor)
    attention     per layer, the concentration of the last token's attention over n = context
                  keys (dynsys.theory.concentration: excess n·max a, score s.d., entropy /
                  ln n; uniform attention gives 1, 0, 1), on PROMPTS held-out windows of the
                  test bed's own source and on PROMPTS windows of i.i.d. uniform ids
    copying       Xu et al. 2022's self-reinforcement TP_k (dynsys.theory.reinforcement, as
                  E7 measures it): a span of SPAN_LENGTH tokens written COPIES + 1 times, TP_k
                  the mean probability of its tokens in the copy that has k copies before it,
                  at k = 1 and k = COPIES, over SPANS spans of the source's held-out text (for
                  a Markov source, spans of its own held-out chains) and of uniform ids

A model that learned to copy has TP_COPIES well above TP_1, and TP_1 above what its held-out
loss gives a token without the copy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from dynsys.data.prompts import random_tokens
from dynsys.io import load
from dynsys.testbeds.registry import (
    ROOT,
    TestbedSummary,
    read_registry,
    recipe,
    resolve,
    summary_rows,
)
from dynsys.theory.concentration import attention_concentration
from dynsys.theory.reinforcement import repetition_probability
from dynsys.train import read_log

PROMPTS = 8  # windows of the attention probe, per kind (dynsys.studies.ATTENTION_PROMPTS)
SPANS, SPAN_LENGTH = 32, 12  # the copying probe's spans, as E7's (dynsys.studies.e7_training)
COPIES = 8  # TP_1 against TP_COPIES
KINDS = ("heldout", "random")  # the probes' windows: the source's held-out text, uniform ids


@dataclasses.dataclass(frozen=True)
class TestbedReport:
    """A test bed at its latest checkpoint: `summary` (at that step), the attention
    concentration per layer by window kind ({kind: [{layer, excess, max_excess, score_sd,
    entropy}]}, means over windows and heads, max_excess the largest head's) over `keys`
    keys, and TP_k by window kind ({kind: {k: mean TP_k over spans}}, k = 1, COPIES)."""

    summary: TestbedSummary
    keys: int
    attention: dict[str, list[dict[str, float]]]
    tp: dict[str, dict[int, float]]

    @property
    def finished(self) -> bool:
        """Whether the checkpoint is the recipe's last step."""
        return self.summary.step == self.summary.steps


def testbed_report(spec: str, root: str | Path = ROOT) -> TestbedReport:
    """The report of the test bed KEY (or KEY@CHECKPOINT; default its latest checkpoint) in
    the registry of `root`. ValueError naming the spec for an unknown key or checkpoint."""
    root = Path(root)
    key, _, point = spec.partition("@")
    entries = read_registry(root)
    if key not in entries:
        raise ValueError(f"unknown test bed {key!r} in {root} (registered: "
                         f"{', '.join(entries) or 'none'})")
    entry = entries[key]
    path = resolve(f"{key}@{point or 'latest'}", root)
    step = int(path.name.removeprefix("step_"))
    made = recipe(entry["testbed"], entry["scale"], entry["settings"])
    model = load(path)
    seed, n = made.settings.seed, made.train.seq_len
    rows = [r for r in read_log(root / key / "train" / "log.csv") if r["step"] == step]
    if not rows or rows[-1]["heldout_loss"] is None:
        raise ValueError(f"{spec!r}: {root / key / 'train' / 'log.csv'} has no held-out loss "
                         f"at step {step}")
    row = rows[-1]
    done = entry.get("summary")
    references = done["references"] if done else made.source.references(
        made.source.windows("heldout", made.settings.heldout_windows, n, seed))
    summary = TestbedSummary(
        key=key, out_dir=root / key, step=step, steps=made.train.steps,
        params=sum(np.size(x) for x in jax.tree_util.tree_leaves(model.params)), context=n,
        tokens=row["tokens"], seconds=row["wall_time"], heldout_loss=row["heldout_loss"],
        references=references, checkpoints=tuple(sorted(path.parent.glob("step_*"))))
    vocab = made.source.vocab_size
    prompts = {"heldout": made.source.windows("heldout", PROMPTS, n - 1, seed),
               "random": np.stack([random_tokens(vocab, n, seed=i) for i in range(PROMPTS)])}
    spans = {"heldout": made.source.windows("heldout", SPANS, SPAN_LENGTH - 1, seed + 1),
             "random": np.stack([random_tokens(vocab, SPAN_LENGTH, seed=PROMPTS + i)
                                 for i in range(SPANS)])}
    tp = {kind: repetition_probability(model, spans[kind], COPIES + 1).mean(0)
          for kind in KINDS}
    return TestbedReport(
        summary=summary, keys=n,
        attention={kind: attention_concentration(model, prompts[kind]).layers()
                   for kind in KINDS},
        tp={kind: {1: float(tp[kind][1]), COPIES: float(tp[kind][COPIES])} for kind in KINDS})


def checkpointed(key: str, root: str | Path = ROOT) -> bool:
    """Whether the run KEY under root has saved a checkpoint (a registered training may not
    have yet)."""
    return any((Path(root) / key / "train" / "checkpoints").glob("step_*/config.json"))


def report_rows(report: TestbedReport) -> list[tuple[str, str]]:
    """(what, value) lines of a report, for a printed table: summary_rows, then per kind the
    attention concentration per layer and TP_1, TP_COPIES."""
    names = {"heldout": "held-out", "random": "uniform ids"}
    rows = summary_rows(report.summary)
    for kind in KINDS:
        rows += [(f"attention, layer {r['layer']}, {names[kind]} ({report.keys} keys)",
                  (f"excess {r['excess']:.2f} (max {r['max_excess']:.1f}), score s.d. "
                   f"{r['score_sd']:.2f}, entropy/ln n {r['entropy']:.3f}"))
                 for r in report.attention[kind]]
    rows += [(f"TP_1 → TP_{COPIES}, {names[kind]} spans of {SPAN_LENGTH}",
              f"{report.tp[kind][1]:.3f} → {report.tp[kind][COPIES]:.3f}") for kind in KINDS]
    return rows
