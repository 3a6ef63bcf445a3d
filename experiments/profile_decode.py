"""Where a decode step's time goes: a per-op profile of `generate` from XLA's own trace.

Compiles the generation program of a case (the same program `ds.generate` runs), runs it
under `jax.profiler.trace`, and sums the trace's per-op durations by HLO instruction. Each
instruction is named by the model code that produced it (its `op_name` metadata, e.g.
`blocks_*/mlp/down/dot_general`, layers merged) and by its output shape; ops inside the decode
loop are reported per step, the rest (prefill, setup) once. Beside each op: the bytes it reads
and writes (its operands and output) and the rate that implies, against the streaming
bandwidth measured in the same run, so an op far below the bandwidth (or the matmul peak)
names what keeps the step from its floor.

    .venv/bin/python experiments/profile_decode.py                      # every case
    .venv/bin/python experiments/profile_decode.py --cases tiny:64 --top 12

Cases are PRESET:BATCH with bench_generate.py's prompt and new-token counts. The trace's
durations are per thread (several threads may run at once), so shares are of their sum. An
in-place update (a cache write) is counted with its whole buffer, so its rate overstates.
Ops without model metadata (XLA's own copies, or dots it rewrote) keep their opcode as label.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import numpy as np
from bench_generate import CASES
from timing import measure_roofline

import dynsys as ds
from dynsys.decode import generation
from dynsys.decode.engine import left_pad
from dynsys.decode.sampling import GREEDY

DEFAULT = ("tiny:1", "tiny:64", "llama-3.2-1b:1", "llama-3.2-1b:8")
_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (\S+?)\((.*)$")
_OPERAND = re.compile(r"%([\w.\-]+)")
_OPNAME = re.compile(r'op_name="([^"]+)"')
_BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f16": 2, "s8": 1, "u8": 1}


def instructions(hlo: str) -> tuple[dict, set]:
    """{instruction: (label, output dims, bytes read and written)} of the optimized HLO, and
    the instructions inside while-loop bodies (run at every step)."""
    shapes, found, owner, body_names, calls = {}, {}, {}, set(), collections.defaultdict(set)
    computation = None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if head:
            computation = head.group(1)
            continue
        body_names.update(re.findall(r" while\(.*body=%([\w.\-]+)", line))
        calls[computation].update(re.findall(r"(?:calls|body|to_apply)=%([\w.\-]+)", line))
        m = _INSTR.match(line)
        if not m:
            continue
        name, dtype, dims, opcode, rest = m.groups()
        size = int(np.prod([int(d) for d in dims.split(",") if d])) * _BYTES.get(dtype, 4)
        shapes[name] = size
        owner[name] = computation
        label = _OPNAME.search(rest)
        label = label.group(1) if label else opcode
        label = re.sub(r"^jit\(\w+\)/", "", label)
        label = re.sub(r"blocks_\d+", "blocks_*", re.sub(r"(while/body/|closed_call/)", "", label))
        operands = _OPERAND.findall(rest.split("),")[0])
        found[name] = (f"{label} -> {dtype}[{dims}]", size, operands)
    in_loop, todo = set(), list(body_names)
    while todo:
        c = todo.pop()
        if c not in in_loop:
            in_loop.add(c)
            todo += calls.get(c, ())
    table = {n: (label, out + sum(shapes.get(o, 0) for o in ops))
             for n, (label, out, ops) in found.items()}
    return table, {n for n in found if owner[n] in in_loop}


def trace_durations(fn) -> collections.Counter:
    """{event name: summed duration in s} of one call of fn under the profiler."""
    with tempfile.TemporaryDirectory() as out:
        with jax.profiler.trace(out, create_perfetto_trace=True):
            fn()
        with gzip.open(glob.glob(out + "/**/*.json.gz", recursive=True)[0]) as f:
            events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            total[e["name"]] += e.get("dur", 0) / 1e6
    return total


def profile(preset: str, batch: int, roof, top: int) -> None:
    _, prompt_len, new, _ = CASES.get(preset, (preset, 200, 256, ()))
    model = ds.load(preset, seed=0)
    cfg = model.config
    prompts = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt_len))
    tokens, mask = left_pad(list(prompts), cfg.vocab_size)
    args = (cfg, new, GREEDY.kind, False, model.params, tokens, mask, GREEDY.values,
            jax.random.PRNGKey(0), None)
    table, in_loop = instructions(generation._generate.lower(*args).compile().as_text())

    def call():
        return jax.block_until_ready(generation._generate(*args))

    call()
    durations = trace_durations(call)
    steps = new - 1
    per_step = collections.defaultdict(lambda: [0.0, 0])
    once = 0.0
    for name, seconds in durations.items():
        if name not in table:
            continue
        if name in in_loop:
            label, nbytes = table[name]
            per_step[label][0] += seconds / steps
            per_step[label][1] += nbytes
        else:
            once += seconds
    step_total = sum(t for t, _ in per_step.values())
    print(f"\n{preset} batch {batch} (prompt {prompt_len}, {new} new): decode ops "
          f"{step_total * 1e3:.2f} ms/step, prefill and setup {once * 1e3:.0f} ms once")
    print(f"  {'ms/step':>8} {'share':>6} {'MB/step':>8} {'GB/s':>6}  op -> output")
    for label, (t, nbytes) in sorted(per_step.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {t * 1e3:8.3f} {t / step_total:6.1%} {nbytes / 1e6:8.1f} "
              f"{nbytes / t / 1e9 if t else 0:6.1f}  {label}")
    print(f"  (streaming bandwidth {roof.gbps:.1f} GB/s, matmul {roof.gflops:.0f} GFLOP/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(DEFAULT))
    parser.add_argument("--top", type=int, default=10, help="ops listed per case")
    args = parser.parse_args()
    roof = measure_roofline()
    print(roof)
    for case in args.cases:
        preset, _, batch = case.partition(":")
        if not batch.isdigit() or int(batch) < 1:
            raise SystemExit(f"profile_decode: bad case {case!r}: expected PRESET:BATCH")
        profile(preset, int(batch), roof, args.top)


if __name__ == "__main__":
    main()
