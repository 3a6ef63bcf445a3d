"""Invariants of the code the experiments rely on, tested here rather than measured by them.

Without positional encoding f_{P,τ} = f_P for every τ (proofs/position_drift.md, Prop. 0):
positions enter the model only through RoPE, so placing the current token at n + τ changes no
logit, bit for bit. E2 uses it (RoPE off, f_P is the theorem's f_{P,t−1}) and E6 no longer
measures it. With RoPE the same maps do move, so the check is not vacuous."""

import numpy as np
import pytest

from dynsys.data import prompts
from dynsys.decode import prefill
from dynsys.dynamics.markov import markov_map, suffix_map
from dynsys.theory.dilution import position_drift

OFFSETS = (1, 2, 7, 100)


@pytest.mark.parametrize("name", ["llama-g1", "qwen2-g2-tied", "neox-rot25",
                                  "llama-g4-tied-llama3"])
def test_without_rope_the_map_does_not_depend_on_the_offset(model_of, name):
    model = model_of(name).with_rope(False)
    V = model.config.vocab_size
    prompt = prompts.repeated_ngram(V, 3, 40, seed=1)
    prefix = prefill(model, prompt)
    base = markov_map(model, prompt, prefix=prefix, progress=False)
    for tau in OFFSETS:
        shifted = markov_map(model, prompt, offset=tau, prefix=prefix, progress=False)
        np.testing.assert_array_equal(shifted.next, base.next)
        np.testing.assert_array_equal(shifted.margin, base.margin)
    drift = position_drift(model, prompt, np.arange(V), OFFSETS, prefix)
    assert (drift.logit_change == 0).all() and not drift.changed.any()
    # per-row offsets, as the agreement sweep and E6 use them
    rows = np.tile(np.arange(V), 2)[:, None]
    per_row = suffix_map(model, prompt, rows, offset=np.repeat([0, 5], V), prefix=prefix,
                         progress=False)
    np.testing.assert_array_equal(per_row.next, np.tile(base.next, 2))


def test_with_rope_the_same_maps_move(model_of):
    model = model_of("llama-g1")
    V = model.config.vocab_size
    prompt = prompts.repeated_ngram(V, 3, 40, seed=1)
    drift = position_drift(model, prompt, np.arange(V), OFFSETS)
    assert (drift.logit_change > 1e-4).all() and drift.changed.any()
