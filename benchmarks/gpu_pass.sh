#!/usr/bin/env bash
# One prepared call on a lent GPU (an H200): kernel tests, kernel timings, training throughput, then training the
# built-in model for the time left, with everything written under $OUT (8 files come back: see the end).
#
#   benchmarks/gpu_pass.sh                  # on the device: python3 there holds torch; carried wheels in .whl/
#   OUT=/tmp/o benchmarks/gpu_pass.sh --dry-run   # all of it at toy sizes on the CPU, under 2 minutes (budget 100)
#   benchmarks/gpu_pass.sh --budget 480     # seconds for the whole pass (default 480: inside 8 minutes)
#
# Stages (each bounded by `timeout`; a failing stage is logged and the next one still runs, so a crash in training
# still leaves the kernel JSON and the test log):
#   1. versions: nvidia-smi, python, pip list                                  -> log.txt
#   2. pytest tests/kernels + the no-host-sync update test                   -> log.txt
#   3. benchmarks/kernel_ops.py --quick                                        -> kernel_ops.json
#   4. benchmarks/training.py: shapes-demo vs shapes-gpu, micro-batch sweep    -> training.json
#   5. benchmarks/gpu_train.py: shapes-gpu for the budget left; bf16 pipeline  -> metrics.jsonl,
#      in parts of <= 15 MiB                                                      pipeline.manifest.json, pipeline.tar.partNN
# Back here: python benchmarks/gpu_join.py <files_at> runs/gpu-pipeline
set -uo pipefail

DRY=0
BUDGET=
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --budget) BUDGET="$2"; shift ;;
    *) echo "gpu_pass: unknown argument $1 (use --dry-run, --budget SECONDS)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$BUDGET" ]; then BUDGET=$([ "$DRY" = 1 ] && echo 100 || echo 480); fi
if [ -z "${OUT:-}" ]; then
  echo "gpu_pass: \$OUT is unset; set it to the folder the results should be written to" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"
START=$(date +%s)
elapsed() { echo $(( $(date +%s) - START )); }
log() { echo "[$(elapsed) s] $*" | tee -a "$LOG"; }
stage() {  # stage NAME SECONDS CMD...: run CMD with a time limit, its output appended to the log
  local name="$1" limit="$2"; shift 2
  log "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  log "== $name rc=$rc"
  return 0
}

PY=python3
if [ "$DRY" = 1 ]; then PY=python; fi
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

log "gpu_pass: budget ${BUDGET} s, dry run ${DRY}, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
{ if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  else echo "nvidia-smi: not on this machine"; fi; $PY --version; \
  $PY -m pip list 2>/dev/null; } >> "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >> "$LOG" 2>&1

if [ "$DRY" = 1 ]; then
  stage "kernel tests" 60 $PY -m pytest -q -p no:cacheprovider tests/kernels/test_dispatch.py \
    tests/training/test_resident_data.py::test_update_never_waits_for_the_host
  stage "kernel_ops" 60 $PY benchmarks/kernel_ops.py --device cpu --small --quick --only mhc --repeats 1 \
    --json "$OUT/kernel_ops.json"
  stage "training throughput" 60 $PY benchmarks/training.py --device cpu --tiny --recipes shapes-gpu \
    --cache 32,16 --warmup 1 --repeats 1 --updates 1 --json "$OUT/training.json"
  LEFT=$(( BUDGET - $(elapsed) ))
  stage "train" $(( LEFT + 30 )) $PY benchmarks/gpu_train.py --dry-run --out "$OUT" --budget "$LEFT" \
    --run-dir "$OUT/../gpu-pass-run" --warmup 2 --export-margin 5
else
  stage "kernel tests" 150 $PY -m pytest -q -p no:cacheprovider tests/kernels \
    tests/training/test_resident_data.py::test_update_never_waits_for_the_host
  stage "kernel_ops" 60 $PY benchmarks/kernel_ops.py --device cuda --quick --json "$OUT/kernel_ops.json"
  stage "training throughput" 120 $PY benchmarks/training.py --device cuda --micro-batches 2048 \
    --json "$OUT/training.json"
  LEFT=$(( BUDGET - $(elapsed) ))
  stage "train" $(( LEFT + 30 )) $PY benchmarks/gpu_train.py --out "$OUT" --budget "$LEFT"
fi
log "gpu_pass done; files: $(ls "$OUT" | tr '\n' ' ')"
