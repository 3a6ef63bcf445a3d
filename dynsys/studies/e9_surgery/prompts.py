"""E9's prompts: held-out text segments, list (enumeration) prompts and random ids, the loss
windows, and their split into a localisation half and a test half (package docstring)."""

from __future__ import annotations

import numpy as np

from dynsys.data import EOT, encode, english, lists, load_tokenizer, provenance, split
from dynsys.runs import Run
from dynsys.studies.e9_surgery.config import DRY_BREAKERS, KINDS, Config
from dynsys.studies.training import corpus, make_prompts, tokenizer_dir


def list_documents(config: Config, needed: int) -> tuple[list[str], int]:
    """(documents, held-out count): the held-out list documents of the mixture, then fresh
    list documents (seed + 1) found nowhere in the training corpus, `needed` in all."""
    parts = corpus(config)
    listed = {d for part in parts if part.name == "lists" for d in part.documents}
    held = [d for d in split(parts, config.held_out, config.seed)[1].documents if d in listed]
    trained = {d for part in parts for d in part.documents}
    out = held[:needed]
    n = 64
    while len(out) < needed:
        fresh = [d for d in lists(n, config.seed + 1).documents if d not in trained]
        out = held[:needed] + fresh[:needed - len(held[:needed])]
        n *= 2
    return out, min(len(held), needed)


def prompt_unit(run: Run, config: Config) -> dict:
    """The prompts of each kind, the loss windows, the delimiter and DRY breaker ids and the
    provenance of the texts (module docstring)."""
    tokenizer = load_tokenizer(tokenizer_dir(run))
    held = split((english(),), config.held_out, config.seed)[1]
    ids = encode(tokenizer, held.documents)
    size = config.windows * (config.seq_len + 1)
    rest = ids[size:]
    segments = len(rest) // config.length
    if segments < config.prompts:
        raise ValueError(f"the held-out English text gives {segments} prompts of "
                         f"{config.length} tokens after {config.windows} windows; "
                         f"prompts={config.prompts} needs more (raise held_out)")
    rng = np.random.default_rng([config.seed, 9])
    chosen = np.sort(rng.choice(segments, config.prompts, replace=False))
    text = rest[:segments * config.length].reshape(segments, -1)[chosen]
    eot = tokenizer.token_to_id(EOT)
    docs, n_held = list_documents(config, 4 * config.prompts)
    rows, held_used = [], 0
    for i, d in enumerate(docs):
        ids_d = encode(tokenizer, [d])
        if len(ids_d) > config.list_length:  # an enumeration continues after the prompt
            rows.append([eot, *ids_d[:config.list_length]])
            held_used += i < n_held
        if len(rows) == config.prompts:
            break
    if len(rows) < config.prompts:
        raise ValueError(f"only {len(rows)} list documents have more than list_length="
                         f"{config.list_length} tokens; prompts={config.prompts} needs more")
    vocab = tokenizer.get_vocab_size()
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in range(vocab)]
    delimiter = np.array([i for i, p in enumerate(pieces) if "\n" in p or "," in p], np.int64)
    breakers = [encode(tokenizer, [c]) for c in DRY_BREAKERS]
    record = provenance(held)[held.name]
    return {"text": text, "list": np.array(rows, np.int64),
            "random": make_prompts("random", config.vocab, config.random_length,
                                   config.prompts, config.seed),
            "windows": ids[:size].reshape(config.windows, -1),
            "delimiter": delimiter,
            "dry_breakers": np.array([b[0] for b in breakers if len(b) == 1], np.int64),
            "list_heldout": held_used, "list_fresh": config.prompts - held_used,
            "text_sha256": record["sha256"]}


def halves(config: Config, unit: dict) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """(localisation prompts, test prompts, the kind of each test prompt), every kind split
    at prompts // 2."""
    half = config.prompts // 2
    loc = [p for kind in KINDS for p in unit[kind][:half]]
    test = [p for kind in KINDS for p in unit[kind][half:]]
    kinds = [kind for kind in KINDS for _ in unit[kind][half:]]
    return loc, test, kinds


def map_choice(loops: np.ndarray, kinds: list[str], count: int) -> np.ndarray:
    """Indices of `count` test prompts for the Markov maps: looping ones first, taken in turn
    from each kind (a kind's earliest first), then non-looping ones the same way."""
    order = []
    for flag in (True, False):
        queues = [[i for i, (k, hit) in enumerate(zip(kinds, loops)) if k == kind and hit == flag]
                  for kind in KINDS]
        while any(queues):
            order += [q.pop(0) for q in queues if q]
    return np.array(order[:count], np.int64)

