"""E10's measurements, one unit of work each (saved in the run directory as it finishes).

Sweep unit (model, kind, n): P prompts of n tokens, each continued by G greedy tokens with the
attention weights recorded (site "attn_weights", no second forward pass). Entry i = 1..G−1 of
the recording is the step whose query is generated token i−1 (0-based), at position n + i − 1:
its keys are the n prompt tokens and the r = i generated tokens (its own included). Per step,
layer and head the attention mass splits into

    sink1  the first prompt token          sink4  the first SINK prompt tokens (sink1 within)
    body   the prompt after the first SINK  generated  the r generated tokens

(sink4 + body + generated = 1), and the excess concentration of the generated tokens is
e = generated / (r / (n + r)), 1 under uniform attention. The unit also holds the traces,
their agreement with f_P and f_{P,t−1} per step (sweep.trace_agreement), the period and onset
of each trace's terminal loop (dynamics.traces, k = 3 copies) and, for a Markov test bed, the
trained model's f_P over the whole alphabet beside the Bayes predictor's (known in closed
form, dynsys.testbeds.markov), and the Bayes predictor's own greedy trace.

Forced-Markov unit (model, "lambda"): at the largest n, primary kind, the same prompts decoded
with the attention scores of the earlier generated keys shifted by log λ for λ in LAMBDAS
(decode.generate's generated_key_bias; λ = 0 iterates f_{P,t−1} exactly): loops, onsets and
agreement with f_{P,t−1}, paired by prompt across λ.

Memory unit (model, "memory"): at the largest n, primary kind, the normal greedy traces of the
sweep: for each step t = 1..G−1, the smallest k ≤ MEMORY such that the prompt and the last k
generated tokens alone, at their real positions, give the trace's next token
(dynsys.dynamics.memory; k = 1 is f_{P,t−1}, 0: no k ≤ MEMORY does); and E5's test of each
looping trace: is its terminal cycle c_0..c_{p−1} a cycle of f_P (f_P(c_i) = c_{i+1 mod p},
f_P evaluated on the cycle's p tokens only, as a lazy orbit would; −1: the trace does not
loop).

Sampled unit (model, "sampled"): the same prompts sampled at each (temperature, top-p) of the
config and with DRY at the middle temperature: loop period and onset per trace. For a model of
at most KERNEL_VOCAB ids (the Markov test beds), the prediction of the sampled-decoding
theorem's chain: the kernel K_P(v, ·) = softmax(logits(P + [v]) / T) over all of V (offset 0),
cut by top-p as the sampler cuts it, run for G − 1 steps from each trace's first token along
PATHS paths; the share of paths that end in a loop (the same detector) is the predicted loop
probability of that prompt (NaN for DRY, which is no Markov kernel, and for larger models).
The theorem couples the sampled path with this chain while the generated tokens move the
logits little (dilution), so prediction and observation should agree where dilution holds.
"""

from __future__ import annotations

import itertools

import numpy as np

from dynsys.decode import Sampler, generate
from dynsys.dynamics import markov_map
from dynsys.dynamics.memory import step_memory
from dynsys.dynamics.traces import periodicity_batch
from dynsys.studies.e10_regime.models import Subject
from dynsys.studies.sweep import trace_agreement
from dynsys.testbeds.markov import bayes_map, bayes_trace

SINK = 4  # the leading prompt tokens counted as the attention sink
REPEATS = 3  # copies of a period that make a loop (dynamics.traces)
BATCH = 16  # prompts generated together (bounds the recorded attention weights' memory)
KERNEL_VOCAB = 64  # models with at most this many ids get the kernel chain's prediction
PATHS = 256  # chain paths per prompt and sampler
MEMORY = 8  # the largest memory k tried per step
PARTS = ("sink1", "sink4", "body", "generated")


def attention_parts(weights: np.ndarray, n: int) -> np.ndarray:
    """[B, G−1, L, N, 4] masses (PARTS) of recorded attention weights [B, G, L, N, W + G] of
    prompts of exactly n tokens (left-padded to W slots), for the steps i = 1..G−1."""
    weights = np.asarray(weights, np.float64)
    W = weights.shape[-1] - weights.shape[1]
    first = W - n  # the slot of prompt token 0
    steps = weights[:, 1:]
    return np.stack([steps[..., first], steps[..., first:first + SINK].sum(-1),
                     steps[..., first + SINK:W].sum(-1), steps[..., W:].sum(-1)],
                    axis=-1).astype(np.float32)


