"""bench/gpu.py in its CPU check mode: the JSON it writes has the keys a GPU run fills, and never lands in
bench/results/gpu.json (that file holds GPU numbers only)."""

import json
import subprocess
import sys
from pathlib import Path

import bench.gpu

ROOT = Path(__file__).resolve().parents[2]


def test_cpu_check_mode_writes_the_json_keys_to_a_temporary_file():
    before = bench.gpu.RESULTS_JSON.read_bytes() if bench.gpu.RESULTS_JSON.exists() else None
    args = ["--device", "cpu", "--scale", "128", "--no-write", "--repeat", "1", "--batch", "2"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    ).stdout
    path = Path(out.strip().splitlines()[-1].removeprefix("JSON: "))
    assert path.resolve() != bench.gpu.RESULTS_JSON.resolve()
    assert (bench.gpu.RESULTS_JSON.read_bytes() if bench.gpu.RESULTS_JSON.exists() else None) == before
    data = json.loads(path.read_text())
    assert data["device"] == "cpu" and data["scale"] == 128
    assert data["solver"]["path"] == "gram64" and data["solver"]["fp64_tflops"] > 0
    assert {"shape", "method", "seconds", "snr_rel_err"} <= set(data["per_shape"][0])
    methods = {r["method"] for r in data["per_shape"]}
    assert {"gram64 (gram64)", "svdvals32", "gram64 batched x2 (gram64)"} <= methods
    errs = [
        r["snr_rel_err"] for r in data["per_shape"] if r["method"].startswith("gram64") and r["snr_rel_err"] is not None
    ]
    assert errs and max(errs) <= 1e-6  # every gram64 row against float64 SVD (all of them fit on the CPU)
    got = {(p["model"], p["gpus"]) for p in data["projections"]}
    models = ["Llama-3-70B", "Mixtral-8x22B", "DBRX", "Qwen1.5-110B", "DeepSeek-V3"]
    assert got == {(m, g) for m in models for g in (1, 8)}
    for p in data["projections"]:
        assert p["seconds"] == max(p["compute_seconds"], p["feed_seconds"]) > 0
