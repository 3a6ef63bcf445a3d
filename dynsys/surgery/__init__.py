"""Surgery: find what keeps a model in its loops and edit it out.

localise (which layers and MLP neurons carry a loop: ablation sweeps, neuron attribution,
confirmation sweeps, all through site edits passed into generation) -> edit (weight edits as
data, applied by pure functions that return a new Model, saved as checkpoints)."""

from dynsys.surgery.edit import OPS, NeuronEdit, apply_edit, save_edited
from dynsys.surgery.localise import (Attribution, Confirmation, ConfirmRow, LoopRate, Neuron,
                                     Sweep, SweepRow, ablation_sweep, component_means, confirm,
                                     loop_margin, looping, neuron_attribution, neuron_edits)

__all__ = ["OPS", "Attribution", "ConfirmRow", "Confirmation", "LoopRate", "Neuron",
           "NeuronEdit", "Sweep", "SweepRow", "ablation_sweep", "apply_edit",
           "component_means", "confirm", "loop_margin", "looping", "neuron_attribution",
           "neuron_edits", "save_edited"]
