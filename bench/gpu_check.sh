#!/usr/bin/env bash
# All GPU checks in one call, for a session lent a GPU machine:   bash bench/gpu_check.sh
#
# Step budget (seconds; each step runs under `timeout`, killed 2 s after its budget), in this order:
#   cuda-check 20 | gpu-tests 30 | one-shape 10       -> the first 60 s: a short run still gives numbers
#   per-shape 150 | batching 50 | scan 90 | feed 25 | report 15 -> sum of budgets 390 s, + 8 x 2 s kill grace
#   = 406 s <= 420 s
# Outputs: $GPU_CHECK_OUT/gpu.json (default bench/results/gpu.json) and the "gpu-check" section of
# $GPU_CHECK_RESULTS (default bench/RESULTS.md), written by the report step even when steps fail (each step's
# exit status is in gpu.json's "steps"; a step that timed out says so). Without CUDA the script stops after
# the first step with one line saying what to install, and still writes both, saying so.
set -u
cd "$(dirname "$0")/.."
OUTDIR=${GPU_CHECK_OUT:-bench/results}
RESULTS_MD=${GPU_CHECK_RESULTS:-bench/RESULTS.md}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
mkdir -p "$OUTDIR"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
BUDGETS=(20 30 10 150 50 90 25 15)  # the budgets of the steps below, in order
total=0; for b in "${BUDGETS[@]}"; do total=$((total + b + 2)); done
if (( total > 420 )); then echo "gpu_check: step budgets add up to $total s > 420 s" >&2; exit 2; fi
start=$(date +%s)
: > "$WORK/steps.tsv"

step() {  # step NAME BUDGET COMMAND...: run it under its budget, log to $WORK/NAME.log, record its status
  local name=$1 budget=$2; shift 2
  local t0; t0=$(date +%s)
  timeout --kill-after=2 "$budget" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\t%s\n' "$name" "$budget" "$rc" "$(( $(date +%s) - t0 ))" >> "$WORK/steps.tsv"
  tail -5 "$WORK/$name.log"
  return $rc
}

report() {
  step report 15 "$PY" -m bench.gpu_report --work "$WORK" --json "$OUTDIR/gpu.json" --results "$RESULTS_MD"
  echo "gpu_check: $(( $(date +%s) - start )) s; $OUTDIR/gpu.json"
}

# 1. torch sees CUDA (and streamscan's own dependencies import), else one line saying what to install
if ! step cuda-check 20 "$PY" -m bench.gpu_report --check --work "$WORK"; then
  report
  exit 1
fi
# 2. the GPU tests (scores vs CPU, memory estimate, real OOM -> CPU, mixed pool)
step gpu-tests 30 "$PY" -m pytest -m gpu -q -x -p no:cacheprovider tests/compute/test_gpu.py
# 3. one shape, so that a short run still has a number
step one-shape 10 "$PY" -m bench.gpu --shapes 4096x4096 --repeat 1 --batch 1 --no-write --json "$WORK/one-shape.json"
# 4. per-shape gram64 vs fp32 svdvals (+ MAGMA, SNR vs CPU), projections; no new shape after 130 s
step per-shape 150 "$PY" -m bench.gpu --repeat 2 --batch 16 --deadline 130 --no-write --json "$WORK/per-shape.json"
# 5. CUDA batch sizes: where one stacked job starts to pay (feeds placement.BATCH_MAX/BATCH_MAX_K["cuda"])
step batching 50 "$PY" -m bench.batching --device cuda --scale 1 --no-write
# 6. end-to-end: a ~2 GB synthetic checkpoint scanned on the GPU (feed rate with compute, overlap, OOM notes)
step scan 90 "$PY" - "$WORK/scan.json" "$WORK/scan" <<'PY'
import json, sys, time
from pathlib import Path
import streamscan
from tests.fixtures.synthetic import LlamaShape, write_llama
root = Path(sys.argv[2])
ck = write_llama(root / "m", LlamaShape(layers=4, hidden=4096, ffn=14336, kv=1024, vocab=32000), layers_per_shard=1)
gb = sum(p.stat().st_size for p in ck.glob("*.safetensors")) / 1e9
t = time.perf_counter()
res = streamscan.scan(ck, root / "out", devices="0")
wall = time.perf_counter() - t
out = {"checkpoint_gb": round(gb, 2), "wall_s": round(wall, 2), "gb_per_s": round(gb / wall, 3),
       "scored": res.summary["scored"], "run": res.summary["run"]}
Path(sys.argv[1]).write_text(json.dumps(out, indent=1))
print(json.dumps({k: out[k] for k in ("checkpoint_gb", "wall_s", "gb_per_s", "scored")}))
PY
# 7. the host feed into the GPU (pinned ring, copy stream, no math) on the scan's checkpoint, against cat
step feed 25 "$PY" -m bench.feed --cuda --checkpoint "$WORK/scan/m" --repeat 3 --json "$WORK/feed.json"
report