def excess(parts: np.ndarray, n: int) -> np.ndarray:
    """[B, G−1, L, N] e = generated mass / (r / (n + r)) at steps r = 1..G−1."""
    r = np.arange(1, parts.shape[1] + 1)[None, :, None, None]
    return parts[..., 3] / (r / (n + r))


def loops(traces: np.ndarray) -> dict[str, np.ndarray]:
    """Terminal loop period (0: none) and onset (the trace's length: none) per trace."""
    found = periodicity_batch(np.asarray(traces), k=REPEATS)
    return {"period": np.asarray(found.period), "onset": np.asarray(found.onset)}


def _batches(prompts: np.ndarray):
    return (prompts[i:i + BATCH] for i in range(0, len(prompts), BATCH))


def sweep_unit(subject: Subject, prompts: np.ndarray, G: int) -> dict[str, np.ndarray]:
    """The sweep unit of prompts [P, n] (module docstring)."""
    model, n = subject.model, prompts.shape[1]
    traces, parts = [], []
    for batch in _batches(prompts):
        out = generate(model, batch, G, record="attn_weights")
        traces.append(np.asarray(out.tokens))
        parts.append(attention_parts(out.recorded["attn_weights"], n))
    traces = np.concatenate(traces)
    markov, position = trace_agreement(model, prompts, traces)
    unit = {"traces": traces, "parts": np.concatenate(parts), "agree_markov": markov,
            "agree_position": position, **loops(traces)}
    if subject.markov is not None:
        unit |= {"f_model": np.stack([markov_map(model, p, progress=False).next
                                      for p in prompts]),
                 "f_bayes": np.stack([bayes_map(subject.markov, p) for p in prompts]),
                 "bayes_traces": np.stack([bayes_trace(subject.markov, p, G)
                                           for p in prompts])}
    return unit


def lambda_unit(subject: Subject, prompts: np.ndarray, G: int,
                lambdas: tuple[float, ...]) -> dict[str, np.ndarray]:
    """The forced-Markov unit: per λ (axis 0) the traces, loops and agreement with
    f_{P,t−1} of prompts [P, n]."""
    model = subject.model
    traces = np.stack([np.concatenate([
        np.asarray(generate(model, batch, G,
                            generated_key_bias=float(np.log(lam)) if lam > 0 else -np.inf).tokens)
        for batch in _batches(prompts)]) for lam in lambdas])
    agree = np.stack([trace_agreement(model, prompts, t)[1] for t in traces])
    found = [loops(t) for t in traces]
    return {"traces": traces, "agree_position": agree,
            "period": np.stack([f["period"] for f in found]),
            "onset": np.stack([f["onset"] for f in found])}


def cycle_of_map(subject: Subject, prompt: np.ndarray, trace: np.ndarray, period: int) -> int:
    """1 if the terminal cycle of `trace` (its last `period` tokens) is a cycle of f_P, 0 if
    not, −1 if the trace does not loop (period 0)."""
    if period == 0:
        return -1
    cycle = np.asarray(trace[len(trace) - period:])
    f = markov_map(subject.model, prompt, cycle, progress=False).next
    return int(np.array_equal(f, np.roll(cycle, -1)))


def memory_unit(subject: Subject, prompts: np.ndarray, traces: np.ndarray
                ) -> dict[str, np.ndarray]:
    """The memory unit: [P, G−1] the smallest memory k of each step of the greedy traces
    [P, G] of prompts [P, n] (0: none up to MEMORY), and [P] whether each terminal cycle is
    a cycle of f_P (`cycle_of_map`)."""
    period = loops(traces)["period"]
    return {"smallest": step_memory(subject.model, prompts, traces, MEMORY).smallest,
            "cycle_of_map": np.array([cycle_of_map(subject, p, t, int(q))
                                      for p, t, q in zip(prompts, traces, period)])}


