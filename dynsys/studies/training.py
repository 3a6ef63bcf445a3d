"""A model trained from scratch for the studies of loops through training (E7, E8), and the
statistics both read off its greedy traces.

One training serves both studies:

    corpus     mix(english(), chichewa_share, list_share, seed) split by documents into train
               and held-out (held_out, seed); the provenance of every part and side (origin,
               licence, characters, bytes, documents, SHA-256) is the table `corpus`
    tokenizer  a byte-level BPE of `vocab` tokens trained on the train side, saved in
               RUN/tokenizer; both sides encoded are the unit `tokens`
    model      the preset `model` (family, RoPE θ, norm ε, tying, initialisation) with the
               sizes vocab, hidden, layers, heads, kv_heads, ffn and max_position_embeddings
               = seq_len: every trace of the studies stays within the trained positions
    training   dynsys.train.train into the directory `training` (relative to the run
               directory, default RUN/train), checkpoints Pythia-style at
               checkpoint_steps(steps, checkpoint_every); the held-out loss of each
               checkpoint is read from its log

`training` may name another run's training directory (E8 at small scale uses E7's,
"../e7/train"): `train` checks that it holds this model, these settings and these tokens,
resumes it if it was killed and leaves it as it is if it is finished; one that does not exist
yet is trained there.

On a trace x_1..x_G, with k = repeats, two readings of H. Fan's statistic "the minimal cycle
length among cycles repeated at least k times" (0: none):

    end        the smallest p whose last k·p tokens are p-periodic: the loop the trace is
               caught in when it stops (dynsys.dynamics.traces.periodicity(...).shortest)
    anywhere   the smallest p such that some k·p consecutive tokens are p-periodic: a loop
               the trace went through, perhaps left again

end > 0 implies 0 < anywhere <= end.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from dynsys.data import encode, english, mix, provenance, save_tokenizer, split, train_tokenizer
from dynsys.data.prompts import random_tokens, repeated_ngram
from dynsys.dynamics.traces import min_cycle_anywhere, periodicity_batch
from dynsys.io import load_config
from dynsys.runs import Run
from dynsys.studies.settings import Settings
from dynsys.train import TrainConfig, checkpoint_steps, read_log, train

TOKENS = "tokens"  # the unit holding the encoded train and held-out sides
READINGS = {"end": "at the end of the trace", "anywhere": "anywhere in the trace"}


@dataclasses.dataclass(frozen=True)
class Training(Settings):
    """The corpus, model and training shared by E7 and E8 (defaults: the paper's model, about
    13M parameters, an hour on 2 CPU cores). A study's Config derives from it; the model and
    training settings are checked whole (dynsys.train.TrainConfig) when a Config is made."""

    model: str = "tiny"  # preset whose family and fixed settings the trained model takes
    training: str = "train"  # training directory, relative to the run directory or absolute
    vocab: int = 4096  # tokenizer and model vocabulary
    chichewa_share: float = 0.02  # of the characters: Chichewa is the low-resource language
    list_share: float = 0.01  # list-like text, of the characters
    held_out: float = 0.1  # share of each part's documents held out
    seed: int = 0  # corpus mixture and split, initialisation, data order, prompts
    hidden: int = 384
    layers: int = 6
    heads: int = 6
    kv_heads: int = 2
    ffn: int = 1024
    seq_len: int = 256  # training window; also the longest prompt + generation of a study
    batch: int = 8  # windows per step
    steps: int = 1600
    lr: float = 1e-3
    warmup: int = 16
    checkpoint_every: int = 200  # after 0, 1, 2, 4, ..., 512

    LIMITS = {"vocab": 257, "chichewa_share": 0.0, "list_share": 0.0, "held_out": 0.0,
              "seed": 0, "hidden": 1, "layers": 1, "heads": 1, "kv_heads": 1, "ffn": 1,
              "seq_len": 2, "batch": 1, "steps": 1, "lr": 0.0, "warmup": 0,
              "checkpoint_every": 1}

    def __post_init__(self):
        super().__post_init__()
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise ValueError(f"hidden={self.hidden}, heads={self.heads}, kv_heads="
                             f"{self.kv_heads}: hidden must be a multiple of heads and heads of "
                             "kv_heads")
        if not 0 < self.held_out < 1 or self.chichewa_share + self.list_share >= 1:
            raise ValueError(f"held_out={self.held_out} must lie in (0, 1) and chichewa_share="
                             f"{self.chichewa_share} + list_share={self.list_share} below 1")
        train_config(self)  # TrainError (a ValueError) names a bad model or training setting

    def steps_saved(self) -> tuple[int, ...]:
        """The steps of the checkpoints, Pythia's schedule."""
        return checkpoint_steps(self.steps, self.checkpoint_every)


