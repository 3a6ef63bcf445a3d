"""What goes into a model: prompts of token ids for the experiments (`prompts`), offline text
corpora with provenance (`corpora`) and a byte-level BPE tokenizer (`tokenizer`). See
docs/corpora.md."""

from dynsys.data import prompts
from dynsys.data.corpora import (SEPARATOR, Corpus, characters, english, japanese, japanese_samples,
                                 lists, mix, provenance, split, text)
from dynsys.data.tokenizer import (EOT, decode, encode, load_tokenizer, save_tokenizer,
                                   train_tokenizer)

__all__ = [
    "EOT", "SEPARATOR", "Corpus", "characters", "decode", "encode", "english", "japanese",
    "japanese_samples", "lists", "load_tokenizer", "mix", "prompts", "provenance",
    "save_tokenizer", "split", "text", "train_tokenizer",
]
