"""The training configuration: one frozen dataclass, checked whole when it is made, and the
errors training raises."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from dynsys.config import DTYPES, ModelConfig, check_float, check_int, set_frozen


class TrainError(ValueError):
    """Training cannot start or continue as asked; nothing on disk was lost or half-written."""


class NonFiniteLossError(TrainError):
    """A step gave a NaN or infinite loss or gradient: the step was not applied and training
    stopped; the last saved state stays on disk."""


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run: the model to train from scratch and every setting that changes its
    parameters. The defaults follow Pythia: AdamW β = (0.9, 0.95), ε = 1e-8, weight decay
    0.01 on every matrix (linear kernels, LM head, embedding) but not on norms or biases, as
    GPT-NeoX groups them (`decay_mask`), clipping at global norm 1, cosine decay to 0.1·lr
    (`learning_rate`; Pythia warms up over 1% of the steps).

    A step is one AdamW update on `batch` windows of seq_len + 1 tokens, computed as
    `micro_batches` passes of batch / micro_batches windows whose gradients are averaged.
    `seed` draws the initial parameters, `data_seed` the order of the windows. `dtype` is the
    compute dtype of the forward and backward pass; the master weights (`model` has
    param_dtype and dtype float32) and the optimizer state are float32 whatever it is. The
    held-out loss is evaluated every `eval_every` steps and at every checkpoint, over the
    first `eval_windows` held-out windows (or all, if fewer); the training state is saved
    every `save_every` steps and at the end; Hugging Face checkpoints are written at
    `checkpoint_steps(steps, checkpoint_every)`.

    A bad field raises TrainError naming it and its value.
    """

    model: ModelConfig
    seq_len: int = 256
    batch: int = 8
    micro_batches: int = 1
    steps: int = 1000
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup: int = 10
    weight_decay: float = 0.01
    clip: float = 1.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    seed: int = 0
    data_seed: int = 0
    dtype: Literal["float32", "bfloat16"] = "float32"
    eval_every: int = 100
    eval_windows: int = 64
    save_every: int = 100
    checkpoint_every: int = 1000

    def __post_init__(self):
        try:
            self._check()
        except ValueError as e:
            raise TrainError(str(e)) from None

    def _check(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise ValueError(f"model={self.model!r} must be a dynsys ModelConfig")
        if (self.model.param_dtype, self.model.dtype) != ("float32", "float32"):
            raise ValueError(f"model param_dtype={self.model.param_dtype!r}, dtype="
                             f"{self.model.dtype!r}: the master weights are float32; set the "
                             "compute dtype with TrainConfig.dtype")
        values: dict[str, Any] = {
            name: check_int(name, getattr(self, name), minimum)
            for name, minimum in (("seq_len", 1), ("batch", 1), ("micro_batches", 1),
                                  ("steps", 1), ("warmup", 0), ("seed", 0), ("data_seed", 0),
                                  ("eval_every", 1), ("eval_windows", 1), ("save_every", 1),
                                  ("checkpoint_every", 1))}
        values.update(
            lr=check_float("lr", self.lr, above=0),
            min_lr_ratio=check_float("min_lr_ratio", self.min_lr_ratio, at_least=0, at_most=1),
            weight_decay=check_float("weight_decay", self.weight_decay, at_least=0),
            clip=check_float("clip", self.clip, above=0),
            eps=check_float("eps", self.eps, above=0))
        if not isinstance(self.betas, tuple | list) or len(self.betas) != 2:
            raise ValueError(f"betas={self.betas!r} must be a pair (b1, b2)")
        values["betas"] = tuple(check_float(f"betas[{i}]", b, at_least=0, at_most=1)
                                for i, b in enumerate(self.betas))
        if 1.0 in values["betas"]:
            raise ValueError(f"betas={self.betas!r} must be below 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {DTYPES}")
        set_frozen(self, **values)
        if self.seq_len > self.model.max_position_embeddings:
            raise ValueError(f"seq_len={self.seq_len} exceeds the model's "
                             f"max_position_embeddings={self.model.max_position_embeddings}")
        if self.batch % self.micro_batches:
            raise ValueError(f"batch={self.batch} is not divisible by "
                             f"micro_batches={self.micro_batches}")

    @property
    def micro_batch(self) -> int:
        """Windows per forward/backward pass."""
        return self.batch // self.micro_batches

    @property
    def tokens_per_step(self) -> int:
        """Predicted tokens per step: batch · seq_len."""
        return self.batch * self.seq_len

    @property
    def compute_model(self) -> ModelConfig:
        """The model config the forward pass runs in (parameters cast to `dtype`)."""
        return self.model.replace(dtype=self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Every field as JSON values (the model config nested as a dict)."""
        return dataclasses.asdict(self)
