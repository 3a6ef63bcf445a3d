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
4. Judge every fix on the test half (dynsys.surgery.judge): loop and collapse rates before and
   after (paired differences, Tango score intervals); for the edits also the held-out
   loss change on the windows (paired t interval) and the attractors of the Markov map f_P
   (cycles, cyclic points, largest basin, cycles vanished and appeared) of `maps` map prompts
   (test prompts whose greedy trace loops first, spread over the kinds); for every fix, where
   the fixed trace from a map prompt walks relative to the cycle C* of the unedited f_P its
   greedy trace ends in (dynsys.surgery.attractors.surface: the share of steps at distance
   <= near_steps of C*; d = infinity: another basin), beside the same shares of the unedited
   greedy trace (the reference: its transient counts too). A breaker's trace from a map
   prompt is its row among the test prompts' traces.

Claims (verdicts by dynsys.stats.decide on 95% intervals, each with its dual p-value): for the edit "zero" at the largest
k, (a) the loop rate on the test prompts is lower after than before (paired difference, null
0, threshold 0), (b) the held-out loss rises by less than `loss_tolerance` nats (paired t
interval of the mean change, threshold loss_tolerance; null: a rise of at least it), (c) the
top-k neurons lower the loop rate more than k random neurons (paired difference of the two
edits' loop flags, null 0); for each breaker, (d) it lowers the loop rate (paired, null 0)
and (e) its trace from a map prompt stays near the unedited f_P's attractor: the mean over map
prompts of the share of steps within near_steps of C* exceeds `stay_share` (percentile
bootstrap over map prompts; null: at most stay_share): the breaker changes the surface of the
loop, not the attractor.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dynsys import figstyle
from dynsys.data import EOT, encode, english, lists, load_tokenizer, provenance, split
from dynsys.decode import generate
from dynsys.decode.sampling import Sampler
from dynsys.dynamics.markov import markov_map
from dynsys.dynamics.traces import repetition_stop
from dynsys.io import load
from dynsys.runs import Run
from dynsys.stats import (bootstrap_distribution, bootstrap_test, interval_test,
                          mean_interval, paired_difference, paired_test, proportion_interval)
from dynsys.studies.finding import CHECK, TEST, Finding
from dynsys.studies.training import (SMALL, Training, checkpoints, corpus, make_prompts,
                                     tokenizer_dir, write_training_tables)
from dynsys.surgery import NeuronEdit, ablation_sweep, apply_edit, judge, neuron_attribution
from dynsys.surgery.attractors import attractors, surface
from dynsys.surgery.judge import RateChange, collapsing
from dynsys.surgery.loops import looping

NAME = "e9"
TITLE = "Loop surgery: localise, edit and break the loops of a trained model, judged held out"
KINDS = ("text", "list", "random")
OPS = ("zero", "flip", "random")  # weight edits of the top-k (random: k random neurons zeroed)
BREAKERS = ("dry", "penalty", "ngram")
DRY_BREAKERS = ("\n", ":", '"', "*")  # text-generation-webui's default sequence breakers
LEVEL = 0.95
ATTRIBUTION_BATCH = 8  # looping traces per attribution call
ATTRACTOR_STATS = {"n_cycles": "cycles", "cyclic_points": "cyclic points",
                   "largest_basin": "largest basin"}


@dataclasses.dataclass(frozen=True)
class Config(Training):
    training: str = "../e7-paper/train"  # E7's at paper scale (trained there if absent)
    prompts: int = 128  # prompts per kind: the first half localises, the second half tests
    length: int = 32  # tokens of a text prompt
    list_length: int = 16  # tokens of a list prompt after its EOT
    random_length: int = 10  # tokens of a random prompt
    G: int = 128  # greedy tokens per prompt
    repeats: int = 3  # a trace loops when its final cycle is repeated at least this often
    collapse_window: int = 8  # entries per window of the list-collapse test
    components: tuple[str, ...] = ("attn_out", "mlp_out")  # branches of the ablation sweep
    method: str = "grad_x_act"  # attribution score ranking the candidate neurons
    ks: tuple[int, ...] = (1, 4, 16, 64)  # edit sizes: the top-k candidates
    ops: tuple[str, ...] = OPS
    maps: int = 8  # map prompts whose f_P (on all of V) is judged
    near_steps: int = 1  # "near the attractor": f_P-distance to C* at most this
    windows: int = 32  # held-out windows of seq_len + 1 tokens for the loss change
    loss_tolerance: float = 0.05  # nats per token the edit may cost (claim b)
    stay_share: float = 0.5  # claim (e): share of steps near C* above this
    temperature: float = 0.0  # of the breakers (0: argmax of the processed scores)
    dry_multiplier: float = 0.8
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    repetition_penalty: float = 1.3
    no_repeat_ngram: int = 3
    stop_min_pattern: int = 1  # the repetition detector's pattern sizes and copies
    stop_max_pattern: int = 32
    stop_min_count: int = 3
    resamples: int = 1000  # bootstrap resamples (map prompts)

    LIMITS = {**Training.LIMITS, "prompts": 4, "length": 1, "list_length": 1,
              "random_length": 1, "G": 2, "repeats": 2, "collapse_window": 1,
              "components": ("attn_out", "mlp_out"), "method": ("grad_x_act", "onset_diff"),
              "ks": 1, "ops": OPS, "maps": 2, "near_steps": 0, "windows": 2,
              "loss_tolerance": 0.0, "stay_share": 0.0, "temperature": 0.0,
              "dry_multiplier": 0.0, "dry_base": 1.0, "dry_allowed_length": 1,
              "repetition_penalty": 1.0, "no_repeat_ngram": 1, "stop_min_pattern": 1,
              "stop_max_pattern": lambda c: c.stop_min_pattern, "stop_min_count": 2,
              "resamples": 10, "seq_len": lambda c: c.positions()}

    def __post_init__(self):
        super().__post_init__()
        if max(self.ks) > self.layers * self.ffn:
            raise ValueError(f"ks={list(self.ks)}: the model has only layers x ffn = "
                             f"{self.layers * self.ffn} neurons")
        tests = (self.prompts - self.prompts // 2) * len(KINDS)
        if self.maps > tests:
            raise ValueError(f"maps={self.maps} exceeds the {tests} test prompts")

    def positions(self) -> int:
        """Positions of a unit's longest sequence: the prompt and the tokens after it."""
        return max(self.length, self.list_length + 1, self.random_length) + self.G

    def sampler(self, breaker: str) -> Sampler:
        return {"dry": Sampler(temperature=self.temperature, dry_multiplier=self.dry_multiplier,
                               dry_base=self.dry_base,
                               dry_allowed_length=self.dry_allowed_length),
                "penalty": Sampler(temperature=self.temperature,
                                   repetition_penalty=self.repetition_penalty),
                "ngram": Sampler(temperature=self.temperature,
                                 no_repeat_ngram_size=self.no_repeat_ngram)}[breaker]


SCALES = {"small": Config(**SMALL, training="../e7/train", prompts=64, G=64, ks=(1, 4, 16, 64),
                          maps=4, windows=16, collapse_window=4, resamples=500),
          "paper": Config()}


def fix_unit(op: str, k: int) -> str:
    return f"fix_{op}_k{k:04d}"


def breaker_unit(breaker: str) -> str:
    return f"breaker_{breaker}"


# --- prompts -------------------------------------------------------------------------------

def list_documents(config: Config, needed: int) -> tuple[list[str], int]:
    """(documents, held-out count): the held-out list documents of the mixture, then fresh
    list documents (seed + 1) found nowhere in the training corpus, `needed` in all."""
    parts = corpus(config)
    listed = {d for part in parts if part.name == "lists" for d in part.documents}
    held = [d for d in split(parts, config.held_out, config.seed)[1].documents if d in listed]
    trained = {d for part in parts for d in part.documents}
    out = held[:needed]
    n = 64
    while len(out) < needed:
        fresh = [d for d in lists(n, config.seed + 1).documents if d not in trained]
        out = held[:needed] + fresh[:needed - len(held[:needed])]
        n *= 2
    return out, min(len(held), needed)


def prompt_unit(run: Run, config: Config) -> dict:
    """The prompts of each kind, the loss windows, the delimiter and DRY breaker ids and the
    provenance of the texts (module docstring)."""
    tokenizer = load_tokenizer(tokenizer_dir(run))
    held = split((english(),), config.held_out, config.seed)[1]
    ids = encode(tokenizer, held.documents)
    size = config.windows * (config.seq_len + 1)
    rest = ids[size:]
    segments = len(rest) // config.length
    if segments < config.prompts:
        raise ValueError(f"the held-out English text gives {segments} prompts of "
                         f"{config.length} tokens after {config.windows} windows; "
                         f"prompts={config.prompts} needs more (raise held_out)")
    rng = np.random.default_rng([config.seed, 9])
    chosen = np.sort(rng.choice(segments, config.prompts, replace=False))
    text = rest[:segments * config.length].reshape(segments, -1)[chosen]
    eot = tokenizer.token_to_id(EOT)
    docs, n_held = list_documents(config, 4 * config.prompts)
    rows, held_used = [], 0
    for i, d in enumerate(docs):
        ids_d = encode(tokenizer, [d])
        if len(ids_d) > config.list_length:  # an enumeration continues after the prompt
            rows.append([eot, *ids_d[:config.list_length]])
            held_used += i < n_held
        if len(rows) == config.prompts:
            break
    if len(rows) < config.prompts:
        raise ValueError(f"only {len(rows)} list documents have more than list_length="
                         f"{config.list_length} tokens; prompts={config.prompts} needs more")
    vocab = tokenizer.get_vocab_size()
    pieces = [tokenizer.decode([i], skip_special_tokens=False) for i in range(vocab)]
    delimiter = np.array([i for i, p in enumerate(pieces) if "\n" in p or "," in p], np.int64)
    breakers = [encode(tokenizer, [c]) for c in DRY_BREAKERS]
    record = provenance(held)[held.name]
    return {"text": text, "list": np.array(rows, np.int64),
            "random": make_prompts("random", config.vocab, config.random_length,
                                   config.prompts, config.seed),
            "windows": ids[:size].reshape(config.windows, -1),
            "delimiter": delimiter,
            "dry_breakers": np.array([b[0] for b in breakers if len(b) == 1], np.int64),
            "list_heldout": held_used, "list_fresh": config.prompts - held_used,
            "text_sha256": record["sha256"]}


def halves(config: Config, unit: dict) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """(localisation prompts, test prompts, the kind of each test prompt), every kind split
    at prompts // 2."""
    half = config.prompts // 2
    loc = [p for kind in KINDS for p in unit[kind][:half]]
    test = [p for kind in KINDS for p in unit[kind][half:]]
    kinds = [kind for kind in KINDS for _ in unit[kind][half:]]
    return loc, test, kinds


def map_choice(loops: np.ndarray, kinds: list[str], count: int) -> np.ndarray:
    """Indices of `count` test prompts for the Markov maps: looping ones first, taken in turn
    from each kind (a kind's earliest first), then non-looping ones the same way."""
    order = []
    for flag in (True, False):
        queues = [[i for i, (k, hit) in enumerate(zip(kinds, loops)) if k == kind and hit == flag]
                  for kind in KINDS]
        while any(queues):
            order += [q.pop(0) for q in queues if q]
    return np.array(order[:count], np.int64)


# --- the run -------------------------------------------------------------------------------

def run(run: Run, config: Config, progress: bool = True) -> None:
    saved = checkpoints(run, config, progress)
    final = saved[-1][1]
    model = functools.cache(lambda: load(final))
    run.fill([()], lambda: "prompts", lambda: prompt_unit(run, config), "E9 prompts", progress)
    unit = run.load("prompts")
    loc, test, test_kinds = halves(config, unit)
    G, k = config.G, config.repeats
    delimiter = unit["delimiter"] if unit["delimiter"].size else None

    def base() -> dict:
        return {kind: np.asarray(generate(model(), list(unit[kind]), G)) for kind in KINDS}

    run.fill([()], lambda: "base", base, "E9 greedy traces", progress)
    traces = run.load("base")
    half = config.prompts // 2
    loc_traces = np.concatenate([traces[kind][:half] for kind in KINDS])
    test_traces = evaluation_traces(traces, half)

    def ablation() -> dict:
        sweep = ablation_sweep(model(), loc, G, config.components, "zero", k=k)
        return {"base": sweep.base.loops,
                "layer": np.array([r.layer for r in sweep.rows]),
                "component": np.array([config.components.index(r.component)
                                       for r in sweep.rows]),
                "loops": np.stack([r.result.loops for r in sweep.rows])}

    def attribution() -> dict:
        found = neuron_attribution(model(), loc, loc_traces, k=k, batch=ATTRIBUTION_BATCH)
        return {"grad_x_act": found.grad_x_act, "onset_diff": found.onset_diff,
                "used": found.used, "period": found.period, "onset": found.onset,
                "margin": found.margin}

    run.fill([()], lambda: "ablation", ablation, "E9 ablation sweep", progress)
    if looping(loc_traces, k).any():
        run.fill([()], lambda: "attribution", attribution, "E9 attribution", progress)
    else:  # nothing loops: no candidates (the edits are skipped, the breakers still run)
        run.fill([()], lambda: "attribution", lambda: {"used": np.zeros(0, np.int64)},
                 "E9 attribution", progress)
    found = run.load("attribution")
    ranking = ranked(found, config.method) if found["used"].size else []
    control = np.random.default_rng([config.seed, 99]).permutation(config.layers * config.ffn)
    random_pairs = [(int(i // config.ffn), int(i % config.ffn)) for i in control]
    chosen = map_choice(looping(test_traces, k), test_kinds, config.maps)
    map_prompts = [test[i] for i in chosen]

    def maps() -> dict:
        nexts = np.stack([markov_map(model(), p, progress=False).next for p in map_prompts])
        return {"chosen": chosen, "next": nexts,
                "greedy": np.stack([np.asarray(generate(model(), [p], G))[0]
                                    for p in map_prompts])}

    run.fill([()], lambda: "maps", maps, "E9 Markov maps", progress)
    base_maps = run.load("maps")

    def fix(op: str, kk: int) -> dict:
        pairs = (random_pairs if op == "random" else ranking)[:kk]
        after = apply_edit(model(), NeuronEdit(tuple(pairs), "zero" if op == "random" else op))
        found = judge(model(), after, test, G, unit["windows"], map_prompts,
                      delimiter=delimiter, window=config.collapse_window,
                      near_steps=config.near_steps, k=k)
        rates = {r.name: r for r in found.rates}
        out = {"neurons": np.array(pairs, np.int64).reshape(-1, 2),
               "loop_before": rates["loop"].flags_before, "loop_after": rates["loop"].flags_after,
               "loss_before": found.loss.losses_before, "loss_after": found.loss.losses_after,
               **{f"{side}_{stat}": np.array([getattr(getattr(a, side), stat)
                                              for a in found.attractors])
                  for side in ("before", "after") for stat in ATTRACTOR_STATS},
               "vanished": np.array([len(a.vanished) for a in found.attractors]),
               "appeared": np.array([len(a.appeared) for a in found.attractors]),
               **surface_arrays([s[0] for s in found.surfaces])}
        if "collapse" in rates:
            out.update(collapse_before=rates["collapse"].flags_before,
                       collapse_after=rates["collapse"].flags_after)
        return out

    fixes = [(op, kk) for op in config.ops for kk in config.ks
             if op == "random" or len(ranking) >= kk]
    run.fill(fixes, fix_unit, fix, "E9 weight edits", progress)

    def breaker(name: str) -> dict:
        sampler = config.sampler(name)
        if name == "dry":
            sampler = dataclasses.replace(sampler, dry_sequence_breakers=tuple(
                int(b) for b in unit["dry_breakers"]))
        after = np.asarray(generate(model(), test, G, sampler=sampler, seed=config.seed))
        from_maps = after[chosen]  # the map prompts are test prompts
        surfaces = [surface(f, g, x[None], name, config.near_steps)
                    for f, g, x in zip(base_maps["next"], base_maps["greedy"], from_maps)]
        return {"traces": after, "from_maps": from_maps, **surface_arrays(surfaces)}

    run.fill([(name,) for name in BREAKERS], breaker_unit, breaker, "E9 loop breakers",
             progress)
    write_training_tables(run, config)
    write_tables(run, config, unit, traces, found, ranking, fixes, delimiter)


def ranked(found: dict, method: str) -> list[tuple[int, int]]:
    """The neurons (layer, index) by decreasing score of `method` (ties by layer, index)."""
    scores = found[method]
    order = np.argsort(-scores, axis=None, kind="stable")
    layers, neurons = np.unravel_index(order, scores.shape)
    return [(int(i), int(j)) for i, j in zip(layers, neurons)]


def surface_arrays(surfaces) -> dict:
    """The shares of steps on C*, near it and in another basin, per map prompt."""
    return {"on": np.array([s.on for s in surfaces]), "near": np.array([s.near for s in surfaces]),
            "elsewhere": np.array([s.elsewhere for s in surfaces])}


# --- tables --------------------------------------------------------------------------------

def evaluation_traces(traces: dict, half: int) -> np.ndarray:
    """The test prompts' traces: each kind's traces from index `half` on, kinds in order."""
    return np.concatenate([traces[kind][half:] for kind in KINDS])


def rate_row(flags: np.ndarray) -> dict:
    lo, hi = proportion_interval(int(flags.sum()), flags.size, LEVEL)
    return {"rate": float(flags.mean()), "rate_lo": lo, "rate_hi": hi}


def write_tables(run: Run, config: Config, unit: dict, traces: dict, found: dict,
                 ranking: list, fixes: list, delimiter) -> None:
    k, G, half = config.repeats, config.G, config.prompts // 2
    rows = []
    for kind in KINDS:
        x = traces[kind]
        loops = looping(x, k)
        stop = repetition_stop(x, config.stop_min_pattern,
                               min(config.stop_max_pattern, G // config.stop_min_count),
                               config.stop_min_count)
        stopped = stop < G
        collapse = (collapsing(x, delimiter, config.collapse_window) if delimiter is not None
                    else np.zeros(len(x), bool))
        rows.append({"kind": kind, "prompts": len(x), "prompt_tokens": unit[kind].shape[1],
                     **{f"loop_{c}": v for c, v in rate_row(loops).items()},
                     **{f"collapse_{c}": v for c, v in rate_row(collapse).items()},
                     "loop_rate_localise": float(loops[:half].mean()),
                     "loop_rate_test": float(loops[half:].mean()),
                     **{f"stop_{c}": v for c, v in rate_row(stopped).items()},
                     "stop_median": float(np.median(stop[stopped])) if stopped.any() else np.nan,
                     "stopped_loops": int((stopped & loops).sum()),
                     "stopped_not_loops": int((stopped & ~loops).sum()),
                     "tokens_saved": float((G - stop).mean() / G)})
    run.write_table("prompts", rows)
    run.write_table("provenance", [{"list_heldout": int(unit["list_heldout"]),
                                    "list_fresh": int(unit["list_fresh"]),
                                    "delimiters": int(unit["delimiter"].size),
                                    "dry_breakers": " ".join(map(str, unit["dry_breakers"])),
                                    "windows": len(unit["windows"]),
                                    "text_sha256": str(unit["text_sha256"])}])
    sweep = run.load("ablation")
    table = []
    for layer, c, loops in zip(sweep["layer"], sweep["component"], sweep["loops"]):
        d, (lo, hi) = paired_difference(loops, sweep["base"])
        table.append({"layer": int(layer), "component": config.components[c],
                      "loops": int(loops.sum()), "n": loops.size,
                      "base_rate": float(sweep["base"].mean()), **rate_row(loops),
                      "change": d, "change_lo": lo, "change_hi": hi})
    run.write_table("ablation", table)
    if ranking:
        run.write_table("neurons", [
            {"rank": r, "layer": layer, "neuron": j,
             "grad_x_act": float(found["grad_x_act"][layer, j]),
             "onset_diff": float(found["onset_diff"][layer, j])}
            for r, (layer, j) in enumerate(ranking[:max(config.ks)], 1)])
    test_kinds = np.repeat(KINDS, config.prompts - half)
    fix_rows, attractor_rows = [], []
    for op, kk in fixes:
        u = run.load(fix_unit(op, kk))
        delta = u["loss_after"] - u["loss_before"]
        lo, hi = loss_interval(delta)
        fix_rows += [{**row, "loss_before": float(u["loss_before"].mean()),
                      "loss_change": float(delta.mean()), "loss_lo": lo, "loss_hi": hi}
                     for row in fix_table(op, kk, u, test_kinds)]
        attractor_rows += attractor_table(op, kk, u)
    base = run.load("maps")
    test_traces = evaluation_traces(traces, half)
    for name in BREAKERS:
        u = run.load(breaker_unit(name))
        u = {"loop_before": looping(test_traces, k), "loop_after": looping(u["traces"], k),
             **({"collapse_before": collapsing(test_traces, delimiter, config.collapse_window),
                 "collapse_after": collapsing(u["traces"], delimiter, config.collapse_window)}
                if delimiter is not None else {}), **u}
        fix_rows += [{**r, "loss_before": np.nan, "loss_change": 0.0, "loss_lo": 0.0,
                      "loss_hi": 0.0} for r in fix_table(name, 0, u, test_kinds)]
        attractor_rows += attractor_table(name, 0, u)
    reference = surface_arrays([surface(f, g, g[None], "unedited", config.near_steps)
                                for f, g in zip(base["next"], base["greedy"])])
    run.write_table("fixes", fix_rows)
    run.write_table("attractors", attractor_table("unedited", 0, reference) + attractor_rows)
    base_att = [attractors(f) for f in base["next"]]
    run.write_table("maps", [{"map": i, "prompt": int(j), "kind": test_kinds[j],
                              "loops": bool(looping(base["greedy"][i:i + 1], k)[0]),
                              **{s: getattr(a, s) for s in ATTRACTOR_STATS}}
                             for i, (j, a) in enumerate(zip(base["chosen"], base_att))])


def fix_table(fix: str, k: int, u: dict, kinds: np.ndarray) -> list[dict]:
    """Per quantity (loop, collapse) and kind (and all kinds): the rate before and after on
    the test prompts and the paired change."""
    rows = []
    for quantity in ("loop", "collapse"):
        if f"{quantity}_before" not in u:
            continue
        for kind in (*KINDS, "all"):
            sel = np.ones(len(kinds), bool) if kind == "all" else kinds == kind
            change = RateChange.of(quantity, u[f"{quantity}_before"][sel],
                                   u[f"{quantity}_after"][sel])
            rows.append({"fix": fix, "k": k, "quantity": quantity, "kind": kind,
                         "n": int(sel.sum()), "before": change.before,
                         "after": change.after, "after_lo": change.after_interval[0],
                         "after_hi": change.after_interval[1], "change": change.change,
                         "change_lo": change.change_interval[0],
                         "change_hi": change.change_interval[1]})
    return rows


def attractor_table(fix: str, k: int, u: dict) -> list[dict]:
    """Per map prompt: f_P's cycles, cyclic points and largest basin before and after (edits
    only; a breaker leaves f_P as it is) and where the fixed trace walks relative to C*."""
    rows = []
    for i in range(len(u["on"])):
        row = {"fix": fix, "k": k, "map": i, "on": float(u["on"][i]),
               "near": float(u["near"][i]), "elsewhere": float(u["elsewhere"][i])}
        for stat in ATTRACTOR_STATS:
            row[f"{stat}_before"] = int(u[f"before_{stat}"][i]) if f"before_{stat}" in u else -1
            row[f"{stat}_after"] = int(u[f"after_{stat}"][i]) if f"after_{stat}" in u else -1
        row["vanished"] = int(u["vanished"][i]) if "vanished" in u else 0
        row["appeared"] = int(u["appeared"][i]) if "appeared" in u else 0
        rows.append(row)
    return rows


def loss_interval(delta: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The paired t interval of the mean of `delta` (as dynsys.surgery.judge's), [0, 0] when
    every difference is 0."""
    if not np.asarray(delta).any():
        return 0.0, 0.0
    return mean_interval(delta, level)


# --- findings ------------------------------------------------------------------------------

def rate_finding(claim: str, before: np.ndarray, after: np.ndarray, kind: str = TEST
                 ) -> Finding:
    """"`claim`: the loop rate is lower after than before" on paired flags: the paired
    difference after − before on Tango's score interval, below 0."""
    test = paired_test(after, before, 0.0, "below", LEVEL)
    lo, hi = test.interval
    return Finding(NAME, claim + " (null: no change)",
                   f"loop rate {np.mean(before):.2f} -> {np.mean(after):.2f}; paired "
                   f"difference {test.estimate:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                   f"n={np.size(after)} test prompts", test.verdict, kind=kind, test=test)


def loss_finding(claim: str, delta: np.ndarray, tolerance: float) -> Finding:
    """"`claim`: the held-out loss rises by less than `tolerance`" from the per-window
    changes: the paired t interval of their mean (loss_interval), below `tolerance`."""
    delta = np.asarray(delta, np.float64)
    test = interval_test(delta.mean(), lambda level: loss_interval(delta, level), delta.size,
                         tolerance, "below", LEVEL)
    lo, hi = test.interval
    return Finding(NAME, claim + f" (null: a rise of at least {tolerance:g} nats)",
                   f"held-out loss change {np.mean(delta):+.4f} [{lo:+.4f}, {hi:+.4f}] "
                   f"nats/token (paired t), n={np.size(delta)} windows", test.verdict,
                   test=test)


def stay_finding(claim: str, near: np.ndarray, threshold: float, near_steps: int,
                 resamples: int, seed: int, reference: float | None = None) -> Finding:
    """"`claim`: the trace stays near the attractor" from the share of steps within
    `near_steps` of C* per map prompt: the mean with a percentile bootstrap interval over
    map prompts, above `threshold` (one value for every prompt: that value as the interval;
    under 2 prompts: [0, 1]). `reference`: the same share of the unedited greedy traces (its
    transient counts), reported beside it."""
    near = np.asarray(near, np.float64)
    if near.size < 2 or np.ptp(near) == 0:
        fixed = (float(near.mean()),) * 2 if near.size >= 2 else (0.0, 1.0)
        test = interval_test(near.mean(), lambda level: fixed, near.size, threshold, "above",
                             LEVEL)
    else:
        test = bootstrap_test(near.mean(), bootstrap_distribution(near, np.mean, resamples,
                                                                   seed),
                              near.size, threshold, "above", LEVEL)
    interval = test.interval
    return Finding(NAME, claim + f" (null: at most {threshold:g} of the steps)",
                   f"share of steps within {near_steps} step(s) of C* {near.mean():.2f} "
                   f"[{interval[0]:.2f}, {interval[1]:.2f}] (bootstrap), n={near.size} map "
                   "prompts" + ("" if reference is None else
                                f"; the unedited greedy traces {reference:.2f}"),
                   test.verdict, test=test)


def findings(run: Run) -> list[Finding]:
    config = run.config
    out = []
    rows = run.read_table("prompts")
    out.append(Finding(NAME, "greedy traces of the trained model per prompt kind: loop rate, "
                             "list-collapse rate, and where the repetition detector would stop",
                       "; ".join(f"{r['kind']}: loop {r['loop_rate']:.2f} [{r['loop_rate_lo']:.2f}"
                                 f", {r['loop_rate_hi']:.2f}], collapse "
                                 f"{r['collapse_rate']:.2f}, stopped {r['stop_rate']:.2f} "
                                 f"(median step {r['stop_median']:.0f}, "
                                 f"{r['stopped_not_loops']} non-looping)" for r in rows),
                       None))
    sweep = run.read_table("ablation")
    best = min(sweep, key=lambda r: (r["change"], r["layer"]))
    out.append(Finding(NAME, "the zero ablation that lowers the loop rate most (localisation "
                             "prompts)",
                       f"layer {best['layer']} {best['component']}: {best['base_rate']:.2f} -> "
                       f"{best['rate']:.2f}, paired {best['change']:+.3f} "
                       f"[{best['change_lo']:+.3f}, {best['change_hi']:+.3f}], n={best['n']}",
                       None))
    found = run.load("attribution")
    if found["used"].size:
        n = max(config["ks"])
        top = {m: set(ranked(found, m)[:n]) for m in ("grad_x_act", "onset_diff")}
        out.append(Finding(NAME, f"the top-{n} neurons of the two attribution methods "
                                 "(activation x gradient of the loop margin, onset difference)",
                           f"{len(top['grad_x_act'] & top['onset_diff'])} of {n} shared; "
                           f"scores from {found['used'].size} looping localisation traces",
                           None))
    ks = sorted(config["ks"])
    top = max((k for k in ks if run.has(fix_unit("zero", k))), default=None)
    if top is not None:
        u = run.load(fix_unit("zero", top))
        out.append(rate_finding(f"zeroing the top-{top} neurons ({config['method']}) lowers "
                                "the loop rate on held-out test prompts",
                                u["loop_before"], u["loop_after"]))
        out.append(loss_finding(f"zeroing the top-{top} neurons raises the held-out loss by "
                                f"less than {config['loss_tolerance']:g} nats per token",
                                u["loss_after"] - u["loss_before"], config["loss_tolerance"]))
        if "random" in config["ops"]:
            r = run.load(fix_unit("random", top))
            test = paired_test(u["loop_after"], r["loop_after"], 0.0, "below", LEVEL)
            out.append(Finding(
                NAME, f"the top-{top} neurons matter more than {top} random ones: zeroing them "
                      "leaves a lower loop rate (null: the same)",
                f"loop rate {r['loop_after'].mean():.2f} (random) vs "
                f"{u['loop_after'].mean():.2f} (top); paired difference {test.estimate:+.3f} "
                f"[{test.interval[0]:+.3f}, {test.interval[1]:+.3f}], "
                f"n={u['loop_after'].size}", test.verdict, test=test))
    else:
        out.append(Finding(NAME, "weight edits of the top neurons", "no localisation trace "
                           "loops: no candidates, no edits", None))
    reference = np.mean([r["near"] for r in run.read_table("attractors")
                         if r["fix"] == "unedited"])
    before = looping(evaluation_traces(run.load("base"), config["prompts"] // 2), config["repeats"])
    for name in BREAKERS:
        u = run.load(breaker_unit(name))
        # no-repeat-ngram forbids repeating an n-gram, and a period p >= 2 repeated three
        # times repeats a trigram: its lower loop rate is a check, and its trace cannot stay
        # on a cycle of f_P (no claim)
        if name == "ngram":
            out.append(rate_finding(f"the breaker {name} lowers the loop rate on held-out test "
                                    "prompts (by construction)", before,
                                    looping(u["traces"], config["repeats"]), CHECK))
            continue
        out.append(rate_finding(f"the breaker {name} lowers the loop rate on held-out test "
                                "prompts", before, looping(u["traces"], config["repeats"])))
        out.append(stay_finding(f"with {name}, the trace from a map prompt stays near the "
                                "attractor of f_P its greedy trace ends in (the breaker changes "
                                f"the loop's surface, not the attractor): more than "
                                f"{config['stay_share']:g} of its steps within "
                                f"{config['near_steps']} of C*",
                                u["near"], config["stay_share"], config["near_steps"],
                                config["resamples"], config["seed"], reference))
    return out


# --- figures -------------------------------------------------------------------------------

def figures(run: Run):
    return [*_localise(run), *_fixes(run), *_attractors(run)]


def _localise(run: Run):
    """Left: the ablation heat map (layer x component, change of the loop rate). Right: the
    top candidates' scores."""
    sweep = run.read_table("ablation")
    layers = sorted({r["layer"] for r in sweep})
    components = list(dict.fromkeys(r["component"] for r in sweep))
    change = np.array([[next(r["change"] for r in sweep if (r["layer"], r["component"])
                             == (layer, c)) for c in components] for layer in layers])
    fig, ((heat_ax, bar_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.75)
    bound = max(np.abs(change).max(), 1e-3)
    image = heat_ax.imshow(change, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    heat_ax.set_xticks(range(len(components)), components)
    heat_ax.set_yticks(range(len(layers)), layers)
    heat_ax.set_ylabel("layer")
    heat_ax.grid(False)
    for (i, j), v in np.ndenumerate(change):
        heat_ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=heat_ax, label="loop rate change (zero ablation)")
    if (run.path / "tables" / "neurons.csv").exists():
        neurons = run.read_table("neurons")[:16]
        method = run.config["method"]
        bar_ax.barh(range(len(neurons)), [r[method] for r in neurons],
                    color=figstyle.PALETTE[0])
        bar_ax.set_yticks(range(len(neurons)), [f"L{r['layer']}:{r['neuron']}"
                                                for r in neurons], fontsize=6)
        bar_ax.invert_yaxis()
        bar_ax.set_xlabel(f"score ({method})")
        bar_ax.set_title("top neurons (localisation traces)")
    else:
        bar_ax.text(0.5, 0.5, "no looping trace:\nno candidates", ha="center", va="center",
                    transform=bar_ax.transAxes)
    return figstyle.save(fig, run.figures, "e9_localise")


def _fixes(run: Run):
    """Left: the loop rate on the test prompts against the edit size k per edit, with exact
    intervals, the unedited rate and each breaker's. Right: the held-out loss change."""
    rows = [r for r in run.read_table("fixes") if r["quantity"] == "loop" and r["kind"] == "all"]
    fig, ((rate_ax, loss_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.6)
    before = rows[0]["before"]
    for op, colour in zip(OPS, figstyle.PALETTE):
        sel = sorted((r for r in rows if r["fix"] == op), key=lambda r: r["k"])
        if not sel:
            continue
        ks = [r["k"] for r in sel]
        rate = np.array([r["after"] for r in sel])
        spread = np.array([[m - r["after_lo"], r["after_hi"] - m] for m, r in zip(rate, sel)]).T
        rate_ax.errorbar(ks, rate, spread, marker="o", capsize=1.5, color=colour, label=op)
        loss = np.array([r["loss_change"] for r in sel])
        spread = np.array([[m - r["loss_lo"], r["loss_hi"] - m] for m, r in zip(loss, sel)]).T
        loss_ax.errorbar(ks, loss, spread, marker="o", capsize=1.5, color=colour, label=op)
    rate_ax.axhline(before, color="0.3", ls="--", label="unedited")
    for name, colour in zip(BREAKERS, figstyle.PALETTE[3:]):
        row = next(r for r in rows if r["fix"] == name)
        rate_ax.axhline(row["after"], color=colour, ls=":", label=f"breaker {name}")
    rate_ax.set_xscale("log", base=2)
    rate_ax.set_xlabel("edited neurons k")
    rate_ax.set_ylabel("loop rate, test prompts")
    rate_ax.set_ylim(-0.03, 1.05)
    fig.legend(*rate_ax.get_legend_handles_labels(), loc="outside lower center", ncols=7)
    loss_ax.axhline(0, color="0.5", lw=0.8)
    loss_ax.axhline(run.config["loss_tolerance"], color="0.5", ls="--")
    loss_ax.text(1, run.config["loss_tolerance"], " tolerance", va="bottom", fontsize=6,
                 transform=loss_ax.get_yaxis_transform(), ha="right")
    loss_ax.set_xscale("log", base=2)
    loss_ax.set_xlabel("edited neurons k")
    loss_ax.set_ylabel("held-out loss change (nats/token)")
    return figstyle.save(fig, run.figures, "e9_fixes")


def _attractors(run: Run):
    """Left: f_P's cycles, cyclic points and largest basin before and after each edit at its
    largest k (means over map prompts). Right: where each fix's trace from a map prompt walks:
    on C*, near it, elsewhere in its basin, in another basin."""
    rows = run.read_table("attractors")
    edits = [r for r in rows if r["fix"] in OPS]  # "unedited": the reference surface
    largest = {op: max(r["k"] for r in edits if r["fix"] == op)
               for op in dict.fromkeys(r["fix"] for r in edits)}
    fig, ((att_ax, surf_ax),) = figstyle.figure(ncols=2, width=figstyle.FULL, aspect=0.6)
    labels = ["unedited", *(f"{op} k={k}" for op, k in largest.items())]
    x = np.arange(len(ATTRACTOR_STATS))
    width = 0.8 / max(len(labels), 1)
    for i, label in enumerate(labels):
        if i == 0:
            sel = [r for r in edits if (r["fix"], r["k"]) == next(iter(largest.items()))] \
                if largest else []
            values = [np.mean([r[f"{s}_before"] for r in sel]) if sel else 0
                      for s in ATTRACTOR_STATS]
        else:
            op, k = list(largest.items())[i - 1]
            sel = [r for r in edits if (r["fix"], r["k"]) == (op, k)]
            values = [np.mean([r[f"{s}_after"] for r in sel]) for s in ATTRACTOR_STATS]
        att_ax.bar(x + (i - (len(labels) - 1) / 2) * width, np.maximum(values, 0.5), width,
                   color="0.5" if i == 0 else figstyle.PALETTE[i - 1], label=label)
    att_ax.set_xticks(x, list(ATTRACTOR_STATS.values()))
    att_ax.set_yscale("log")
    att_ax.set_ylabel("f_P, mean over map prompts")
    att_ax.legend(loc="best", fontsize=6)
    fixes = ["unedited greedy", *(f"{op} k={k}" for op, k in largest.items()), *BREAKERS]
    keys = [("unedited", 0), *largest.items(), *((name, 0) for name in BREAKERS)]
    shares = {"on C*": [], "near": [], "elsewhere in basin": [], "other basin": []}
    for fix, k in keys:
        sel = [r for r in rows if (r["fix"], r["k"]) == (fix, k)]
        on, near, other = (np.mean([r[c] for r in sel]) for c in ("on", "near", "elsewhere"))
        shares["on C*"].append(on)
        shares["near"].append(near - on)
        shares["elsewhere in basin"].append(1 - near - other)
        shares["other basin"].append(other)
    bottom = np.zeros(len(fixes))
    for (label, values), colour in zip(shares.items(), figstyle.PALETTE[2:]):
        surf_ax.bar(range(len(fixes)), values, 0.7, bottom=bottom, color=colour, label=label)
        bottom += np.array(values)
    surf_ax.set_xticks(range(len(fixes)), fixes, rotation=30, ha="right")
    surf_ax.set_ylabel("share of steps of the fixed trace\n(unedited f_P, map prompts)")
    surf_ax.set_ylim(0, 1.3)
    surf_ax.legend(loc="upper center", ncols=2, fontsize=6)
    return figstyle.save(fig, run.figures, "e9_attractors")
