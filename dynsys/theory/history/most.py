"""A "most histories" bound beside the history-uniform certificate (proofs/history_uniform.md,
*Most histories*): NOT a statement about every history, a measurement with a confidence level.

For the query x at position n + r, `samples` histories h are drawn uniformly from V^r (seeded),
the model's own float32 step of (P, h, x) is run for each, and the histories whose argmax is
the reference f_{P,r}(x) are counted: k of m. The share p of all V^r histories whose argmax is
the reference is then ≥ the lower end of the Clopper–Pearson interval of k/m at `level`
(dynsys.stats.proportion_interval) with probability ≥ (1 + level)/2 over the draw."""

from __future__ import annotations

import dataclasses

import numpy as np

from dynsys.checks import check_int, check_tokens
from dynsys.decode import step
from dynsys.decode.engine import prefix_for
from dynsys.nn import Model
from dynsys.nn.cache import Prefix
from dynsys.stats import proportion_interval


@dataclasses.dataclass(frozen=True)
class MostHistories:
    """For the query token x after r generated tokens: top = f_{P,r}(x); agree of `samples`
    uniform histories kept the argmax at top; lower, upper: the Clopper–Pearson interval at
    `level` of the share of V^r that does; worst: the least measured margin
    ℓ_top − max_{v≠top} ℓ_v over the samples (< 0: some sampled history changed the argmax)."""

    x: int
    r: int
    top: int
    samples: int
    agree: int
    lower: float
    upper: float
    level: float
    worst: float


def most_histories(model: Model, prompt, x: int, r: int, samples: int = 1000, seed: int = 0,
                   level: float = 0.95, prefix: Prefix | None = None,
                   batch: int = 256) -> MostHistories:
    """Sample `samples` histories h ∈ V^r (seeded), run (P, h, x) through the model in batches and
    bound the share of V^r whose argmax is f_{P,r}(x) (see the module docstring)."""
    cfg = model.config
    x = int(check_tokens([x], cfg.vocab_size, "x", ndim=1)[0])
    r, samples = check_int("r", r, 1), check_int("samples", samples, 1)
    batch = check_int("batch", batch, 1)
    if not 0 < level < 1:
        raise ValueError(f"level={level} must lie in (0, 1)")
    prefix = prefix_for(model, prompt, prefix)
    n = int(prefix.length)
    if n + r >= cfg.max_position_embeddings:
        raise ValueError(f"r={r} puts the query at position {n + r}, beyond "
                         f"max_position_embeddings={cfg.max_position_embeddings}")
    ref = np.asarray(step(model, prefix, np.array([[x]]), np.array([[n + r]]))[0])[0, 0]
    top = int(ref.argmax())
    hist = np.random.default_rng(seed).integers(0, cfg.vocab_size, (samples, r))
    tokens = np.concatenate([hist, np.full((samples, 1), x)], 1)
    positions = np.arange(n, n + r + 1)
    margins = []
    batch = min(batch, samples)
    pad = -samples % batch  # one shape: one compile
    tokens = np.concatenate([tokens, np.repeat(tokens[:1], pad, 0)])
    for s in range(0, samples + pad, batch):
        part = tokens[s:s + batch]
        out = np.asarray(step(model, prefix, part, np.broadcast_to(positions, part.shape))[0],
                         np.float64)[:, -1]
        rest = np.delete(out, top, axis=1)
        margins.append(out[:, top] - rest.max(1))
    margins = np.concatenate(margins)[:samples]
    agree = int((margins > 0).sum())
    lower, upper = proportion_interval(agree, samples, level)
    return MostHistories(x=x, r=r, top=top, samples=samples, agree=agree, lower=lower,
                         upper=upper, level=level, worst=float(margins.min()))
