"""The fixtures the surgery tests share, once per test module: a module takes them with
pytest_plugins = ["surgery_fixtures"] (never imported directly, so pytest rewrites its asserts)."""

import numpy as np
import pytest
from conftest import random_model
from surgery_helpers import CFG


@pytest.fixture(scope="module")
def model():
    """The tiny GELU model (random weights, seed 3)."""
    return random_model(CFG, seed=3)


@pytest.fixture(scope="module")
def prompts():
    """8 prompts of equal length 12 (left-padded to the bucket 16, so padding is exercised)."""
    return np.random.default_rng(0).integers(0, CFG.vocab_size, (8, 12)).astype(np.int32)
