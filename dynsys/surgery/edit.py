"""Weight edits of MLP neurons, as data: zero, sign-flip or scale chosen neurons, giving a new
Model whose weights carry the change, and that model saved as a checkpoint (`save_edited`).

Neuron j of layer i is coordinate j of the MLP's hidden activation h ∈ R^F (the site
"mlp_hidden": silu(gate x) ⊙ up x for SwiGLU, gelu(up x + b_up) for GELU). The MLP's output is

    down(h) = W_down h + b_down = Σ_j h_j · W_down[:, j] + b_down,

so neuron j writes h_j · W_down[:, j] into the residual stream, and multiplying the column
W_down[:, j] ([out, in] layout: kernel [D, F], column j) by s multiplies that contribution by
s, exactly, in every family. An edit with per-neuron factors s is therefore the same model as
the unedited one with the site edit {("mlp_hidden", i): {"scale": s}} (s_j = 1 elsewhere).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import jax.numpy as jnp

from dynsys import DISTRIBUTION
from dynsys.checks import check_float, check_neuron
from dynsys.config import PRESETS
from dynsys.config.model import set_frozen
from dynsys.io import checkpoint_digest, checkpoint_file, load, save_hf
from dynsys.nn import Model
from dynsys.nn.params import part

# The factor s each operation puts on a neuron's down-projection column (None: given).
SCALES: dict[str, float | None] = {"zero": 0.0, "flip": -1.0, "scale": None}
OPS: tuple[str, ...] = tuple(SCALES)
FIXED_OPS: tuple[str, ...] = tuple(op for op, s in SCALES.items() if s is not None)
# Copied from the source checkpoint beside the edited weights, where it has them.
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class NeuronEdit:
    """The same operation on each of `neurons`, (layer, index) pairs:

    - "scale": W_down[:, j] ← factor · W_down[:, j] (factor finite);
    - "flip": factor −1 (the neuron's contribution sign-inverted);
    - "zero": factor 0, and the neuron's input rows W_gate[j, :], W_up[j, :] and bias
      b_up[j] (where the family has them) set to 0 too, so that h_j = 0: a dead neuron.

    `factor` is given for "scale" only. Indices are checked against a model's config when the
    edit is applied; a pair named twice is refused here."""

    neurons: tuple[tuple[int, int], ...]
    op: str
    factor: float | None = None

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"op={self.op!r} must be one of {', '.join(OPS)}")
        if self.op == "scale":
            factor = check_float("factor", self.factor)
        elif self.factor is not None:
            raise ValueError(f"factor={self.factor!r} is for op 'scale', not {self.op!r}")
        else:
            factor = None
        neurons = []
        for pair in self.neurons:
            neuron = check_neuron(pair)
            if neuron in neurons:
                raise ValueError(f"neuron {neuron} is named more than once")
            neurons.append(neuron)
        if not neurons:
            raise ValueError("a NeuronEdit names at least one neuron")
        set_frozen(self, neurons=tuple(neurons), factor=factor)

    @property
    def scale(self) -> float:
        """s, the factor on each named neuron's down-projection column."""
        return self.factor if self.op == "scale" else SCALES[self.op]


def apply_edit(model: Model, edit: NeuronEdit) -> Model:
    """A new Model with `edit` made to its weights (see NeuronEdit); `model` is untouched.

    ValueError naming the neuron if a layer is outside [0, num_layers) or an index outside
    [0, intermediate_size)."""
    cfg = model.config
    by_layer: dict[int, list[int]] = defaultdict(list)
    for neuron in edit.neurons:
        layer, j = check_neuron(neuron, cfg.num_layers, cfg.intermediate_size)
        by_layer[layer].append(j)
    params = model.copy().params  # fresh dicts, shared (immutable) leaves
    for layer, neurons in by_layer.items():
        mlp = part(params, layer, "mlp")
        j = jnp.asarray(neurons)
        mlp["down"]["kernel"] = jnp.asarray(mlp["down"]["kernel"]).at[:, j].multiply(edit.scale)
        if edit.op == "zero":
            for name in ("gate", "up"):
                for kind in ("kernel", "bias"):
                    if kind in mlp.get(name, {}):
                        mlp[name][kind] = jnp.asarray(mlp[name][kind]).at[j].set(0)
    return dataclasses.replace(model, params=params)


def save_edited(source: str | Path, edit: NeuronEdit, directory: str | Path,
                seed: int = 0) -> Path:
    """Load `source` (a preset, initialised from `seed`, or a local checkpoint directory),
    apply `edit` and write the result as a new Hugging Face checkpoint in `directory`, with
    the source's tokenizer files and edit.json: {"source": {"checkpoint", "digest" (its
    dynsys.io.checkpoint_digest), "seed" (presets)}, "edit": {"neurons", "op", "factor"},
    "dynsys": version}.

    `directory` must not exist (ValueError naming it). Everything is written to a temporary
    directory beside it and renamed into place, so a failure leaves nothing behind."""
    directory = Path(directory)
    if directory.exists():
        raise ValueError(f"{directory} already exists; refusing to overwrite it")
    edited = apply_edit(load(source, seed=seed), edit)
    preset = str(source) in PRESETS
    origin = {"checkpoint": str(source) if preset else str(Path(source).resolve()),
              "digest": checkpoint_digest(source), **({"seed": seed} if preset else {})}
    record = {"source": origin, "edit": dataclasses.asdict(edit),
              "dynsys": importlib.metadata.version(DISTRIBUTION)}
    staging = directory.with_name(f".{directory.name}.edit-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_hf(edited, staging)
        (staging / "edit.json").write_text(json.dumps(record, indent=2))
        if not preset:
            for name in TOKENIZER_FILES:
                if path := checkpoint_file(source, name):  # never a link's outside target
                    shutil.copyfile(path, staging / name)
        os.rename(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
