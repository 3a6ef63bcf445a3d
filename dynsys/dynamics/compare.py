"""A real greedy trace against the Markov map of its prompt.

Trace x_1..x_G after prompt P (|P| = n): x_{t+1} = argmax L_t, L_t the real logits with
P, x_1..x_t as keys and x_t at position n+t−1. The references for step t:
  L^pos_t = logits(P + [x_t]) with x_t at n+t−1   (the generated keys removed),
  L^0_t   = logits(P + [x_t]) with x_t at n       (f_P itself).
dilution_t = ‖L_t − L^pos_t‖∞ (what the generated keys change), drift_t = ‖L^pos_t − L^0_t‖∞
(position only; exactly 0 without RoPE), and memory_t = the smallest k in 1, 2, 4, … whose
memory-k map (the last k tokens at their real positions) already gives x_{t+1}.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dynsys.checks import check_finite, check_temperature, check_tokens, usable_logits
from dynsys.config import ModelConfig
from dynsys.decode.engine import last_logits, last_logits_jit, logits, prefix_for, run
from dynsys.decode.sampling import scaled
from dynsys.dynamics.markov import MarkovMap, lazy_orbit, suffix_map
from dynsys.dynamics.orbits import orbits
from dynsys.dynamics.traces import periodicity
from dynsys.nn import Model
from dynsys.nn.cache import Prefix, empty_rows, source_digest


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Per step t = 1..G−1 (index t−1): agreement of x_{t+1} with f_P(x_t) and with the
    position-exact f_{P,t−1}(x_t), the error parts, and the loop-level comparison.

    first_divergence: the first t with x_{t+1} ≠ f_P(x_t), i.e. where the free-running orbit
    of f_P from x_1 leaves the trace (G if it never does).
    memory: per step, the smallest k of `memory_ks` whose memory-k map gives x_{t+1}, 0 if none.
    trace_period/onset: the trace's eventual periodicity (onset indexes the trace, 0-based);
    map_tail/map_cycle: tail length and cycle length of x_1 under f_P; cycle_is_orbit: the
    trace's terminal cycle is a periodic orbit of f_P.
    """

    trace: np.ndarray
    markov_next: np.ndarray
    agree_markov: np.ndarray
    agree_position: np.ndarray
    dilution: np.ndarray
    drift: np.ndarray
    memory: np.ndarray
    memory_ks: tuple[int, ...]
    first_divergence: int
    trace_period: int
    trace_onset: int
    map_tail: int
    map_cycle: int
    cycle_is_orbit: bool

    @property
    def agreement(self) -> float:
        """Share of steps with x_{t+1} = f_P(x_t)."""
        return float(self.agree_markov.mean())


@functools.partial(jax.jit, static_argnames=("cfg",))
def _logit_gaps(cfg: ModelConfig, params, prefix: Prefix, trace, n):
    """‖L_t − L^pos_t‖∞, ‖L^pos_t − L^0_t‖∞, f_P(x_t) = argmax L^0_t, f_{P,t−1}(x_t) =
    argmax L^pos_t for t = 1..G (see module docstring), and whether all three were usable
    (`usable_logits`)."""
    G = trace.shape[0]
    positions = n + jnp.arange(G, dtype=jnp.int32)
    out = run(cfg, params, trace[None], positions[None], empty_rows(cfg, 1, G),
              jnp.ones((1, G), bool), prefix)
    real = logits(cfg, params, out.hidden[0])
    exact = last_logits(cfg, params, prefix, trace[:, None], positions[:, None])
    at_n = last_logits(cfg, params, prefix, trace[:, None], jnp.full((G, 1), n, jnp.int32))
    finite = usable_logits(real) & usable_logits(exact) & usable_logits(at_n)
    return (jnp.abs(real - exact).max(-1), jnp.abs(exact - at_n).max(-1),
            jnp.argmax(at_n, -1), jnp.argmax(exact, -1), finite)


