"""bench/gpu.py in its CPU check mode: the JSON it writes has the keys a GPU run fills, and never lands in
bench/results/gpu.json (that file holds GPU numbers only)."""

import json
import re
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


def test_shapes_and_deadline_cut_the_list_and_only_complete_models_are_projected(tmp_path):
    out = tmp_path / "g.json"
    args = ["--device", "cpu", "--scale", "64", "--repeat", "1", "--batch", "1", "--no-write", "--json", str(out)]
    subprocess.run(
        [sys.executable, "-m", "bench.gpu", *args, "--shapes", "4096x4096,7168x2048", "--deadline", "0"],
        cwd=ROOT,
        capture_output=True,
        timeout=300,
        check=True,
    )
    data = json.loads(out.read_text())
    assert {tuple(r["full_shape"]) for r in data["per_shape"]} == {(4096, 4096)}  # then the deadline had passed
    assert data["not_measured"] == [[7168, 2048]] and data["projections"] == []


def test_gpu_check_without_cuda_says_what_to_install_and_still_writes_its_outputs(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run the GPU checks")
    env = {**__import__("os").environ, "GPU_CHECK_OUT": str(tmp_path), "GPU_CHECK_RESULTS": str(tmp_path / "R.md")}
    run = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    said = [ln for ln in run.stdout.splitlines() if "sees no CUDA GPU" in ln]
    assert (
        len(said) == 1
        and "pip install torch==" in said[0]
        and "--index-url https://download.pytorch.org/whl/cu" in said[0]
    )
    data = json.loads((tmp_path / "gpu.json").read_text())
    assert data["cuda"] is False and data["failed"] == ["cuda-check"] and "sees no CUDA GPU" in data["no_cuda"]
    section = (tmp_path / "R.md").read_text()
    assert "<!-- gpu-check:start -->" in section and "No GPU numbers" in section


def test_gpu_check_step_budgets_fit_in_seven_minutes():
    text = (ROOT / "bench" / "gpu_check.sh").read_text()
    budgets = [int(b) for b in text.split("BUDGETS=(")[1].split(")")[0].split()]
    steps = [int(b) for b in re.findall(r"\bstep [\w-]+ (\d+) ", text)]
    assert sorted(steps) == sorted(budgets)  # the stated budgets are the ones the steps run under
    assert sum(budgets) + 2 * len(budgets) <= 420 and sum(budgets[:3]) <= 60
