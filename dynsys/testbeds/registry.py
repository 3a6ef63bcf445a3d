"""Test beds: named recipes (a data source, a tokenizer, a model, a training) at named scales,
trained into run directories listed in a registry, so that a study names a trained model by
test bed and checkpoint: `resolve("markov1-small@final", root)`.

    ROOT/testbeds.json    the registry: {KEY: {testbed, scale, steps, settings, summary}},
                          rewritten atomically whenever a training starts or ends
    ROOT/KEY/run.json     the recipe's settings and provenance (dynsys.runs)
    ROOT/KEY/train/       the training directory (dynsys.train; checkpoints/step_XXXXXXX are
                          Hugging Face directories)
    ROOT/KEY/tables/      training.csv (one row per checkpoint), summary.csv (one row),
                          and the source's own tables (a corpus's provenance: corpus.csv)
    ROOT/KEY/tokenizer/   the source's tokenizer, if it has one (also in every checkpoint)

ROOT is the directory holding the run directories (runs/testbeds by default) and KEY a run
directory's name (NAME-SCALE by default, e.g. runs/testbeds/markov1-small).

A recipe is a `Testbed` (a description and one settings object per scale) plus the settings'
own `source()`, a `Source`: a test bed of another kind (a long-document corpus with a
tokenizer, RoPE on or off, a ladder of sizes) is one more settings class deriving from
`Scale`, one more Source and one more entry in TESTBEDS.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path
from typing import Protocol

import jax
import numpy as np
from tokenizers import Tokenizer

from dynsys.config import ModelConfig, check_int
from dynsys.data import save_tokenizer
from dynsys.io import load
from dynsys.nn import init_params
from dynsys.runs import atomic_path, open_run
from dynsys.testbeds.language import DocumentSource
from dynsys.testbeds.markov import MarkovSource
from dynsys.train import TrainConfig, checkpoint_steps, read_log, train

REGISTRY = "testbeds.json"
ENCODINGS = {True: "RoPE", False: "NoPE"}  # by Scale.rope
ROOT = Path("runs/testbeds")


class Source(Protocol):
    """What a test bed trains on."""

    @property
    def vocab_size(self) -> int: ...

    def describe(self) -> str: ...

    def windows(self, split: str, count: int, seq_len: int, seed: int) -> np.ndarray:
        """[count, seq_len + 1] token windows of split "train" or "heldout" (each split drawn
        from its own streams; the same arguments give the same windows)."""

    def references(self, windows: np.ndarray) -> dict[str, float]:
        """Held-out losses of reference predictors on windows[:, 1:], by name ({} if none)."""

    def tokenizer(self) -> Tokenizer | None:
        """The tokenizer of the ids (saved into the run and every checkpoint), or None when
        the ids are the alphabet."""

    def tables(self) -> dict[str, list[dict]]:
        """Tables describing the data (a corpus's provenance), by name, written into the run
        ({} if none)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Scale:
    """The model and training of a test bed at one scale (the defaults: the small scale): a
    llama (MHA, untied embeddings) of `layers` blocks of width `hidden` with `heads` heads
    and an MLP of width `ffn`, RoPE on or off, `positions` positions (None: seq_len, the
    training context); AdamW with Pythia's schedule for `steps` steps of `batch` windows of
    seq_len + 1 tokens out of `train_windows` windows, visited in a new order every epoch
    (None: steps · batch, each window seen once); the held-out loss over `heldout_windows`
    windows; checkpoints at Pythia's steps 0, 1, 2, 4, …, 512 and every `checkpoint_every`;
    the training state (what a killed run resumes from) every `save_every` steps. `seed`
    draws the data, the initialisation and the order of the windows. `init` (a registered
    checkpoint KEY@CHECKPOINT beside the run, e.g. markov1-small@final) starts the training
    from its parameters instead: a warm start of the same architecture, whose positions may
    differ (a RoPE model trained on short windows, then on long ones). A subclass adds the
    settings of its data and `source()`, the Source they make."""

    layers: int = 2
    hidden: int = 64
    heads: int = 2
    ffn: int = 256
    rope: bool = True
    positions: int | None = None
    seq_len: int = 256
    batch: int = 16
    steps: int = 500
    lr: float = 3e-3
    warmup: int = 50
    checkpoint_every: int = 250
    save_every: int = 100
    train_windows: int | None = None
    heldout_windows: int = 64
    seed: int = 0
    init: str | None = None

    def train_config(self, vocab_size: int) -> TrainConfig:
        """The TrainConfig of these settings for a source of `vocab_size` ids."""
        check_int("heads", self.heads, 1)
        if check_int("hidden", self.hidden, 1) % self.heads:
            raise ValueError(f"hidden={self.hidden} is not a multiple of heads={self.heads}")
        model = ModelConfig(
            family="llama", vocab_size=vocab_size, hidden_size=self.hidden,
            intermediate_size=self.ffn, num_layers=self.layers, num_heads=self.heads,
            num_kv_heads=self.heads, head_dim=self.hidden // self.heads, use_rope=self.rope,
            max_position_embeddings=self.seq_len if self.positions is None else self.positions)
        return TrainConfig(model=model, seq_len=self.seq_len, batch=self.batch,
                           steps=self.steps, lr=self.lr, warmup=self.warmup, seed=self.seed,
                           data_seed=self.seed, eval_windows=self.heldout_windows,
                           checkpoint_every=self.checkpoint_every, save_every=self.save_every)

    def windows_drawn(self) -> tuple[int, int]:
        """(training windows, held-out windows)."""
        count = self.steps * self.batch if self.train_windows is None else self.train_windows
        if check_int("train_windows", count, 1) < self.batch:
            raise ValueError(f"train_windows={count} is fewer than one batch of {self.batch}")
        return count, check_int("heldout_windows", self.heldout_windows, 1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MarkovScale(Scale):
    """A Scale trained on in-context Markov chains of `order` over `vocab` symbols, rows
    ~ Dirichlet(alpha) (dynsys.testbeds.markov)."""

    order: int
    vocab: int = 32
    alpha: float = 0.1

    def source(self) -> MarkovSource:
        return MarkovSource(self.vocab, self.order, self.alpha)


@dataclasses.dataclass(frozen=True, kw_only=True)
class LanguageScale(Scale):
    """A Scale trained on long documents (DocumentSource): `shares` of the characters by
    source, at most `characters` of them (None: all the shares allow), `held_out` of the
    documents held out, a BPE of `vocab` tokens; grouped-query attention with `kv_heads`
    key-value heads. Training draws all the train documents' windows (`train_windows` None
    caps them at steps · batch), seen again every epoch in a new order."""

    vocab: int = 1024
    kv_heads: int = 2
    shares: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"python-source": 0.6, "shakespeare": 0.4})
    characters: int | None = None
    held_out: float = 0.05

    def source(self) -> DocumentSource:
        if not isinstance(self.shares, dict):
            raise ValueError(f"shares={self.shares!r} must map sources to shares")
        return DocumentSource(tuple(self.shares.items()), self.vocab, self.held_out, self.seed,
                              self.characters)

    def train_config(self, vocab_size: int) -> TrainConfig:
        """Scale's TrainConfig with `kv_heads` key-value heads."""
        made = super().train_config(vocab_size)
        return dataclasses.replace(made, model=made.model.replace(num_kv_heads=self.kv_heads))


