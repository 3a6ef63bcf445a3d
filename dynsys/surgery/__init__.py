"""Surgery: find what keeps a model in its loops, edit it out, and judge the edit.

loops (what a loop is, loop rates, shared checks) -> ablation (which layer and branch: ablation
sweeps) -> attribution (which MLP neurons: activation × gradient of the loop margin, onset
differences) -> confirm (generation with the candidate neurons zeroed or flipped) -> edit
(weight edits as data, applied by pure functions that return a new Model, saved as
checkpoints) -> attractors (cycles and basins of the Markov map before and after; a trace's
distance to an attractor) -> judge (an edit judged three ways: loop and collapse rates,
held-out loss, the attractors). The localising instruments (ablation, attribution, confirm)
pass site edits into generation; edit changes the weights.
"""

from dynsys.surgery.ablation import Sweep, SweepRow, ablation_sweep, component_means
from dynsys.surgery.attribution import Attribution, Neuron, loop_margin, neuron_attribution
from dynsys.surgery.confirm import Confirmation, ConfirmRow, confirm, neuron_edits
from dynsys.surgery.edit import OPS, NeuronEdit, apply_edit, save_edited
from dynsys.surgery.judge import Judgement, judge
from dynsys.surgery.loops import LoopRate, looping

__all__ = ["OPS", "Attribution", "ConfirmRow", "Confirmation", "Judgement", "LoopRate",
           "Neuron", "NeuronEdit", "Sweep", "SweepRow", "ablation_sweep", "apply_edit",
           "component_means", "confirm", "judge", "loop_margin", "looping",
           "neuron_attribution", "neuron_edits", "save_edited"]
