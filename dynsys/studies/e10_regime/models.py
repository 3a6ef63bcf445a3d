"""E10's models: what a model name in `Config.models` means, and the prompts of each kind.

A name is one of
    PRESET            a random-init preset (dynsys.config.PRESETS), initializer_range 0.02
    PRESET:STD        the same architecture drawn with initializer_range STD (e.g. tiny:0.1)
    KEY@CHECKPOINT    a registered test bed (dynsys.testbeds.resolve, e.g. markov1-small@final);
                      a test bed KEY = NAME-SCALE that is not trained yet is trained first
    a directory       a local Hugging Face checkpoint

Prompt kinds: "source" (held-out text of the test bed's own source: fresh chains of a Markov
source, held-out documents of a long-document corpus; only for a test bed), "random" (i.i.d.
uniform ids), "ngram" (a repeated random 3-gram). The primary kind, the one the verdicts
read, is "source" where the model has one, else "random".
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path

import numpy as np

from dynsys.config import PRESETS
from dynsys.data.prompts import make_prompt
from dynsys.io import checkpoint_digest, load, load_config
from dynsys.nn import Model, init_params
from dynsys.testbeds import read_registry, recipe
from dynsys.testbeds.markov import MarkovSource
from dynsys.testbeds.registry import Source, trained

KINDS = ("source", "random", "ngram")
NGRAM = 3  # the repeated N-gram of the "ngram" prompts
_SCALED = re.compile(r"(?P<preset>[^:@]+):(?P<std>[0-9.eE+-]+)")


@dataclasses.dataclass(frozen=True)
class Subject:
    """One model of the study: its name as given, the loaded model, its source (None for a
    random-init model or a checkpoint without a registered recipe) and a digest of its
    weights (what a resumed run must find again)."""

    name: str
    model: Model
    source: Source | None
    digest: str

    @property
    def primary(self) -> str:
        return "source" if self.source is not None else "random"

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.source is not None else KINDS[1:]

    @property
    def markov(self) -> MarkovSource | None:
        """The Markov source whose Bayes predictor is the known answer, if this is one."""
        return self.source if isinstance(self.source, MarkovSource) else None

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings


def _testbed(spec: str, root: Path, progress: bool) -> tuple[Path, Source]:
    """The checkpoint and source of a registered test bed, trained first where absent
    (dynsys.testbeds.registry.trained)."""
    path = trained(spec, root, progress)
    key = spec.partition("@")[0]
    entries = read_registry(root)
    entry = entries.get(key) or next(e for e in entries.values() if e.get("testbed") == key)
    return path, recipe(entry["testbed"], entry["scale"], dict(entry["settings"])).source


@functools.lru_cache(maxsize=8)
def subject(name: str, root: str = "runs/testbeds", progress: bool = True) -> Subject:
    """The Subject named `name` (module docstring). ValueError naming it when it is none of
    the forms."""
    scaled = _SCALED.fullmatch(name)
    if name in PRESETS:
        return Subject(name, load(name), None, checkpoint_digest(name))
    if scaled and scaled["preset"] in PRESETS:
        try:
            std = float(scaled["std"])
        except ValueError:
            std = -1.0
        if not 0 < std < 10:
            raise ValueError(f"model {name!r}: initializer_range {scaled['std']!r} must be a "
                             "number in (0, 10)")
        cfg = load_config(scaled["preset"]).replace(initializer_range=std)
        return Subject(name, Model(cfg, init_params(cfg, 0)), None, f"preset:{name}")
    if "@" in name:
        path, source = _testbed(name, Path(root), progress)
        return Subject(name, load(path), source, checkpoint_digest(path))
    if Path(name).is_dir():
        return Subject(name, load(name), None, checkpoint_digest(name))
    raise ValueError(f"model {name!r} is not a preset ({', '.join(PRESETS)}), PRESET:STD, "
                     "a test bed KEY@CHECKPOINT or a checkpoint directory")


def prompts(subject: Subject, kind: str, count: int, length: int, seed: int) -> np.ndarray:
    """[count, length] int32 prompts of `kind`: prompt k is drawn with seed + k, so the
    prompts of a shorter length are the first tokens of the longer ones for "source" (one
    window per prompt) and the same draws for the other kinds."""
    vocab = subject.model.config.vocab_size
    if kind == "source":
        if subject.source is None:
            raise ValueError(f"model {subject.name!r} has no source to draw prompts from")
        windows = subject.source.windows("heldout", count, length, seed)
        if len(windows) < count:
            raise ValueError(f"{subject.name}: the held-out documents hold {len(windows)} "
                             f"windows of {length + 1} tokens, fewer than {count} prompts")
        return np.asarray(windows[:, :length], np.int32)
    return np.stack([make_prompt(kind, vocab, length, seed + k, NGRAM) for k in range(count)])