@dataclasses.dataclass(frozen=True)
class Testbed:
    """A named recipe: what it trains, and its settings at each scale."""

    description: str
    scales: dict[str, Scale]


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One test bed at one scale with its settings (any overrides applied), checked whole:
    its source and TrainConfig exist."""

    name: str
    scale: str
    settings: Scale
    source: Source
    train: TrainConfig

    @property
    def key(self) -> str:
        """The default name of its run directory: NAME-SCALE."""
        return f"{self.name}-{self.scale}"

    def to_dict(self) -> dict:
        return {"testbed": self.name, "scale": self.scale,
                **dataclasses.asdict(self.settings)}


# The long-context twins share everything but the positional encoding. Python source weighs
# 0.6 and the plays 0.4 of the characters: code's long-range copying (names, idioms) is what
# trains induction heads, and this mixture holds all 38 plays (5.1M characters, the scarce
# source) beside 7.7M of code, 25% more text than 0.5/0.5. Small: a 2M-character corpus, a
# tenth of its documents held out (one play of 7), 300 steps of 8 windows of 257 tokens.
# Paper: what 2 CPU cores train in about an hour: 2048 positions, 2 layers of width 128, GQA
# (4 query heads, 2 key-value heads), a BPE of 2048 tokens, 600 steps of 4 windows (4.9M
# tokens).
_LONGCTX = {
    "small": dict(heads=4, seq_len=256, batch=8, steps=300, lr=3e-3, warmup=30,
                  checkpoint_every=100, save_every=50, heldout_windows=32, vocab=1024,
                  characters=2_000_000, held_out=0.1),
    "paper": dict(layers=2, hidden=128, heads=4, ffn=512, seq_len=2048, batch=4, steps=600,
                  lr=2e-3, warmup=30, checkpoint_every=200, save_every=20, heldout_windows=16,
                  vocab=2048),
}
# Markov sources: V = 8 symbols. With V = 32 a 2-layer model stays on the in-context unigram
# plateau (held-out 3.42 after 500 small steps, 3.38 after 348 paper steps; unigram 3.40,
# Bayes 2.67); with V = 8 it leaves the plateau near step 450 and reaches 0.98 at step 800
# (Bayes 0.80, unigram 1.48, uniform 2.08). Small: 800 steps of 16 windows of 257 tokens,
# about 4 minutes on 2 shared cores. Paper: 2048-token windows (n/G >= 100 for G <= 20). From
# scratch, 4 windows of 2048 a step, the model was still on the plateau after 1600 of 2000
# steps (held-out 1.445), so the paper scale starts from the small model (the same
# architecture; RoPE has no learned positions) and trains 600 steps on long windows.
_PAPER = dict(layers=2, hidden=64, heads=2, ffn=256, seq_len=2048, batch=4, steps=600,
              lr=1e-3, warmup=20, checkpoint_every=200, save_every=50)
# The size ladder: three llamas (GQA, 2 key-value heads) on the long-context twins' corpus and
# tokenizer (the same shares, seed and BPE of 2048 tokens, so the same windows in the same
# order), context 512, the same token budget, checkpoints through time so that sizes can be
# compared at matched held-out loss. Paper: 0.4M, 1.0M and 3.0M parameters (most of the
# smallest in its embeddings), 400 steps of 8 windows of 513 tokens (1.6M tokens each), what
# fits beside the other test beds in this CPU's budget (the 1.5M/6M/14M ladder at 5M tokens
# each would need ~20 h here). Small: widths 32/48/64 on the small corpus, 100 steps.
_RUNGS = {  # rung: (layers, hidden, heads, ffn) at the small and paper scales
    1: ((1, 32, 2, 128), (2, 64, 4, 256)),
    2: ((2, 48, 2, 192), (2, 128, 4, 512)),
    3: ((2, 64, 4, 256), (4, 192, 6, 768)),
}
_LADDER = {
    "small": dict(seq_len=128, batch=8, steps=100, lr=3e-3, warmup=10, checkpoint_every=50,
                  save_every=25, heldout_windows=16, vocab=512, characters=1_000_000,
                  held_out=0.1),
    "paper": dict(seq_len=512, batch=8, steps=400, lr=2e-3, warmup=30, checkpoint_every=100,
                  save_every=20, heldout_windows=32, vocab=2048),
}
TESTBEDS: dict[str, Testbed] = {
    "markov1": Testbed("in-context order-1 Markov chains (V = 8, α = 0.1)",
                       {"small": MarkovScale(order=1, vocab=8, steps=800),
                        "paper": MarkovScale(order=1, vocab=8, init="markov1-small@final",
                                             **_PAPER)}),
    # V = 8, the alphabet of markov1, whose trained model is the warm start: from scratch a
    # 2-layer model sat on the in-context unigram plateau for 247 steps of 8 windows of 513
    # (held-out 1.98; unigram 1.99, Bayes 1.09, uniform 2.08 at 512 tokens). Small: 1200
    # steps of 8 windows of 513 from markov1-small. Paper: 2048-token windows (Bayes 0.86),
    # 600 steps from markov2-small.
    "markov2": Testbed("in-context order-2 Markov chains (V = 8, α = 0.1)",
                       {"small": MarkovScale(order=2, vocab=8, seq_len=512, batch=8,
                                             steps=1200, init="markov1-small@final"),
                        "paper": MarkovScale(order=2, vocab=8, init="markov2-small@final",
                                             **_PAPER)}),
    **{f"longctx-{ENCODINGS[rope].lower()}": Testbed(
        f"a llama with {ENCODINGS[rope]}{'' if rope else ' (no positional encoding)'} on long "
        "documents (Python source and Shakespeare), windows from one document each",
        {scale: LanguageScale(rope=rope, **settings) for scale, settings in _LONGCTX.items()})
       for rope in (True, False)},
    **{f"ladder-{rung}": Testbed(
        f"rung {rung} of 3 of a size ladder: a llama on the long-context corpus, context 512",
        {scale: LanguageScale(**dict(zip(("layers", "hidden", "heads", "ffn"), size)), **settings)
         for size, (scale, settings) in zip(sizes, _LADDER.items())})
       for rung, sizes in _RUNGS.items()},
}


def recipe(name: str, scale: str = "small", overrides: dict | None = None) -> Recipe:
    """The recipe of test bed `name` at `scale`, with settings `overrides` ({field: value}).
    ValueError naming the value for an unknown name, scale or setting and for a bad value."""
    if name not in TESTBEDS:
        raise ValueError(f"unknown test bed {name!r} (known: {', '.join(TESTBEDS)})")
    scales = TESTBEDS[name].scales
    if scale not in scales:
        raise ValueError(f"scale {scale!r} of test bed {name!r} is not one of "
                         f"{', '.join(scales)}")
    settings = scales[scale]
    fields = [f.name for f in dataclasses.fields(settings)]
    unknown = sorted(set(overrides or {}) - set(fields))
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} of test bed {name!r} "
                         f"(settings: {', '.join(fields)})")
    settings = dataclasses.replace(settings, **(overrides or {}))
    source = settings.source()
    made = Recipe(name, scale, settings, source, settings.train_config(source.vocab_size))
    settings.windows_drawn()
    return made


@dataclasses.dataclass(frozen=True)
class TestbedSummary:
    """A trained test bed: where, how big, how long, and its held-out loss beside the source's
    reference predictors' (`references`, by name; the Bayes-optimal one for a Markov source),
    all over the same held-out windows, in nats per predicted token."""

    key: str
    out_dir: Path
    step: int
    steps: int
    params: int
    context: int
    tokens: int
    seconds: float
    heldout_loss: float
    references: dict[str, float]
    checkpoints: tuple[Path, ...]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "out_dir": str(self.out_dir),
                "checkpoints": [p.name for p in self.checkpoints]}


def train_testbed(made: Recipe, out_dir: str | Path | None = None, root: str | Path = ROOT,
                  progress: bool = True) -> TestbedSummary:
    """Train (or resume, or read back a finished) `made` into out_dir (default ROOT/KEY), and
    record it in the registry of out_dir's parent. A directory of other settings is an
    error and nothing is changed (dynsys.runs.open_run, dynsys.train.train)."""
    out_dir = Path(root) / made.key if out_dir is None else Path(out_dir)
    check_positions(out_dir, made)
    start = warm_start(made, out_dir.parent)
    count, held_count = made.settings.windows_drawn()
    seq_len, seed = made.train.seq_len, made.settings.seed
    held = made.source.windows("heldout", held_count, seq_len, seed)
    data = made.source.windows("train", count, seq_len, seed)
    run = open_run(out_dir, "testbed", made.to_dict(), seeds={"seed": made.settings.seed})
    register(out_dir, made, None)
    tokenizer = made.source.tokenizer()
    for name, rows in made.source.tables().items():
        run.write_table(name, rows)
    done = train(made.train, data.ravel(), held.ravel(), out_dir / "train",
                 None if tokenizer is None else save_tokenizer(tokenizer, out_dir / "tokenizer"),
                 progress=progress, start=start)
    rows = {row["step"]: row for row in read_log(out_dir / "train" / "log.csv")}
    saved = checkpoint_steps(made.train.steps, made.train.checkpoint_every)
    run.write_table("training", [
        {key: rows[s][key] for key in ("step", "tokens", "loss", "heldout_loss", "wall_time")}
        for s in saved])
    summary = TestbedSummary(
        key=out_dir.name, out_dir=out_dir, step=done.step, steps=made.train.steps,
        params=_parameters(made.train.model), context=made.train.seq_len, tokens=done.tokens,
        seconds=rows[done.step]["wall_time"], heldout_loss=rows[done.step]["heldout_loss"],
        references=made.source.references(held), checkpoints=done.checkpoints)
    run.write_table("summary", [{k: v for k, v in summary.to_dict().items()
                                 if k not in ("references", "checkpoints", "out_dir")}
                                | {f"{name}_loss": v for name, v in summary.references.items()}])
    register(out_dir, made, summary)
    return summary


def warm_start(made: Recipe, root: Path) -> dict | None:
    """The parameters named by made.settings.init in the registry of `root` (None without
    one); ValueError naming it for a checkpoint of another positional encoding (shapes are
    checked by dynsys.train.train)."""
    if made.settings.init is None:
        return None
    start = load(trained(made.settings.init, root))
    if start.config.use_rope != made.train.model.use_rope:
        raise ValueError(f"init={made.settings.init!r} is a "
                         f"{ENCODINGS[start.config.use_rope]} model and {made.name!r} is "
                         f"{ENCODINGS[made.train.model.use_rope]}; nothing was changed")
    return start.params


def check_positions(out_dir: Path, made: Recipe) -> None:
    """ValueError (one line, nothing written) if out_dir holds a test bed whose positional
    encoding is not made's: a NoPE twin cannot resume or load a RoPE run, nor the reverse."""
    try:
        saved = json.loads((out_dir / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no run there, or one that open_run refuses by itself
    if isinstance(saved, dict) and saved.get("rope") in (True, False) \
            and saved["rope"] != made.settings.rope:
        theirs, ours = ENCODINGS[saved["rope"]], ENCODINGS[made.settings.rope]
        raise ValueError(f"{out_dir} holds {saved.get('testbed')!r}, a {theirs} model, and "
                         f"{made.name!r} is {ours}: a {ours} twin cannot resume or load a "
                         f"{theirs} checkpoint; nothing was changed")


def _parameters(model: ModelConfig) -> int:
    """The number of parameters of a model of this config (from their shapes only)."""
    shapes = jax.eval_shape(lambda: init_params(model, 0))
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(shapes))


def register(out_dir: Path, made: Recipe, summary: TestbedSummary | None) -> None:
    """Write the entry of out_dir (KEY = its name) into the registry beside it (atomically;
    the other entries are kept)."""
    path = out_dir.parent / REGISTRY
    entries = read_registry(out_dir.parent)
    entries[out_dir.name] = {"testbed": made.name, "scale": made.scale,
                             "steps": made.train.steps,
                             "settings": dataclasses.asdict(made.settings),
                             "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "summary": None if summary is None else summary.to_dict()}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(entries, indent=1))


def read_registry(root: str | Path = ROOT) -> dict[str, dict]:
    """The registry ROOT/testbeds.json as {KEY: entry} ({} if there is none)."""
    path = Path(root) / REGISTRY
    if not path.exists():
        return {}
    try:
        entries = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{path} holds {type(entries).__name__}, not a JSON object")
    return entries


def resolve(spec: str, root: str | Path = ROOT) -> Path:
    """The checkpoint directory named by spec = KEY@CHECKPOINT in the registry of `root`.

    KEY is a run directory's name (markov1-small) or a test bed's name registered under
    one key only (markov1). CHECKPOINT is `final` (the recipe's last step, once reached),
    `latest` (the latest checkpoint on disk), step_XXXXXXX or a step number. ValueError
    naming the spec otherwise."""
    key, sep, point = spec.partition("@")
    if not sep or not key or not point:
        raise ValueError(f"{spec!r} must look like KEY@CHECKPOINT, e.g. markov1-small@final")
    entries = read_registry(root)
    if key not in entries:
        named = [k for k, entry in entries.items() if entry.get("testbed") == key]
        if len(named) != 1:
            raise ValueError(f"{spec!r}: {key!r} names {len(named) or 'no'} registered test "
                             f"beds in {Path(root) / REGISTRY} (registered: "
                             f"{', '.join(entries) or 'none'})")
        key = named[0]
    directory = Path(root) / key / "train" / "checkpoints"
    saved = sorted(directory.glob("step_*"))
    if point == "latest":
        if not saved:
            raise ValueError(f"{spec!r}: {directory} holds no checkpoint yet")
        return saved[-1]
    step = entries[key]["steps"] if point == "final" else _step(spec, point)
    path = directory / f"step_{step:07d}"
    if not (path / "config.json").is_file():
        raise ValueError(f"{spec!r}: {path} does not exist (checkpoints: "
                         f"{', '.join(p.name for p in saved) or 'none yet'})")
    return path


def trained(spec: str, root: str | Path = ROOT, progress: bool = True) -> Path:
    """`resolve(spec, root)`, after training (or resuming) the test bed first when spec's KEY
    is NAME-SCALE of a recipe whose run directory under root is absent or unregistered."""
    root = Path(root)
    key = spec.partition("@")[0]
    name, _, scale = key.rpartition("-")
    if (not (root / key).is_dir() or key not in read_registry(root)) and name in TESTBEDS \
            and scale in TESTBEDS[name].scales:
        train_testbed(recipe(name, scale), root / key, root, progress)
    return resolve(spec, root)


def _step(spec: str, point: str) -> int:
    found = re.fullmatch(r"(?:step_)?(\d+)", point)
    if not found:
        raise ValueError(f"{spec!r}: checkpoint {point!r} must be final, latest, "
                         "step_XXXXXXX or a step number")
    return int(found[1])


def summary_rows(summary: TestbedSummary) -> list[tuple[str, str]]:
    """(what, value) lines of a summary, for a printed table."""
    minutes, seconds = divmod(summary.seconds, 60)
    rows = [("parameters", f"{summary.params:,}"), ("context", str(summary.context)),
            ("step", f"{summary.step} of {summary.steps}"),
            ("tokens seen", f"{summary.tokens:,}"),
            ("training time", f"{int(minutes)} min {seconds:.0f} s"),
            ("held-out loss (model)", f"{summary.heldout_loss:.4f}")]
    names = {"bayes": "Bayes-optimal predictor", "unigram": "in-context unigram, Laplace",
             "train_unigram": "unigram of the train tokens", "uniform": "uniform, ln V"}
    rows += [(f"held-out loss ({names.get(k, k)})", f"{v:.4f}")
             for k, v in summary.references.items()]
    if "bayes" in summary.references and "uniform" in summary.references:
        gap = summary.references["uniform"] - summary.references["bayes"]
        rows.append(("share of the uniform → Bayes gap closed",
                     f"{(summary.references['uniform'] - summary.heldout_loss) / gap:.3f}"
                     if gap > 0 and math.isfinite(gap) else "-"))
    return rows
