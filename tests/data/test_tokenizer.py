"""Byte-level BPE tokenizer: exact vocab size, deterministic training, exact round trips
(Hypothesis), loading with transformers' AutoTokenizer, and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from dynsys.data import (
    EOT,
    SEPARATOR,
    chichewa,
    decode,
    encode,
    english,
    lists,
    load_tokenizer,
    save_tokenizer,
    text,
    train_tokenizer,
)

VOCAB = 512
ENGLISH_SAMPLE = ('The "with" statement is used to wrap the execution of a block with methods '
                  'defined by a context manager.\n\n   with_stmt ::= "with" ( "(" items ")" )')
JAPANESE_SAMPLE = "Python の開発は、1990 年ごろから開始されています。「ABC」\n　全角"
JAPANESE_TEXT = st.text(st.one_of(st.characters(min_codepoint=0x3000, max_codepoint=0x30FF),
                                  st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF),
                                  st.sampled_from(" \n0123456789ABCxyz、。「」")))
ENGLISH_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.just("\n"))
ROUND_TRIPS = settings(max_examples=300, deadline=None)


@pytest.fixture(scope="module")
def documents() -> list[str]:
    """A small training set: 40 English, 20 Chichewa and 40 list documents (Japanese text,
    never trained on, must still round-trip: the tokenizer is byte-level)."""
    return [*english().documents[:40], *chichewa(20).documents, *lists(40).documents]


@pytest.fixture(scope="module")
def tokenizer(documents):
    return train_tokenizer(documents, VOCAB)


@pytest.fixture(scope="module")
def saved(tokenizer, tmp_path_factory):
    return save_tokenizer(tokenizer, tmp_path_factory.mktemp("tokenizer"))


def test_vocab_is_exactly_the_requested_size(tokenizer, documents):
    assert tokenizer.get_vocab_size() == VOCAB and tokenizer.token_to_id(EOT) == 0
    assert train_tokenizer(documents, 300).get_vocab_size() == 300


def test_training_is_deterministic(documents, saved, tmp_path):
    again = save_tokenizer(train_tokenizer(documents, VOCAB), tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (again / name).read_bytes() == (saved / name).read_bytes()


def test_save_and_load_keep_the_tokenizer(tokenizer, saved):
    assert load_tokenizer(saved).to_str() == tokenizer.to_str()


def test_encode_puts_eot_between_documents(tokenizer, documents):
    ids = encode(tokenizer, documents)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert np.sum(ids == 0) == len(documents) - 1 and ids[0] != 0 and ids[-1] != 0
    joined = SEPARATOR.join(documents)
    assert ids.tolist() == tokenizer.encode(joined).ids
    assert decode(tokenizer, ids) == joined


def test_held_out_text_round_trips(tokenizer):
    corpus = lists(50, seed=9)  # documents the tokenizer never saw
    assert decode(tokenizer, encode(tokenizer, corpus.documents)) == text(corpus)


def test_autotokenizer_loads_it_and_gives_the_same_ids(tokenizer, saved):
    hf = transformers.AutoTokenizer.from_pretrained(saved)
    assert isinstance(hf, transformers.PreTrainedTokenizerFast) and len(hf) == VOCAB
    assert hf.bos_token_id == hf.eos_token_id == 0
    for sample in (ENGLISH_SAMPLE, JAPANESE_SAMPLE, f"a{EOT}b 😀\t\r\n  é"):
        ids = encode(tokenizer, [sample]).tolist()
        assert hf(sample)["input_ids"] == ids
        assert hf.decode(ids) == sample


@ROUND_TRIPS
@given(ENGLISH_TEXT)
def test_english_round_trips(tokenizer, sample):
    assert decode(tokenizer, encode(tokenizer, [sample])) == sample


@ROUND_TRIPS
@given(JAPANESE_TEXT)
def test_japanese_round_trips(tokenizer, sample):
    assert decode(tokenizer, encode(tokenizer, [sample])) == sample


@ROUND_TRIPS
@given(st.lists(st.text(), min_size=1, max_size=4))
def test_any_unicode_documents_round_trip(tokenizer, samples):
    assert decode(tokenizer, encode(tokenizer, samples)) == SEPARATOR.join(samples)


@pytest.mark.parametrize("value", [256, 0, 512.0, "512", True, None])
def test_bad_vocab_sizes_are_errors_naming_them(documents, value):
    with pytest.raises(ValueError, match=f"^vocab_size={value!r}"):
        train_tokenizer(documents, value)


def test_bad_inputs_are_errors_naming_them(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="^vocab_size=4096: .* only 259 tokens"):
        train_tokenizer(["abc"], 4096)  # 256 bytes, EOT and two merges
    with pytest.raises(ValueError, match="^documents="):
        encode(tokenizer, "one string, not a list")
    with pytest.raises(ValueError, match="^documents="):
        encode(tokenizer, [])
    for ids in ([0, VOCAB], [-1], [[1, 2]], [1.0]):
        with pytest.raises(ValueError, match="^ids"):
            decode(tokenizer, ids)
    with pytest.raises(ValueError, match="^directory="):
        load_tokenizer(tmp_path)
