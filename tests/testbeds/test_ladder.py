"""The size ladder `ladder-1..3`: the rungs differ only in size (the same corpus, tokenizer,
windows and token budget), grow at each scale, and the paper rungs train at context 512."""

import dataclasses

import pytest

from dynsys.testbeds import TESTBEDS, recipe
from dynsys.testbeds.registry import _parameters

RUNGS = [f"ladder-{rung}" for rung in (1, 2, 3)]
SIZE = ("layers", "hidden", "heads", "ffn")


@pytest.mark.parametrize("scale", ["small", "paper"])
def test_rungs_differ_only_in_size(scale):
    made = [recipe(name, scale) for name in RUNGS]
    assert all(name in TESTBEDS for name in RUNGS)
    rest = [{k: v for k, v in dataclasses.asdict(m.settings).items() if k not in SIZE}
            for m in made]
    assert rest[0] == rest[1] == rest[2]
    params = [_parameters(m.train.model) for m in made]
    assert params == sorted(params) and len(set(params)) == 3
    assert len({m.source.vocab_size for m in made}) == 1


def test_paper_rungs():
    made = [recipe(name, "paper") for name in RUNGS]
    assert {m.train.seq_len for m in made} == {512}
    params = [_parameters(m.train.model) for m in made]
    assert params[-1] / params[0] > 5
    tokens = {m.train.steps * m.train.batch * m.train.seq_len for m in made}
    assert tokens == {1_638_400}
