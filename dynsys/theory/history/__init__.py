"""The history-uniform certificate (proofs/history_uniform.md): argmax logits(P, h, x) =
f_{P,r}(x) for every history h ∈ V^r, certified from the query position alone. `domain`: the
affine forms and their sound transformers; `bound`: the enclosure of a llama block and the
public entry points."""

from dynsys.theory.history.bound import (
    FAMILIES,
    HistoryBound,
    HistoryHorizon,
    history_bound,
    history_horizon,
)

__all__ = ["FAMILIES", "HistoryBound", "HistoryHorizon", "history_bound", "history_horizon"]
