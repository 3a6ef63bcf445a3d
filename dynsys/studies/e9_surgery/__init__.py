"""E9: loop surgery on a trained model: localise what keeps greedy decoding in its loops, edit
it out or break the loops at sampling time, and judge each fix on held-out prompts.

The model of dynsys.studies.training (its own training, or the one `training` names: at small
scale E7's, at paper scale E7's paper training), final checkpoint. Three prompt kinds,
`prompts` of each, the first half of every kind for localising, the second half for testing:

    text      segments of `length` tokens of the held-out English documents (after the loss
              windows, which are the first `windows` x (seq_len + 1) tokens of that text)
    list      EOT + the first `list_length` tokens of list documents (dynsys.data.lists, the
              list-like text of the mixture): the held-out ones, then fresh ones (seed + 1)
              that occur nowhere in the training corpus: enumeration prompts
    random    `random_length` i.i.d. uniform ids (dynsys.studies.training.make_prompts)

1. Greedy traces of G tokens. A trace **loops** when it ends in a minimal cycle repeated at
   least `repeats` times (dynsys.surgery.loops); it is a **list collapse** when, split at the
   delimiter tokens (every token whose text holds a newline or a comma), its entries collapse
   onto one (dynsys.dynamics.traces.collapse, window `collapse_window`). Rates per kind with
   exact intervals; vLLM-style repetition detection (dynsys.dynamics.traces.repetition_stop,
   patterns of stop_min_pattern..stop_max_pattern tokens seen stop_min_count times): how
   often and at which step it would stop each trace.
2. Localise, on the localisation half (all kinds together): the zero-ablation sweep over
   layer x component (dynsys.surgery.ablation: the paired change of the loop rate), and the
   neuron attribution on the looping traces (dynsys.surgery.attribution: activation x gradient
   of the loop margin, and the onset difference); the candidates are the neurons ranked by
   `method`.
3. Fixes. Weight edits (dynsys.surgery.edit.apply_edit) of the top-k candidates for k in `ks`:
   "zero" (a dead neuron) and "flip" (its output sign-inverted), and the control "random"
   (k neurons drawn uniformly, seed, zeroed). Decoding-time breakers on the unedited model
   (dynsys.decode.sampling.Sampler at `temperature`, 0: argmax of the processed scores): "dry"
   (DRY, multiplier 0.8, base 1.75, allowed length 2, the breakers newline, colon, quote and
   asterisk where they are single tokens), "penalty" (repetition penalty 1.3) and "ngram"
   (no-repeat-n-gram 3).
4. Judge every fix on the test half (dynsys.surgery.judge, against one stored baseline of the
   unedited model): loop and collapse rates before and after (paired differences, Tango score
   intervals); for the edits also the held-out loss change on the windows (paired t
   interval) and the attractors of the Markov map f_P (cycles, cyclic points, largest basin,
   cycles vanished and appeared) of `maps` map prompts (test prompts whose greedy trace loops
   first, spread over the kinds); for every fix, where
   the fixed trace from a map prompt walks relative to the cycle C* of the unedited f_P its
   greedy trace ends in (dynsys.surgery.attractors.surface: the share of steps at distance
   <= near_steps of C*; d = infinity: another basin), beside the same shares of the unedited
   greedy trace (the reference: its transient counts too). A breaker's trace from a map
   prompt is its row among the test prompts' traces.

Claims (verdicts by dynsys.stats.decide on 95% intervals, each with its dual p-value): for the edit
"zero" at the largest k, (a) the loop rate on the test prompts is lower after than before (paired
difference, null 0, threshold 0), (b) the held-out loss rises by less than `loss_tolerance` nats
(paired t interval of the mean change, threshold loss_tolerance; null: a rise of at least it), (c)
the top-k neurons lower the loop rate more than k random neurons (paired difference of the two
edits' loop flags, null 0); for each breaker, (d) it lowers the loop rate (paired, null 0) and (e)
its trace from a map prompt stays near the unedited f_P's attractor: the mean over map prompts of
the share of steps within near_steps of C* exceeds `stay_share` (percentile bootstrap over map
prompts; null: at most stay_share): the breaker changes the surface of the loop, not the attractor.

The package: config (the settings, scales and unit names), prompts (the prompt kinds and their
halves), study (`run`: the units, in order), tables, claims (`findings`) and plots
(`figures`).
"""

from dynsys.studies.e9_surgery.claims import findings, loss_finding, rate_finding, stay_finding
from dynsys.studies.e9_surgery.config import (
    ATTRACTOR_STATS,
    BREAKERS,
    KINDS,
    NAME,
    OPS,
    SCALES,
    TITLE,
    Config,
    breaker_unit,
    fix_unit,
)
from dynsys.studies.e9_surgery.plots import figures
from dynsys.studies.e9_surgery.prompts import halves, list_documents, map_choice, prompt_unit
from dynsys.studies.e9_surgery.study import ranked, run

__all__ = ["ATTRACTOR_STATS", "BREAKERS", "KINDS", "NAME", "OPS", "SCALES", "TITLE", "Config",
           "breaker_unit", "figures", "findings", "fix_unit", "halves", "list_documents",
           "loss_finding", "map_choice", "prompt_unit", "ranked", "rate_finding", "run",
           "stay_finding"]
