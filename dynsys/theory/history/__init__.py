"""The history-uniform certificate (proofs/history_uniform.md): argmax logits(P, h, x) =
f_{P,r}(x) for every history h ∈ V^r, certified from the query position alone. `domain`: the
affine forms and their sound transformers; `generated`: the generated keys' sets by a dynamic
programme over positions; `bound`: the enclosure of a llama block and the public entry points;
`most`: a sampled "most histories" bound beside it (a measurement, not an "every" claim)."""

from dynsys.theory.history.bound import (
    FAMILIES,
    HistoryBound,
    HistoryHorizon,
    generated_keys,
    history_bound,
    history_horizon,
)
from dynsys.theory.history.generated import Generated
from dynsys.theory.history.most import MostHistories, most_histories

__all__ = ["FAMILIES", "Generated", "HistoryBound", "HistoryHorizon", "MostHistories",
           "generated_keys", "history_bound", "history_horizon", "most_histories"]
