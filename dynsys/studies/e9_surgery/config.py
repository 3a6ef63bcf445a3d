"""E9's settings: the prompt kinds, fixes and breakers, the Config (paper-scale defaults) and
its scales, and the names of the fix and breaker units."""

from __future__ import annotations

import dataclasses

from dynsys.decode.sampling import Sampler
from dynsys.studies.training import SMALL, Training
from dynsys.surgery.edit import FIXED_OPS

NAME = "e9"
TITLE = "Loop surgery: localise, edit and break the loops of a trained model, judged held out"
KINDS = ("text", "list", "random")
# weight edits of the top-k (zero, flip) and the control "random": k random neurons zeroed
OPS = (*FIXED_OPS, "random")
BREAKERS = ("dry", "penalty", "ngram")
DRY_BREAKERS = ("\n", ":", '"', "*")  # text-generation-webui's default sequence breakers
LEVEL = 0.95
ATTRIBUTION_BATCH = 8  # looping traces per attribution call
ATTRACTOR_STATS = {"n_cycles": "cycles", "cyclic_points": "cyclic points",
                   "largest_basin": "largest basin"}


@dataclasses.dataclass(frozen=True)
class Config(Training):
    training: str = "../e7-paper/train"  # E7's at paper scale (trained there if absent)
    prompts: int = 128  # prompts per kind: the first half localises, the second half tests
    length: int = 32  # tokens of a text prompt
    list_length: int = 16  # tokens of a list prompt after its EOT
    random_length: int = 10  # tokens of a random prompt
    G: int = 128  # greedy tokens per prompt
    repeats: int = 3  # a trace loops when its final cycle is repeated at least this often
    collapse_window: int = 8  # entries per window of the list-collapse test
    components: tuple[str, ...] = ("attn_out", "mlp_out")  # branches of the ablation sweep
    method: str = "grad_x_act"  # attribution score ranking the candidate neurons
    ks: tuple[int, ...] = (1, 4, 16, 64)  # edit sizes: the top-k candidates
    ops: tuple[str, ...] = OPS
    maps: int = 8  # map prompts whose f_P (on all of V) is judged
    near_steps: int = 1  # "near the attractor": f_P-distance to C* at most this
    windows: int = 32  # held-out windows of seq_len + 1 tokens for the loss change
    loss_tolerance: float = 0.05  # nats per token the edit may cost (claim b)
    stay_share: float = 0.5  # claim (e): share of steps near C* above this
    temperature: float = 0.0  # of the breakers (0: argmax of the processed scores)
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    repetition_penalty: float = 1.3
    no_repeat_ngram: int = 3
    stop_min_pattern: int = 1  # the repetition detector's pattern sizes and copies
    stop_max_pattern: int = 32
    stop_min_count: int = 3
    resamples: int = 1000  # bootstrap resamples (map prompts)

    LIMITS = {**Training.LIMITS, "prompts": 4, "length": 1, "list_length": 1,
              "random_length": 1, "G": 2, "repeats": 2, "collapse_window": 1,
              "components": ("attn_out", "mlp_out"), "method": ("grad_x_act", "onset_diff"),
              "ks": 1, "ops": OPS, "maps": 2, "near_steps": 0, "windows": 2,
              "loss_tolerance": 0.0, "stay_share": 0.0, "temperature": 0.0,
              "dry_multiplier": 0.0, "dry_base": 1.0, "dry_allowed_length": 1,
              "repetition_penalty": 1.0, "no_repeat_ngram": 1, "stop_min_pattern": 1,
              "stop_max_pattern": lambda c: c.stop_min_pattern, "stop_min_count": 2,
              "resamples": 10, "seq_len": lambda c: c.positions()}

    def __post_init__(self):
        super().__post_init__()
        if max(self.ks) > self.layers * self.ffn:
            raise ValueError(f"ks={list(self.ks)}: the model has only layers x ffn = "
                             f"{self.layers * self.ffn} neurons")
        tests = (self.prompts - self.prompts // 2) * len(KINDS)
        if self.maps > tests:
            raise ValueError(f"maps={self.maps} exceeds the {tests} test prompts")

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.length, self.list_length + 1, self.random_length) + self.G

    def sampler(self, breaker: str) -> Sampler:
        return {"dry": Sampler(temperature=self.temperature, dry_multiplier=self.dry_multiplier,
                               dry_base=self.dry_base,
                               dry_allowed_length=self.dry_allowed_length),
                "penalty": Sampler(temperature=self.temperature,
                                   repetition_penalty=self.repetition_penalty),
                "ngram": Sampler(temperature=self.temperature,
                                 no_repeat_ngram_size=self.no_repeat_ngram)}[breaker]


SCALES = {"small": Config(**SMALL, training="../e7/train", prompts=64, G=64, ks=(1, 4, 16, 64),
                          maps=4, windows=16, collapse_window=4, resamples=500),
          "paper": Config()}


def fix_unit(op: str, k: int) -> str:
    return f"fix_{op}_k{k:04d}"


def breaker_unit(breaker: str) -> str:
    return f"breaker_{breaker}"

