"""Offline corpora: contents, determinism (also across processes and hash seeds), the mixture's
shares, the held-out split, provenance and bad inputs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from dynsys.data import (SEPARATOR, Corpus, characters, english, japanese, japanese_samples, lists,
                         mix, provenance, split, text)

KANA = re.compile("[\u3040-\u30ff]")
HANGUL = re.compile("[\uac00-\ud7a3]")


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


def test_japanese_samples_are_japanese_and_distinct():
    corpus = japanese_samples()
    assert corpus.documents and all(KANA.search(d) for d in corpus.documents)
    assert not any(HANGUL.search(d) for d in corpus.documents)
    assert not any(a != b and b in a for a in corpus.documents for b in corpus.documents)


@pytest.mark.parametrize("source", [japanese, lists])
def test_generated_sources_are_seeded_prefixes(source):
    a, b = source(30, seed=3), source(30, seed=3)
    assert a == b and provenance(a) == provenance(b)
    assert source(10, seed=3).documents == a.documents[:10]
    assert source(30, seed=4).documents != a.documents
    assert len(a.documents) == 30 and "seed 3" in a.origin


def test_japanese_is_japanese_and_lists_are_lists():
    assert all(KANA.search(d) for d in japanese(50).documents)
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
            "print(json.dumps(provenance(english(), japanese_samples(), japanese(20, 5), "
            "lists(20, 5), *split(mix(english(), 0.05, 0.02, 5), 0.1, 5))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    here = provenance(english(), japanese_samples(), japanese(20, 5), lists(20, 5),
                      *split(mix(english(), 0.05, 0.02, 5), 0.1, 5))
    assert json.loads(out) == here


@pytest.mark.parametrize("japanese_share, list_share",
                         [(0.02, 0.01), (0.1, 0.0), (0.3, 0.05), (0.0, 0.2)])
def test_mix_honours_shares(small_english, japanese_share, list_share):
    parts = mix(small_english, japanese_share, list_share, seed=1)
    assert parts[0] == small_english and mix(small_english, japanese_share, list_share, 1) == parts
    total = sum(map(characters, parts))
    slack = sum(max(map(len, part.documents)) for part in parts[1:]) / total  # one document each
    for share, names in [(japanese_share, {"japanese-samples", "japanese"}),
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
    assert train.licence == "PSF-2.0; MIT" and "seed 7" in train.origin


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True, None])
@pytest.mark.parametrize("name", ["japanese_share", "list_share"])
def test_bad_shares_are_errors_naming_them(small_english, name, value):
    with pytest.raises(ValueError, match=f"^{name}="):
        mix(small_english, **{name: value})


def test_bad_inputs_are_errors_naming_them(small_english):
    with pytest.raises(ValueError, match="leaves no English text"):
        mix(small_english, japanese_share=0.6, list_share=0.4)
    with pytest.raises(ValueError, match="^held_out=1.0"):
        split([small_english], held_out=1.0)
    with pytest.raises(ValueError, match="'held-out'.*no documents"):  # too few to hold out
        split([Corpus("one", "here", "MIT", ("a",))], held_out=0.1)
    with pytest.raises(ValueError, match="^n_documents=0"):
        japanese(0)
    with pytest.raises(ValueError, match="^seed=-1"):
        lists(3, seed=-1)
    with pytest.raises(ValueError, match="'empty'.*no documents"):
        Corpus("empty", "nowhere", "MIT", ())
    with pytest.raises(ValueError, match="'bad' document 1"):
        Corpus("bad", "here", "MIT", ("fine", f"a{SEPARATOR}b"))
    with pytest.raises(ValueError, match="'blank' document 0"):
        Corpus("blank", "here", "MIT", ("",))