# The small scale of both studies: a 0.2M-parameter model, 300 steps (half a minute on 2 cores).
SMALL = dict(vocab=512, hidden=64, layers=2, heads=4, kv_heads=2, ffn=256, seq_len=128,
             batch=8, steps=300, lr=3e-3, warmup=30, checkpoint_every=100)


def model_config(config: Training):
    """The ModelConfig trained: the preset config.model with the Config's sizes."""
    return load_config(config.model).replace(
        vocab_size=config.vocab, hidden_size=config.hidden, intermediate_size=config.ffn,
        num_layers=config.layers, num_heads=config.heads, num_kv_heads=config.kv_heads,
        head_dim=config.hidden // config.heads, max_position_embeddings=config.seq_len)


def train_config(config: Training) -> TrainConfig:
    """The TrainConfig of the Config (Pythia's optimiser and schedule otherwise)."""
    return TrainConfig(model=model_config(config), seq_len=config.seq_len, batch=config.batch,
                       steps=config.steps, lr=config.lr, warmup=config.warmup, seed=config.seed,
                       data_seed=config.seed, checkpoint_every=config.checkpoint_every)


def corpus(config: Training) -> tuple:
    """The parts of the training mixture (English whole, Chichewa, lists)."""
    return mix(english(), config.chichewa_share, config.list_share, config.seed)


def tokenizer_dir(run: Run) -> Path:
    return run.path / "tokenizer"


def training_dir(run: Run, config: Training) -> Path:
    """config.training, taken from the run directory when relative."""
    return run.path / config.training


def tokens(run: Run, config: Training) -> dict[str, np.ndarray]:
    """{"train", "heldout"}: the two sides of the corpus encoded (the unit `tokens`). Made on
    the first call, with the tokenizer (RUN/tokenizer) and the table `corpus`."""
    if not ((tokenizer_dir(run) / "tokenizer.json").is_file() and run.has(TOKENS)):
        parts = corpus(config)
        train_side, held = split(parts, config.held_out, config.seed)
        tokenizer = train_tokenizer(train_side.documents, config.vocab)
        save_tokenizer(tokenizer, tokenizer_dir(run))
        run.write_table("corpus", [{"corpus": name, **record} for name, record in
                                   provenance(*parts, train_side, held).items()])
        run.save(TOKENS, train=encode(tokenizer, train_side.documents),
                 heldout=encode(tokenizer, held.documents))
    return run.load(TOKENS)


def checkpoints(run: Run, config: Training, progress: bool = True) -> list[tuple[int, Path]]:
    """(step, checkpoint directory) of every checkpoint of the training, in step order, after
    training (or resuming, or checking a finished training) in training_dir."""
    data = tokens(run, config)
    done = train(train_config(config), data["train"], data["heldout"], training_dir(run, config),
                 tokenizer_dir(run), progress=progress)  # the tokenizer goes into each checkpoint
    found = {int(path.name.removeprefix("step_")): path for path in done.checkpoints}
    return [(step, found[step]) for step in config.steps_saved()]


def token_table(data: dict[str, np.ndarray], vocab: int) -> list[dict]:
    """One row: the tokens of each side, the unigram entropy H1 = −Σ p_v ln p_v of the train
    tokens (nats per token) and the held-out cross-entropy of that unigram model (add-½
    smoothed): the loss of a model that ignores the context, which a trained model must beat."""
    counts = np.bincount(data["train"], minlength=vocab).astype(float)
    p = counts[counts > 0] / counts.sum()
    smoothed = (counts + 0.5) / (counts.sum() + 0.5 * vocab)
    return [{"vocab": vocab, "train_tokens": len(data["train"]),
             "heldout_tokens": len(data["heldout"]),
             "unigram_entropy": float(-(p * np.log(p)).sum()),
             "unigram_heldout_loss": float(-np.log(smoothed[data["heldout"]]).mean())}]


def training_table(directory: Path, steps) -> list[dict]:
    """Per checkpoint step: tokens seen, the training loss of its step's batch, the held-out
    loss after it (from the training log) and the training time so far."""
    rows = {row["step"]: row for row in read_log(directory / "log.csv")}
    return [{"step": s, "tokens": rows[s]["tokens"], "loss": rows[s]["loss"],
             "heldout_loss": rows[s]["heldout_loss"], "wall_time": rows[s]["wall_time"]}
            for s in steps]


def write_training_tables(run: Run, config: Training) -> None:
    """The tables `tokens` and `training` of a run."""
    run.write_table("tokens", token_table(run.load(TOKENS), config.vocab))
    run.write_table("training", training_table(training_dir(run, config), config.steps_saved()))


def make_prompts(kind: str, vocab: int, length: int, count: int, seed: int) -> np.ndarray:
    """[count, length] prompts: `kind` "random" (i.i.d. uniform ids, the blog's setup) or
    "ngramN" (a uniformly random N-gram repeated); prompt j of a kind is drawn from the seed
    (seed, N, j), N = 0 for "random", so every checkpoint sees the same prompts."""
    n = 0 if kind == "random" else int(kind.removeprefix("ngram"))
    seeds = [int(np.random.SeedSequence((seed, n, j)).generate_state(1)[0]) for j in range(count)]
    if n == 0:
        return np.stack([random_tokens(vocab, length, s) for s in seeds])
    return np.stack([repeated_ngram(vocab, n, length, s) for s in seeds])


def cycle_lengths(traces: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """{reading: minimal cycle length per trace} for the two READINGS (module docstring)."""
    return {"end": np.asarray(periodicity_batch(traces, k).shortest),
            "anywhere": min_cycle_anywhere(traces, k)}


def trace_table(lengths: dict[tuple, dict[str, np.ndarray]], columns: tuple[str, ...]
                ) -> list[dict]:
    """Per key of `lengths` (a tuple, its parts named by `columns`) and prompt j: the minimal
    cycle length of trace j in both readings."""
    return [{**dict(zip(columns, key)), "prompt": j,
             **{reading: int(found[reading][j]) for reading in READINGS}}
            for key, found in lengths.items() for j in range(len(found["end"]))]


def read_lengths(rows: list[dict], columns: tuple[str, ...],
                 reading: str = "end") -> dict[tuple, np.ndarray]:
    """The rows of a `trace_table` back as {key: minimal cycle lengths, in prompt order}."""
    out: dict[tuple, list[int]] = {}
    for r in sorted(rows, key=lambda r: r["prompt"]):
        out.setdefault(tuple(r[c] for c in columns), []).append(r[reading])
    return {key: np.array(values) for key, values in out.items()}


def length_bins(top: int) -> list[tuple[int, int]]:
    """Bins [lo, hi] of minimal cycle lengths: none (0), 1, 2, 3, 4, then 5–8, 9–16, ... up
    to the bin that holds `top`."""
    edges = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    while edges[-1][1] < top:
        edges.append((edges[-1][1] + 1, 2 * edges[-1][1]))
    return edges


def bins(new_tokens: int, k: int) -> list[tuple[int, int]]:
    """The histogram bins of minimal cycle lengths of G-token traces: none, 1, 2, 3, 4, 5–8,
    9–16, ... up to the longest possible cycle, G // k."""
    return length_bins(max(new_tokens // k, 1))


def bin_labels(edges: list[tuple[int, int]]) -> list[str]:
    return ["none" if hi == 0 else f"{lo}" if lo == hi else f"{lo}–{hi}" for lo, hi in edges]


def bin_index(lengths: np.ndarray, edges: list[tuple[int, int]]) -> np.ndarray:
    """The bin of each minimal cycle length."""
    return np.searchsorted([hi for _, hi in edges], lengths)


def histogram(lengths: np.ndarray, edges: list[tuple[int, int]]) -> np.ndarray:
    """Share of the traces in each bin."""
    return np.bincount(bin_index(lengths, edges), minlength=len(edges)) / len(lengths)


def step_axis(ax, last: int) -> None:
    """Training steps 0..last on a symmetric-log x axis: linear up to 1, so that step 0 is
    shown, logarithmic beyond."""
    ax.set_xscale("symlog", linthresh=1, linscale=0.4)
    ax.set_xlim(-0.3, last * 1.3)
    ticks = [0, *(10**i for i in range(len(str(last))))]
    ax.set_xticks(ticks, [str(t) for t in ticks])  # 0, 1, 10, 100 rather than 10^0, 10^1, ...
    ax.set_xlabel("training step")
