#!/usr/bin/env bash
# One GPU check, ready to go: parity tests, benchmarks and E1 at the blog's scale, one summary.
#
#   pip install -e '.[cuda,test]'          # jax[cuda12] pinned to the tested jax (pyproject.toml)
#   bash experiments/gpu_check.sh          # about 10 minutes on one H100/H200-class GPU
#
# Steps (each logged under $OUT, default runs/gpu-check; each bounded by a timeout):
#   1. a GPU must be visible to JAX (jax.devices()[0].platform == "gpu"), else exit 2 at once;
#   2. parity tests: tests/io tests/nn tests/decode (against transformers on the CPU);
#   3. benchmarks: bench_generate.py, bench_prefix_step.py, bench_markov.py (their default
#      cases; the transformers side of bench_generate runs on the CPU, as torch sees it);
#   4. E1 at the blog's scale (H. Fan): llama-3.2-1b random init, N = 1..4, RoPE on and off,
#      prompts of 100 and 1024 tokens, 1000 greedy tokens, $E1_PROMPTS (default 64, >= 16)
#      prompts per (N, RoPE) cell: `dynsys run e1 --scale paper --set length=...`;
#   5. the summary: pass/fail counts, the benchmarks' ratio lines, E1's findings.
#
# Environment: PYTHON (default .venv/bin/python, else python3), OUT, E1_PROMPTS,
# E1_MODEL, E1_LENGTHS ("100 1024"), E1_NEW_TOKENS (1000),
# PRECISION (JAX_DEFAULT_MATMUL_PRECISION, default "highest": float32 matmuls as float32, not
# TF32, so that tokens and maps compare with the CPU's; "default" lets XLA use TF32),
# SKIP="tests bench e1" (any of them). Exit status: 0 if every step passed, 1 if one failed,
# 2 if no GPU is visible. GPU_CHECK_ON_CPU=1 skips the GPU check (to try this script itself on
# a CPU, e.g. SKIP="tests bench" E1_MODEL=tiny E1_PROMPTS=16 E1_NEW_TOKENS=32 E1_LENGTHS=16).
set -uo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
DYNSYS="$PY -m dynsys.cli"
OUT=${OUT:-runs/gpu-check}
E1_PROMPTS=${E1_PROMPTS:-64}
E1_MODEL=${E1_MODEL:-llama-3.2-1b}
E1_LENGTHS=${E1_LENGTHS:-100 1024}
E1_NEW_TOKENS=${E1_NEW_TOKENS:-1000}
SKIP=${SKIP:-}
export JAX_DEFAULT_MATMUL_PRECISION=${PRECISION:-highest}
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # torch and jax share the GPU in the tests

if [ "$E1_PROMPTS" -lt 16 ] 2>/dev/null; then
  echo "gpu_check: E1_PROMPTS=$E1_PROMPTS; the blog's scale needs at least 16 per cell" >&2
  exit 1
fi

# 1. fail fast without a GPU
if ! GPU_CHECK_ON_CPU=${GPU_CHECK_ON_CPU:-} "$PY" - <<'EOF'
import os
import sys
try:
    import jax
    device = jax.devices()[0]
except Exception as e:  # no backend at all
    print(f"gpu_check: JAX found no device ({type(e).__name__}: {e})", file=sys.stderr)
    sys.exit(2)
if device.platform != "gpu" and not os.environ["GPU_CHECK_ON_CPU"]:
    forced = os.environ.get("JAX_PLATFORMS")
    print(f"gpu_check: no GPU visible to JAX: jax.devices()[0] is {device.platform!r} "
          f"({device.device_kind}). On a CUDA 12 machine: pip install -e '.[cuda,test]', and "
          "check nvidia-smi and that CUDA_VISIBLE_DEVICES is not empty"
          + (f"; JAX_PLATFORMS={forced} is set" if forced else "") + ".", file=sys.stderr)
    sys.exit(2)
print(f"gpu_check: {jax.device_count()} x {device.device_kind}, jax {jax.__version__}, "
      f"matmul precision {jax.config.jax_default_matmul_precision}")
EOF
then
  exit 2
fi

mkdir -p "$OUT"
START=$SECONDS
declare -A STATUS
step() {  # step NAME SECONDS COMMAND...: run it with a timeout, log to $OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name: $*"
  timeout --signal=INT --kill-after=30 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  STATUS[$name]="rc=$rc ($((SECONDS - t0)) s)"
  [ $rc -eq 124 ] && STATUS[$name]+=" TIMED OUT after $limit s"
  tail -n 3 "$OUT/$name.log" | sed 's/^/   /'
  return $rc
}
skip() { [[ " $SKIP " == *" $1 "* ]]; }

FAILED=0
if ! skip tests; then
  step tests 240 "$PY" -m pytest -q -p no:cacheprovider -p no:xdist tests/io tests/nn \
    tests/decode || FAILED=1
fi
if ! skip bench; then
  step bench_generate 240 "$PY" experiments/bench_generate.py || FAILED=1
  step bench_prefix_step 60 "$PY" experiments/bench_prefix_step.py || FAILED=1
  step bench_markov 120 "$PY" experiments/bench_markov.py || FAILED=1
fi
if ! skip e1; then
  for n in $E1_LENGTHS; do
    step "e1_n$n" 240 $DYNSYS run e1 --scale paper --out "$OUT/e1-$E1_MODEL-n$n-p$E1_PROMPTS" \
      --set model="$E1_MODEL" --set 'ngrams=[1, 2, 3, 4]' --set length="$n" \
      --set new_tokens="$E1_NEW_TOKENS" --set prompts="$E1_PROMPTS" --set batch="$E1_PROMPTS" \
      || FAILED=1
  done
fi

echo
echo "================ gpu_check summary ($((SECONDS - START)) s; logs in $OUT) ================"
for name in tests bench_generate bench_prefix_step bench_markov $(printf 'e1_n%s ' $E1_LENGTHS); do
  [ -n "${STATUS[$name]:-}" ] && printf '%-18s %s\n' "$name" "${STATUS[$name]}"
done
if [ -f "$OUT/tests.log" ]; then
  echo "-- parity tests (tests/io tests/nn tests/decode):"
  grep -E '(passed|failed|error)' "$OUT/tests.log" | tail -n 1 | sed 's/^/   /'
  grep -E '^(FAILED|ERROR) ' "$OUT/tests.log" | head -n 20 | sed 's/^/   /'
fi
for b in bench_generate bench_prefix_step bench_markov; do
  [ -f "$OUT/$b.log" ] || continue
  echo "-- $b:"
  grep -E '^device|^roofline|ratio|speed-up|of matmul peak|tok/s|tokens/s|faster' "$OUT/$b.log" \
    | cut -c1-240 | sed 's/^/   /'
done
for n in $E1_LENGTHS; do
  run="$OUT/e1-$E1_MODEL-n$n-p$E1_PROMPTS"
  [ -f "$run/run.json" ] || continue
  echo "-- E1, prompts of $n tokens ($E1_PROMPTS per N and RoPE setting):"
  "$PY" - "$run" <<'EOF'
import sys
from dynsys import studies
for f in studies.findings(sys.argv[1]):
    print(f"   {f.verdict or '-':13s} {f.claim}\n   {'':13s} {f.measured}")
EOF
  [ -f "$run/tables/loops.csv" ] && column -s, -t <"$run/tables/loops.csv" | sed 's/^/   /'
done
echo "verdict: $([ $FAILED -eq 0 ] && echo 'every step passed' || echo 'a step FAILED (see above)')"
exit $FAILED