def compare(model: Model, prompt, trace, fmap: MarkovMap | None = None, *,
            memory_ks: tuple[int, ...] = (1, 2, 4, 8), repeats: int = 3,
            prefix: Prefix | None = None) -> Comparison:
    """Compare a greedy trace of `prompt` (the generated tokens only) with f_P.

    `fmap` (a full Markov map at offset 0) is used for the map's orbit of x_1 when given;
    otherwise that orbit is evaluated lazily.
    """
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    trace = check_tokens(trace, cfg.vocab_size, "trace", ndim=1)
    n, G = prompt.shape[0], trace.shape[0]
    if G < 2:
        raise ValueError(f"trace has {G} token(s); a comparison needs at least 2")
    if fmap is not None and not (fmap.is_full and np.all(fmap.offset == 0)
                                 and fmap.prompt_length == n):
        raise ValueError("fmap must be the full Markov map of this prompt at offset 0")
    if fmap is not None and fmap.source != source_digest(model.digest, prompt):
        raise ValueError("fmap was computed from another model or prompt; pass "
                         "markov_map(model, prompt) of this model and prompt")
    prefix = prefix_for(model, prompt, prefix)
    options = dict(prefix=prefix, progress=False)

    *gaps, finite = _logit_gaps(cfg, model.params, prefix, jnp.asarray(trace), jnp.int32(n))
    check_finite(finite, "compare (trace steps)")
    dilution, drift, markov_next, exact_next = (np.asarray(x)[:-1] for x in gaps)
    target = trace[1:]
    agree_markov = markov_next == target

    memory = np.zeros(G - 1, np.int32)
    for k in sorted(memory_ks, reverse=True):
        if k > G - 1:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(trace[:-1], k)  # rows t = k..G−1
        agree = suffix_map(model, prompt, windows, offset=np.arange(G - k), **options).next
        memory[k - 1:][agree == target[k - 1:]] = k

    disagree = np.flatnonzero(~agree_markov)
    first_divergence = int(disagree[0]) + 1 if disagree.size else G

    found = periodicity(trace, k=repeats)
    if fmap is not None:
        orb = orbits(fmap.next)
        tail, cycle_len = int(orb.tail[trace[0]]), int(orb.cycle_length[trace[0]])
    else:
        tail_list, cycle = lazy_orbit(model, prompt, int(trace[0]), prefix=prefix)
        tail, cycle_len = len(tail_list), len(cycle)
    cycle_is_orbit = False
    if found.period:
        cyc = trace[found.onset:found.onset + found.period]
        where = {int(t): i for i, t in enumerate(trace[:-1])}
        images = [markov_next[where[int(c)]] for c in cyc]
        cycle_is_orbit = bool(np.array_equal(images, np.roll(cyc, -1)))
    return Comparison(
        trace=trace, markov_next=markov_next, agree_markov=agree_markov,
        agree_position=exact_next == target, dilution=dilution, drift=drift, memory=memory,
        memory_ks=tuple(sorted(memory_ks)), first_divergence=first_divergence,
        trace_period=int(found.period), trace_onset=int(found.onset), map_tail=tail,
        map_cycle=cycle_len, cycle_is_orbit=cycle_is_orbit)


@dataclasses.dataclass(frozen=True)
class SampledFit:
    """Sampled traces (temperature T) against the exact kernel K_P(v, ·) = softmax(f_P logits/T).

    states: the visited states v (sorted); visits[i]: transitions observed out of states[i];
    tv[i]: total variation between the empirical next-token law from states[i] and K_P(v, ·).
    loglik_kernel / loglik_model: log-likelihood of all observed transitions under K_P and
    under the real model (softmax of the real logits / T at each step), in nats.
    """

    states: np.ndarray
    visits: np.ndarray
    tv: np.ndarray
    loglik_kernel: float
    loglik_model: float


@functools.partial(jax.jit, static_argnames=("cfg",))
def _real_log_probs(cfg: ModelConfig, params, prefix: Prefix, trace, n, temperature):
    """log softmax(L_t / T)[x_{t+1}] for t = 1..G−1 along one trace, and whether each L_t
    was usable (`usable_logits`)."""
    G = trace.shape[0]
    positions = (n + jnp.arange(G, dtype=jnp.int32))[None]
    out = run(cfg, params, trace[None], positions, empty_rows(cfg, 1, G),
              jnp.ones((1, G), bool), prefix)
    real = logits(cfg, params, out.hidden[0, :-1])
    logp = jax.nn.log_softmax(scaled(real, temperature), axis=-1)
    return jnp.take_along_axis(logp, trace[1:, None], axis=1)[:, 0], usable_logits(real)


def compare_sampled(model: Model, prompt, traces, temperature: float,
                    prefix: Prefix | None = None) -> SampledFit:
    """Empirical transitions of sampled traces [R, G] of `prompt` against K_P at temperature T."""
    cfg = model.config
    prompt = check_tokens(prompt, cfg.vocab_size, "prompt", ndim=1)
    traces = check_tokens(traces, cfg.vocab_size, "traces", ndim=2)
    temperature = check_temperature(temperature)
    if traces.shape[1] < 2:
        raise ValueError(f"traces have {traces.shape[1]} token(s); transitions need 2")
    prefix = prefix_for(model, prompt, prefix)
    src, dst = traces[:, :-1].ravel(), traces[:, 1:].ravel()
    states, inverse = np.unique(src, return_inverse=True)
    state_logits = np.concatenate([
        np.asarray(last_logits_jit(cfg, model.params, prefix, jnp.asarray(states[i:i + 256, None]),
                                   jnp.full((len(states[i:i + 256]), 1), len(prompt), jnp.int32)))
        for i in range(0, len(states), 256)])
    check_finite(usable_logits(state_logits), "compare_sampled (visited states)")
    kernel_logp = np.asarray(jax.nn.log_softmax(scaled(state_logits, temperature), axis=-1),
                             np.float64)
    counts = np.zeros((len(states), cfg.vocab_size))
    np.add.at(counts, (inverse, dst), 1.0)
    visits = counts.sum(1)
    tv = 0.5 * np.abs(counts / visits[:, None] - np.exp(kernel_logp)).sum(1)
    loglik_model = 0.0
    for i, t in enumerate(traces):
        logp, finite = _real_log_probs(cfg, model.params, prefix, jnp.asarray(t),
                                       jnp.int32(len(prompt)), jnp.float32(temperature))
        check_finite(finite, f"compare_sampled (trace {i}, steps)")
        loglik_model += float(np.asarray(logp).sum())
    return SampledFit(states=states, visits=visits.astype(np.int64), tv=tv,
                      loglik_kernel=float(kernel_logp[inverse, dst].sum()),
                      loglik_model=loglik_model)
