#!/usr/bin/env bash
# All GPU checks in one call (< 8 min on an H100/H200), for a session that is lent a device:
#   bash bench/gpu_check.sh            results land in $OUT (or bench/results) and bench/RESULTS.md
set -u
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/nvidia-smi.csv"
# 1. the GPU tests (scores vs CPU, memory estimate, real OOM -> CPU, mixed pool)
timeout 150 python3 -m pytest -m gpu -q -p no:cacheprovider tests 2>&1 | tail -20 | tee "$OUT/pytest-gpu.txt"
# 2. batching on the GPU: where one stacked job starts to pay (feeds placement.BATCH_MAX/BATCH_MAX_K["cuda"])
timeout 120 python3 -m bench.batching --device cuda --scale 1 --no-write 2>&1 | tail -40 | tee "$OUT/batching-gpu.txt"
# 3. per-shape gram64 (chosen solver path, batched experts) vs fp32 svdvals, MAGMA, SNR error, projections (gpu.json)
timeout 200 python3 -m bench.gpu --repeat 2 --batch 16 --json "$OUT/gpu.json" 2>&1 | tail -40 | tee "$OUT/gpu.txt"
# 4. an end-to-end scan of a multi-GB synthetic checkpoint on the GPU (feed rate, overlap, OOM notes)
timeout 120 python3 - <<'PY' 2>&1 | tail -20 | tee "$OUT/scan-gpu.txt"
import json, time, tempfile
from pathlib import Path
import streamscan
from tests.fixtures.synthetic import LlamaShape, write_llama
root = Path(tempfile.mkdtemp())
ck = write_llama(root / "m", LlamaShape(layers=8, hidden=4096, ffn=14336, kv=1024, vocab=32000), layers_per_shard=2)
gb = sum(p.stat().st_size for p in ck.glob("*.safetensors")) / 1e9
t = time.perf_counter()
res = streamscan.scan(ck, root / "out", devices="0")
wall = time.perf_counter() - t
print(json.dumps({"checkpoint_gb": round(gb, 2), "wall_s": round(wall, 2), "gb_per_s": round(gb / wall, 3),
                  "scored": res.summary["scored"], "run": res.summary["run"]}, indent=1))
PY
echo "gpu_check: $(( $(date +%s) - start )) s"
