"""Byte-level BPE tokenizer, trained offline with Hugging Face `tokenizers`.

GPT-2 style: the ByteLevel pre-tokenizer (no prefix space) and decoder, so any text encodes and
decodes back exactly; no normalizer; one special token, EOT = "<|endoftext|>" (id 0), which
separates documents and serves as bos and eos. Ids 1..256 are the 256 bytes, the rest merges.
Training is deterministic: the same documents and vocab size give a byte-identical
tokenizer.json, whatever the number of threads. `save` also writes the tokenizer_config.json
with which `transformers.AutoTokenizer.from_pretrained(directory)` loads a
PreTrainedTokenizerFast giving the same ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dynsys.config import check_int
from dynsys.data.corpora import SEPARATOR

EOT = SEPARATOR
MIN_VOCAB = 257  # the 256 bytes and EOT
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"


def train_tokenizer(documents: Iterable[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE tokenizer of exactly `vocab_size` tokens (EOT, the 256 bytes, then
    merges learnt from `documents`); a ValueError if the documents allow fewer merges."""
    vocab_size = check_int("vocab_size", vocab_size, MIN_VOCAB)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(documents, trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"vocab_size={vocab_size}: the documents give only "
                         f"{tokenizer.get_vocab_size()} tokens (too little text)")
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: str | Path) -> Path:
    """Write tokenizer.json and tokenizer_config.json (for transformers' AutoTokenizer: a
    PreTrainedTokenizerFast with EOT as bos and eos, no clean-up of spaces) into `directory`,
    created if needed; returns the directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / TOKENIZER_FILE))
    config = dict(tokenizer_class="PreTrainedTokenizerFast", bos_token=EOT, eos_token=EOT,
                  clean_up_tokenization_spaces=False)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """The tokenizer saved in `directory` (its tokenizer.json); a ValueError if it is missing or
    has no EOT token."""
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise ValueError(f"directory={str(directory)!r} has no {TOKENIZER_FILE}")
    tokenizer = Tokenizer.from_file(str(path))
    if tokenizer.token_to_id(EOT) is None:
        raise ValueError(f"{path} has no {EOT!r} token")
    return tokenizer


def encode(tokenizer: Tokenizer, documents: Sequence[str]) -> np.ndarray:
    """The ids of `documents` as one flat int32 array, EOT between consecutive documents (none
    before the first or after the last): `decode` of it is SEPARATOR.join(documents)."""
    if isinstance(documents, str) or not documents:
        raise ValueError(f"documents={documents!r:.40} must be a non-empty sequence of strings")
    eot = np.array([tokenizer.token_to_id(EOT)], np.int32)
    encodings = tokenizer.encode_batch_fast(list(documents), add_special_tokens=False)
    pieces = [np.asarray(encoding.ids, np.int32) for encoding in encodings]
    return np.concatenate([piece for ids in pieces for piece in (eot, ids)][1:])


def decode(tokenizer: Tokenizer, ids: Sequence[int] | np.ndarray) -> str:
    """The text of a 1-D sequence of ids, special tokens included. Exact for the output of
    `encode` (any slice of it that does not cut a multi-byte character); bytes that do not
    form UTF-8 become U+FFFD. A ValueError for ids outside [0, vocab size)."""
    array = np.asarray(ids)
    vocab_size = tokenizer.get_vocab_size()
    if array.ndim != 1 or (array.size and (array.dtype.kind not in "iu" or array.min() < 0
                                           or array.max() >= vocab_size)):
        raise ValueError(f"ids must be a 1-D sequence of integers in [0, {vocab_size})")
    return tokenizer.decode(array.tolist(), skip_special_tokens=False)
