"""What goes into a model: prompts of token ids for the experiments (`prompts`), offline text
corpora with provenance (`corpora`), long documents for long-context training (`documents`) and
a byte-level BPE tokenizer (`tokenizer`). See docs/corpora.md."""

from dynsys.data import prompts
from dynsys.data.corpora import (
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
    split_groups,
    text,
)
from dynsys.data.documents import (
    PYTHON_SOURCE,
    SHAKESPEARE,
    Document,
    as_corpus,
    by_source,
    document_sources,
    long_documents,
    mix_documents,
    python_source,
    shakespeare,
    split_documents,
)
from dynsys.data.tokenizer import (
    EOT,
    decode,
    encode,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "EOT", "PYTHON_SOURCE", "SEPARATOR", "SHAKESPEARE", "Corpus", "Document", "as_corpus",
    "by_source", "characters", "chichewa", "chichewa_chapters", "decode", "document_sources",
    "encode", "english", "lists", "load_tokenizer", "long_documents", "mix", "mix_documents",
    "prompts", "provenance", "python_source", "save_tokenizer", "shakespeare", "split",
    "split_documents", "split_groups", "text", "train_tokenizer",
]
