"""E8: looping marks an under-trained path (H. Fan's claim 3: prompted with a Japanese lorem
ipsum, a model trained mostly on English loops like an untrained model). The low-resource
language here is a real one, Chichewa (dynsys.data.chichewa: the Chichewa Bible), at a small
share of the training text; the blog's lorem ipsum, a few hundred words repeated, is learned
quickly and is no under-trained path.

The model of dynsys.studies.training (its own training, or the one `training` names: at small
scale E7's) is trained on English with a small Chichewa share. Its final checkpoint continues
`prompts` prompts of `length` tokens per language by G greedy tokens:

    english    segments of the held-out English documents (none of them trained on)
    chichewa   segments of Chichewa Bible chapters that are not in the training mixture (the
               chapters after the mixture's in the same seeded order, any chapter whose text
               is in the training corpus dropped): the trained language, in new text

Each language's text is its documents joined by the end-of-text separator, encoded and cut
into consecutive segments, of which `prompts` are drawn at random. Every checkpoint continues
`prompts` random prompts of `reference_length` i.i.d. uniform ids by G greedy tokens: the
blog's reference of what looping looks like at that point of training.

The statistic is the histogram of minimal cycle lengths (end reading; cycles repeated >=
`repeats` times; binned none, 1, 2, 3, 4, 5–8, ...). For each language, the total-variation
distance TV(h_lang, h_step) = ½ Σ |h_lang − h_step| to every checkpoint's histogram on random
prompts, and the checkpoint nearest. The claim holds if Chichewa sits nearest an earlier
checkpoint than English: D = index(nearest to English) − index(nearest to Chichewa) > 0,
with a percentile bootstrap interval resampling the prompts of each language and the random
prompts (the same resample at every checkpoint); null D = 0, threshold 0. Each language's
loss (per-token cross-entropy of `windows` windows of seq_len + 1 tokens of its text) at every
checkpoint shows whether its path is trained; the final model's Chichewa loss per byte
exceeding its English loss per byte is tested the same way (difference of mean window
losses, threshold 0). That is the claim's premise, a manipulation check: where it does not
hold, the claim is "not testable here" (a language the model has learned well is no
under-trained path).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
from matplotlib.lines import Line2D

from dynsys import figstyle
from dynsys.data import (
    chichewa,
    chichewa_chapters,
    encode,
    english,
    load_tokenizer,
    provenance,
    split,
)
from dynsys.decode import generate
from dynsys.io import load
from dynsys.runs import Run
from dynsys.stats import HOLDS, NOT_TESTABLE, bootstrap_test
from dynsys.studies.finding import MANIPULATION, Finding
from dynsys.studies.training import (
    SMALL,
    Training,
    bin_index,
    bin_labels,
    bins,
    checkpoints,
    corpus,
    cycle_lengths,
    histogram,
    make_prompts,
    read_lengths,
    step_axis,
    tokenizer_dir,
    trace_table,
    train_config,
    write_training_tables,
)
from dynsys.train import heldout_loss

NAME = "e8"
TITLE = "Under-trained paths: text prompts against the checkpoints' loops"
LANGUAGES = ("english", "chichewa")
LEVEL = 0.95  # confidence of the bootstrap intervals
COLOURS = dict(zip(("english", "chichewa"), figstyle.OTHERS))  # not RoPE on/off's pair


@dataclasses.dataclass(frozen=True)
class Config(Training):
    training: str = "../e7-paper/train"  # E7's at paper scale (trained there if absent)
    prompts: int = 256  # prompts per language, and random prompts per checkpoint
    length: int = 100  # tokens of a text prompt
    reference_length: int = 10  # tokens of a random prompt
    G: int = 156  # greedy tokens per prompt
    repeats: int = 3  # a cycle counts when it is repeated at least this many times
    windows: int = 32  # windows of seq_len + 1 tokens per language for its loss
    resamples: int = 1000  # bootstrap resamples

    LIMITS = {**Training.LIMITS, "prompts": 1, "length": 1, "reference_length": 1, "G": 2,
              "repeats": 2, "windows": 1, "resamples": 10, "seq_len": lambda c: c.positions()}

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.length, self.reference_length) + self.G


SCALES = {"small": Config(**SMALL, training="../e7/train", prompts=64, length=64, G=64,
                          windows=16, resamples=500),
          "paper": Config()}


def step_unit(step: int) -> str:
    return f"s{step:07d}"


# --- the text of each language -------------------------------------------------------------

def text(config: Config, tokenizer, language: str) -> tuple:
    """(Corpus, its ids): the text a language's prompts are cut from (module docstring), the
    Chichewa one the fewest chapters (doubling from 64) long enough for `prompts` segments of
    `length` tokens and `windows` windows of seq_len + 1 tokens, or all of them."""
    if language == "english":
        held = split((english(),), config.held_out, config.seed)[1]
        return held, encode(tokenizer, held.documents)
    trained = {d for part in corpus(config) for d in part.documents}
    needed = max(config.prompts * config.length, config.windows * (config.seq_len + 1))
    total = len(chichewa_chapters())
    n = 64
    while True:
        chapters = chichewa(min(n, total), config.seed)
        kept = dataclasses.replace(
            chapters, origin=f"{chapters.origin}, chapters in the training corpus dropped",
            documents=tuple(d for d in chapters.documents if d not in trained))
        ids = encode(tokenizer, kept.documents)
        if len(ids) >= needed or n >= total:
            return kept, ids
        n *= 2


def text_unit(config: Config, tokenizer, language: str) -> dict:
    """A language's prompts [prompts, length] (segments drawn at random, seed (seed, i)), its
    loss windows [windows, seq_len + 1] (the first of its text), its text's provenance, and the
    tokens and UTF-8 bytes of its documents (ValueError if the text is too short)."""
    source, ids = text(config, tokenizer, language)
    segments = len(ids) // config.length
    if segments < config.prompts or len(ids) < config.windows * (config.seq_len + 1):
        raise ValueError(f"the {language} text ({source.origin}) gives {segments} prompts of "
                         f"{config.length} tokens and {len(ids) // (config.seq_len + 1)} loss "
                         f"windows; prompts={config.prompts} and windows={config.windows} "
                         "need more (raise held_out)")
    rng = np.random.default_rng([config.seed, LANGUAGES.index(language)])
    chosen = np.sort(rng.choice(segments, config.prompts, replace=False))
    record = provenance(source)[source.name]
    return {"prompts": ids[:segments * config.length].reshape(segments, -1)[chosen],
            "windows": ids[:config.windows * (config.seq_len + 1)].reshape(config.windows, -1),
            "tokens": len(ids) - len(source.documents) + 1,  # separators excluded
            "bytes": sum(len(d.encode()) for d in source.documents),
            "documents": record["documents"], "sha256": record["sha256"],
            "origin": source.origin}


# --- the run -------------------------------------------------------------------------------

def run(run: Run, config: Config, progress: bool = True) -> None:
    saved = checkpoints(run, config, progress)
    paths = dict(saved)
    final = saved[-1][0]
    model = functools.lru_cache(maxsize=1)(load)
    tokenizer = functools.cache(lambda: load_tokenizer(tokenizer_dir(run)))
    trainer = train_config(config)
    run.fill([(language,) for language in LANGUAGES], lambda language: f"text_{language}",
             lambda language: text_unit(config, tokenizer(), language), "E8 texts", progress)
    texts = {language: run.load(f"text_{language}") for language in LANGUAGES}

    def at_step(step: int) -> dict:
        net = model(paths[step])
        prompts = make_prompts("random", config.vocab, config.reference_length, config.prompts,
                               config.seed)
        return {"prompts": prompts, "traces": np.asarray(generate(net, prompts, config.G).tokens),
                **{f"loss_{language}": np.array(
                    [float(heldout_loss(trainer, net.params, w[None]))
                     for w in texts[language]["windows"]]) for language in LANGUAGES}}

    run.fill([(step,) for step in config.steps_saved()], step_unit, at_step,
             "E8 checkpoints", progress)
    run.fill([(language,) for language in LANGUAGES], lambda language: f"final_{language}",
             lambda language: {"traces": np.asarray(generate(
                 model(paths[final]), texts[language]["prompts"], config.G).tokens)},
             "E8 text prompts", progress)
    write_training_tables(run, config)
    steps = {step: run.load(step_unit(step)) for step in config.steps_saved()}
    lengths = {**{("random", step): cycle_lengths(unit["traces"], config.repeats)
                  for step, unit in steps.items()},
               **{(language, final): cycle_lengths(run.load(f"final_{language}")["traces"],
                                                   config.repeats) for language in LANGUAGES}}
    edges = bins(config.G, config.repeats)
    run.write_table("texts", text_table(texts))
    run.write_table("traces", trace_table(lengths, ("source", "step")))
    run.write_table("histograms", [{"source": source, "step": step, "bin": label,
                                    "share": share}
                                   for (source, step), found in lengths.items()
                                   for label, share in zip(bin_labels(edges),
                                                           histogram(found["end"], edges))])
    run.write_table("distances", distance_table(lengths, edges))
    run.write_table("losses", loss_table(steps, texts))
    run.write_table("window_losses", [{"language": language, "window": i, "loss": loss}
                                      for language in LANGUAGES
                                      for i, loss in enumerate(steps[final][f"loss_{language}"])])


def text_table(texts: dict) -> list[dict]:
    """Per language: where its text comes from, its size (documents, UTF-8 bytes, tokens
    without separators) and SHA-256, and the prompts and loss windows cut from it."""
    return [{"language": language, "origin": str(unit["origin"]),
             "documents": int(unit["documents"]), "bytes": int(unit["bytes"]),
             "tokens": int(unit["tokens"]), "bytes_per_token": float(unit["bytes"]
                                                                     / unit["tokens"]),
             "sha256": str(unit["sha256"]), "prompts": len(unit["prompts"]),
             "windows": len(unit["windows"])} for language, unit in texts.items()]


def distances(hists: dict[str, np.ndarray], reference: np.ndarray) -> dict[str, np.ndarray]:
    """{language: TV distance of its histogram to each row of reference [steps, bins]}."""
    return {language: 0.5 * np.abs(reference - h).sum(axis=-1) for language, h in hists.items()}


def distance_table(lengths: dict, edges) -> list[dict]:
    """Per (language, step): the TV distance between the language's histogram and the step's
    histogram on random prompts (end reading), and whether that step is the nearest."""
    steps = sorted(step for source, step in lengths if source == "random")
    reference = np.stack([histogram(lengths["random", s]["end"], edges) for s in steps])
    final = max(steps)
    tv = distances({language: histogram(lengths[language, final]["end"], edges)
                    for language in LANGUAGES}, reference)
    return [{"language": language, "step": s, "tv": float(d),
             "nearest": bool(i == np.argmin(tv[language]))}
            for language in LANGUAGES for i, (s, d) in enumerate(zip(steps, tv[language]))]


def loss_table(steps: dict[int, dict], texts: dict) -> list[dict]:
    """Per (step, language): the mean per-token loss over the language's windows (nats), and
    the same per UTF-8 byte (× tokens / bytes of its text), the unit in which languages that
    the tokenizer cuts differently compare."""
    return [{"step": step, "language": language, "loss": float(unit[f"loss_{language}"].mean()),
             "loss_per_byte": float(unit[f"loss_{language}"].mean() * texts[language]["tokens"]
                                    / texts[language]["bytes"])}
            for step, unit in steps.items() for language in LANGUAGES]


# --- findings ------------------------------------------------------------------------------

def _counts(bin_of: np.ndarray, draws: np.ndarray, size: int) -> np.ndarray:
    """Histograms [resamples, size] of bin_of[draws[r]] for each row r of draws."""
    r = np.arange(len(draws))[:, None]
    return np.bincount((r * size + bin_of[draws]).ravel(),
                       minlength=len(draws) * size).reshape(len(draws), size) / draws.shape[1]


def nearest_finding(languages: dict[str, np.ndarray], reference: dict[int, np.ndarray],
                    edges, resamples: int, seed: int) -> Finding:
    """Claim (module docstring) from the minimal cycle lengths (end reading) of each language's
    traces and, per step, of the random prompts' traces (prompts in the same order at every
    step): D = index(nearest to English) − index(nearest to Chichewa) with its bootstrap
    interval, against 0."""
    steps = sorted(reference)
    size = len(edges)
    ref_bins = np.stack([bin_index(reference[s], edges) for s in steps])  # [steps, prompts]
    lang_bins = {language: bin_index(languages[language], edges) for language in LANGUAGES}

    def tv(lang_draws: dict, ref_draws: np.ndarray) -> dict[str, np.ndarray]:
        """{language: TV distances [resamples, steps]} of the resampled histograms."""
        ref = np.stack([_counts(row, ref_draws, size) for row in ref_bins], axis=1)
        return distances({language: _counts(lang_bins[language], lang_draws[language],
                                            size)[:, None] for language in LANGUAGES}, ref)

    observed = {language: d[0] for language, d in tv(
        {language: np.arange(b.size)[None] for language, b in lang_bins.items()},
        np.arange(ref_bins.shape[1])[None]).items()}
    rng = np.random.default_rng(seed)
    draws = {language: rng.integers(0, b.size, (resamples, b.size))
             for language, b in lang_bins.items()}
    boot = {language: np.argmin(d, axis=-1) for language, d in tv(
        draws, rng.integers(0, ref_bins.shape[1], (resamples, ref_bins.shape[1]))).items()}
    index = {language: int(np.argmin(observed[language])) for language in LANGUAGES}
    d = index["english"] - index["chichewa"]
    test = bootstrap_test(d, boot["english"] - boot["chichewa"], lang_bins["chichewa"].size, 0.0,
                          "above", LEVEL)
    interval = test.interval
    nearest_tv = {language: float(observed[language][index[language]]) for language in LANGUAGES}
    return Finding(
        NAME, "Chichewa prompts follow under-trained paths: their traces' minimal-cycle "
              "histogram is nearest (total variation) to an earlier checkpoint's histogram on "
              "random prompts than that of English prompts (null: the same checkpoint)",
        "nearest step (TV): " + ", ".join(
            f"{language} {steps[index[language]]} ({nearest_tv[language]:.2f})"
            for language in LANGUAGES)
        + f"; difference of checkpoint indices {d:+d} [{interval[0]:+g}, {interval[1]:+g}] "
          f"(bootstrap), n={lang_bins['english'].size}/{lang_bins['chichewa'].size} prompts, "
          f"{ref_bins.shape[1]} random prompts x {len(steps)} checkpoints",
        test.verdict, test=test)


def loss_finding(losses: dict[str, np.ndarray], resamples: int, seed: int) -> Finding:
    """From {language: the final model's loss per UTF-8 byte of each of its windows}: Chichewa
    − English (means over windows) with a percentile bootstrap interval (windows resampled
    within each language), against 0."""
    rng = np.random.default_rng(seed)
    means = {language: losses[language][rng.integers(0, losses[language].size,
                                                     (resamples, losses[language].size))]
             .mean(axis=1) for language in LANGUAGES}
    d = losses["chichewa"].mean() - losses["english"].mean()
    test = bootstrap_test(d, means["chichewa"] - means["english"], losses["chichewa"].size, 0.0,
                          "above", LEVEL)
    interval = test.interval
    return Finding(
        NAME, "premise: Chichewa is the under-trained language: the final model's loss per "
              "byte of unseen Chichewa text exceeds its loss per byte of held-out English "
              "(null: equal)",
        f"English {losses['english'].mean():.2f}, Chichewa {losses['chichewa'].mean():.2f} "
        f"nats/byte; difference {d:+.2f} [{interval[0]:+.2f}, {interval[1]:+.2f}] "
        f"(bootstrap), n={losses['english'].size}/{losses['chichewa'].size} windows",
        test.verdict, kind=MANIPULATION, test=test)


def findings(run: Run) -> list[Finding]:
    config = run.settings(Config)
    lengths = read_lengths(run.read_table("traces"), ("source", "step"))
    reference = {step: p for (source, step), p in lengths.items() if source == "random"}
    languages = {source: p for (source, _), p in lengths.items() if source in LANGUAGES}
    texts = {r["language"]: r for r in run.read_table("texts")}
    windows = run.read_table("window_losses")
    per_byte = {language: np.array([r["loss"] for r in windows if r["language"] == language])
                * texts[language]["tokens"] / texts[language]["bytes"] for language in LANGUAGES}
    losses = {(r["language"], r["step"]): r["loss"] for r in run.read_table("losses")}
    final = max(reference)
    premise = loss_finding(per_byte, config.resamples, config.seed)
    nearest = nearest_finding(languages, reference, bins(config.G, config.repeats),
                              config.resamples, config.seed)
    return [nearest if premise.verdict == HOLDS
            else dataclasses.replace(nearest, verdict=NOT_TESTABLE),
            premise,
            Finding(NAME, "per-token loss of the final model on each language's text (the "
                          "statistic the tokenizer makes incomparable across languages)",
                    "; ".join(f"{language} {losses[language, final]:.2f} nats/token "
                              f"({texts[language]['bytes_per_token']:.2f} bytes/token)"
                              for language in LANGUAGES), None)]


# --- figures -------------------------------------------------------------------------------

def figures(run: Run):
    """Histograms of the text prompts' traces (final model) beside the random prompts' at step
    0 and at the final step; TV distance of each language to every checkpoint; the loss of
    each language through training."""
    hists = run.read_table("histograms")
    tv = run.read_table("distances")
    losses = run.read_table("losses")
    steps = sorted({r["step"] for r in tv})
    fig, axes = figstyle.figure(ncols=3, width=figstyle.FULL, aspect=1.0)
    hist_ax, tv_ax, loss_ax = axes[0]
    series = [(language, steps[-1], language, COLOURS[language]) for language in LANGUAGES]
    series += [("random", s, f"random, step {s}", colour)
               for s, colour in zip((steps[0], steps[-1]), ("0.75", "0.35"))]
    labels = list(dict.fromkeys(r["bin"] for r in hists))
    x = np.arange(len(labels))
    width = 0.8 / len(series)
    for i, (source, step, label, colour) in enumerate(series):
        share = {r["bin"]: r["share"] for r in hists if (r["source"], r["step"]) == (source, step)}
        hist_ax.bar(x + (i - (len(series) - 1) / 2) * width, [share[b] for b in labels], width,
                    color=colour, label=label)
    hist_ax.set_xticks(x, labels, rotation=90)
    hist_ax.set_xlabel("minimal cycle length")
    hist_ax.set_ylabel("share of traces")
    hist_ax.set_ylim(0, 1.02)
    hist_ax.set_title("traces' cycle lengths")
    for language in LANGUAGES:
        sel = [r for r in tv if r["language"] == language]
        tv_ax.plot([r["step"] for r in sel], [r["tv"] for r in sel], marker="o",
                   color=COLOURS[language], label=language)
        near = [r for r in sel if r["nearest"]]
        tv_ax.plot([r["step"] for r in near], [r["tv"] for r in near], marker="*", ms=10,
                   ls="none", color=COLOURS[language])
    tv_ax.set_ylabel("total-variation distance")
    tv_ax.set_title("to random prompts' histogram\nat the same step")
    units = {"loss": ("-", "per token"), "loss_per_byte": (":", "per byte")}
    for language in LANGUAGES:
        sel = [r for r in losses if r["language"] == language]
        for column, (style, _) in units.items():
            loss_ax.plot([r["step"] for r in sel], [r[column] for r in sel], marker="o",
                         ms=2, ls=style, color=COLOURS[language])
    loss_ax.axhline(run.read_table("tokens")[0]["unigram_heldout_loss"], color="0.5", ls="--")
    loss_ax.set_ylabel("nats")
    loss_ax.set_title("held-out loss of each language")
    # One legend under the panels, where it covers no curve.
    handles, labels = hist_ax.get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", marker="*", ms=8, ls="none")]
    handles += [Line2D([], [], color="0.3", ls=style) for style, _ in units.values()]
    handles += [Line2D([], [], color="0.5", ls="--")]
    labels = [*labels, "nearest checkpoint", *(f"loss {label}" for _, label in units.values()),
              "unigram model, per token"]
    fig.legend(handles, labels, loc="outside lower center", ncols=5, columnspacing=1.0)
    loss_ax.set_ylim(bottom=0)
    for ax in (tv_ax, loss_ax):
        step_axis(ax, steps[-1])
    return figstyle.save(fig, run.figures, "e8_paths")
