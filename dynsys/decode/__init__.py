"""Decoding: the engine (the only caller of the model: prefill, the shared-prefix step,
full-sequence logits), jitted generation on it, and the samplers generation applies."""

from dynsys.decode import sampling
from dynsys.decode.engine import (
    Output,
    forward,
    last_logits,
    left_pad,
    logits,
    prefill,
    prefill_chunk,
    prefix_for,
    run,
    sequence_logits,
    step,
)
from dynsys.decode.generation import DecodeState, Generation, generate
from dynsys.decode.sampling import GREEDY, Sampler

__all__ = ["GREEDY", "DecodeState", "Generation", "Output", "Sampler", "forward", "generate",
           "last_logits", "left_pad", "logits", "prefill", "prefill_chunk", "prefix_for", "run",
           "sampling", "sequence_logits", "step"]