def samplers(temperatures: tuple[float, ...], top_ps: tuple[float, ...],
             dry: float) -> list[tuple[str, Sampler]]:
    """(label, Sampler) per temperature × top-p, then DRY (multiplier `dry`) at the middle
    temperature with top-p 1 (dry = 0: none)."""
    out = [(f"T={t:g} top_p={p:g}", Sampler(temperature=t, top_p=p))
           for t, p in itertools.product(temperatures, top_ps)]
    if dry > 0:
        middle = sorted(temperatures)[len(temperatures) // 2]
        out.append((f"T={middle:g} top_p=1 DRY={dry:g}",
                    Sampler(temperature=middle, dry_multiplier=dry)))
    return out


def top_p_rows(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Rows of `probs` [R, V] cut as the sampler's top-p cuts them (the ascending-sorted
    entries whose cumulative probability is at most 1 − p dropped, the largest always kept)
    and renormalised."""
    order = np.argsort(probs, axis=-1, kind="stable")
    ascending = np.take_along_axis(probs, order, -1)
    drop = np.cumsum(ascending, -1) <= 1 - top_p
    drop[:, -1] = False
    kept = np.empty_like(drop)
    np.put_along_axis(kept, order, ~drop, -1)
    cut = np.where(kept, probs, 0.0)
    return cut / cut.sum(-1, keepdims=True)


def chain_loops(kernel: np.ndarray, start: int, G: int, paths: int,
                rng: np.random.Generator) -> float:
    """The share of `paths` runs of the Markov chain `kernel` [V, V] from `start` over G tokens
    (start included) whose trace ends in a loop (`loops`)."""
    cdf = np.cumsum(kernel, -1)
    x = np.empty((paths, G), np.int64)
    x[:, 0] = start
    for t in range(1, G):
        u = rng.random((paths, 1))
        x[:, t] = np.minimum((cdf[x[:, t - 1]] < u).sum(-1), kernel.shape[1] - 1)
    return float((loops(x)["period"] > 0).mean())


def is_markov_kernel(sampler: Sampler) -> bool:
    """Whether `sampler` draws from a Markov kernel of the logits: temperature > 0 and top-p,
    nothing else."""
    T = sampler.temperature
    return T > 0 and sampler == Sampler(temperature=T, top_p=sampler.top_p)


def unit_kernels(subject: Subject, prompts: np.ndarray) -> list[np.ndarray]:
    """Per prompt the [V, V] kernel softmax(logits(P + [v])) at T = 1 over all of V; the
    kernel at T is its entries to the power 1/T, renormalised (softmax(ℓ/T) ∝ softmax(ℓ)^(1/T)),
    so one map per prompt serves every temperature."""
    V = subject.model.config.vocab_size
    return [markov_map(subject.model, p, kernel_k=V, temperature=1.0, progress=False)
            .kernel.toarray() for p in prompts]


def predicted_loops(kernels: list[np.ndarray] | None, traces: np.ndarray, sampler: Sampler,
                    seed: int) -> np.ndarray:
    """[P] the kernel chain's loop probability per prompt (module docstring) from the prompts'
    T = 1 kernels (`unit_kernels`); NaN where it does not apply (kernels None: more than
    KERNEL_VOCAB ids; a sampler other than temperature and top-p)."""
    if kernels is None or not is_markov_kernel(sampler):
        return np.full(len(traces), np.nan)
    rng = np.random.default_rng(seed)
    out = []
    for base, trace in zip(kernels, traces):
        tempered = base ** (1 / sampler.temperature)
        kernel = top_p_rows(tempered / tempered.sum(-1, keepdims=True), sampler.top_p)
        out.append(chain_loops(kernel, int(trace[0]), len(trace), PATHS, rng))
    return np.array(out)


def sampled_unit(subject: Subject, prompts: np.ndarray, G: int,
                 chosen: list[tuple[str, Sampler]], seed: int) -> dict[str, np.ndarray]:
    """The sampled unit: per sampler (axis 0) the loop period and onset of each prompt's
    sampled trace (seed `seed` + batch index), and the kernel chain's predicted loop
    probability (module docstring)."""
    small = subject.model.config.vocab_size <= KERNEL_VOCAB
    kernels = unit_kernels(subject, prompts) if small and any(
        is_markov_kernel(sampler) for _, sampler in chosen) else None
    period, onset, predicted = [], [], []
    for _, sampler in chosen:
        traces = np.concatenate([
            np.asarray(generate(subject.model, batch, G, sampler=sampler, seed=seed + k).tokens)
            for k, batch in enumerate(_batches(prompts))])
        found = loops(traces)
        period.append(found["period"])
        onset.append(found["onset"])
        predicted.append(predicted_loops(kernels, traces, sampler, seed))
    return {"period": np.stack(period), "onset": np.stack(onset),
            "predicted": np.stack(predicted)}
