"""The GPU check's first and last steps (bench/gpu_check.sh).

python -m bench.gpu_report --check --work DIR
    Whether torch sees CUDA and streamscan's dependencies import; exit 0, or one line saying what to install
    (exit 3: no CUDA; exit 4: a missing package). Saves nvidia-smi's line in DIR.
python -m bench.gpu_report --work DIR --json gpu.json --results RESULTS.md
    Gathers what the steps left in DIR (their statuses, JSON and logs) into gpu.json and the "gpu-check" section
    of RESULTS.md, whatever failed: a failed or timed-out step is listed with its status and its log's last line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TORCH_INDEX = "https://download.pytorch.org/whl/cu130"  # the GPU machines' driver runs CUDA 13 (docs/devices-gpu.md)
NEEDED = ("safetensors", "psutil", "click", "yaml", "tqdm", "orjson", "huggingface_hub")


def check(work: Path) -> int:
    try:
        import torch
    except ImportError:
        print(f"gpu_check: torch is not installed; install a CUDA build: pip install torch --index-url {TORCH_INDEX}")
        return 3
    if not torch.cuda.is_available():
        version = torch.__version__.split("+")[0]
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        print(
            f"gpu_check: torch {torch.__version__} ({build}) sees no CUDA GPU; install a CUDA build: "
            f"pip install torch=={version} --index-url {TORCH_INDEX}"
        )
        return 3
    for name in NEEDED:
        try:
            __import__(name)
        except ImportError:
            print(f"gpu_check: Python package {name!r} is missing; carry its wheel (docs/devices-gpu.md)")
            return 4
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        smi = ""
    (work / "nvidia-smi.txt").write_text(smi or torch.cuda.get_device_name(0))
    print(
        f"gpu_check: torch {torch.__version__} sees {torch.cuda.device_count()} GPU(s): {smi or torch.cuda.get_device_name(0)}"
    )
    return 0


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _last_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def gather(work: Path) -> dict:
    steps = []
    for line in (work / "steps.tsv").read_text().splitlines() if (work / "steps.tsv").exists() else []:
        name, budget, rc, seconds = line.split("\t")
        rc_i = int(rc)
        status = "ok" if rc_i == 0 else "timed out" if rc_i in (124, 137) else f"failed (exit {rc_i})"
        steps.append(
            {
                "name": name,
                "budget_s": int(budget),
                "seconds": int(seconds),
                "status": status,
                "last_line": _last_line(work / f"{name}.log"),
            }
        )
    ran = {s["name"]: s for s in steps}
    cuda = ran.get("cuda-check", {}).get("status") == "ok"
    data = {
        "cuda": cuda,
        "device": (work / "nvidia-smi.txt").read_text().strip() if (work / "nvidia-smi.txt").exists() else None,
        "steps": steps,
        "failed": [s["name"] for s in steps if s["status"] != "ok" and s["name"] != "report"],
    }
    if not cuda:
        data["no_cuda"] = ran.get("cuda-check", {}).get("last_line", "the CUDA check did not run")
        return data
    data["gpu_tests"] = ran.get("gpu-tests", {}).get("last_line")
    data["one_shape"] = _json(work / "one-shape.json")
    data["per_shape"] = _json(work / "per-shape.json")
    data["scan"] = _json(work / "scan.json")
    data["feed"] = _json(work / "feed.json")
    try:
        data["batching"] = [ln for ln in (work / "batching.log").read_text().splitlines() if ln.startswith("|")]
    except OSError:
        data["batching"] = None
    return data


def markdown(data: dict) -> str:
    from bench.gpu import markdown as shapes_markdown

    rows = "\n".join(f"| {s['name']} | {s['budget_s']} s | {s['seconds']} s | {s['status']} |" for s in data["steps"])
    budget = sum(s["budget_s"] for s in data["steps"])
    head = f"""## GPU check (`bash bench/gpu_check.sh`)
Steps, each under its budget (sum {budget} s + 2 s kill grace each ≤ 420 s); all of it in bench/results/gpu.json.

| step | budget | took | status |
|---|---|---|---|
{rows}
"""
    if not data["cuda"]:
        return head + f"\nNo GPU numbers: {data.get('no_cuda')}"
    parts = [head, f"Device: {data.get('device')}. GPU tests: {data.get('gpu_tests') or 'n/a'}."]
    shapes = data.get("per_shape") or data.get("one_shape")
    if shapes:
        parts.append(shapes_markdown(shapes).split("\n", 1)[1])
    if data.get("batching"):
        parts.append("CUDA batching (bench.batching --device cuda):\n\n" + "\n".join(data["batching"]))
    scan = data.get("scan")
    if scan:
        parts.append(
            f"End-to-end scan on the GPU: {scan['checkpoint_gb']} GB in {scan['wall_s']} s = {scan['gb_per_s']} GB/s "
            f"({scan['scored']} matrices)."
        )
    for row in data.get("feed") or []:
        parts.append(
            f"Host feed into {row['gpus']} GPU(s), no math (`bench.feed --cuda`, pinned ring, copy stream): "
            f"{row['rate_gb_s']:.2f} GB/s = {row['ratio']:.2f}× `cat` of the same {row['gb']:.2f} GB."
        )
    if data["failed"]:
        parts.append("Failed or cut short: " + ", ".join(data["failed"]) + " (see gpu.json's steps).")
    return "\n\n".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--results", type=Path)
    args = ap.parse_args()
    if args.check:
        return check(args.work)
    data = gather(args.work)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    if args.results:
        import bench.common as common

        common.RESULTS = args.results
        common.update_section("gpu-check", markdown(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
