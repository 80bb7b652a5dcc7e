"""Hub models through the local Hub server (tests/hubserver.py): cold vs warm cache, overlap, --max-disk.

Run: python -m bench.hub   (generates a ~0.35 GB bf16 checkpoint under ~/.cache/streamscan-bench; the HF cache
of each run is a temporary directory). The server is throttled to RATE bytes/s to stand in for a network.
"""

from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from pathlib import Path

from bench.common import checkpoint, measure, python, update_section
from tests.checkpoint.hubserver import FakeHub

ROOT = Path(__file__).resolve().parent.parent

RATE = 100e6  # bytes/s served per response
REPO = "bench/llama8"
NOTE = "The downloads run in a thread beside the scan; on this shared 2-core machine the local server, the client and the SVDs compete for the same two cores (load ~6-9 from other work), so the overlap gains nothing measurable here (cold ≈ download-then-scan); over a real network the download is I/O-bound and hides behind the scan. The `--max-disk` row is the sampled peak of shard blobs in the cache (partial files included)."


def blob_bytes(cache: Path) -> int:
    total = 0
    for p in cache.glob("models--*/blobs/*"):
        if len(p.name.split(".")[0]) == 64:  # shard blobs (sha256 names), partial downloads included
            try:
                total += p.stat().st_size
            except FileNotFoundError:
                pass
    return total


def run(hub: FakeHub, cache: Path, out: Path, *extra: str) -> dict:
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_TELEMETRY": "1"}
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], blob_bytes(cache))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        m = measure(
            [python(), "-m", "streamscan", "run", REPO, "--out", str(out), "-q", "--devices", "cpu", *extra], env=env
        )
    finally:
        stop.set()
        sampler.join()
    m["disk_peak"] = peak[0]
    return m


def download_only(hub: FakeHub, cache: Path) -> float:
    code = (
        "import time, huggingface_hub as h; t = time.perf_counter(); "
        f"[h.hf_hub_download({REPO!r}, s.rfilename, cache_dir={str(cache)!r}) "
        f"for s in h.model_info({REPO!r}).siblings]; print(time.perf_counter() - t)"
    )
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    return float(measure([python(), "-c", code], env=env)["stdout"].split()[-1])


def main() -> None:
    os.chdir(ROOT)
    ck = checkpoint("llama8-h1024-f2816-s2", layers=8, hidden=1024, ffn=2816, kv=256, vocab=32000, layers_per_shard=2)
    sizes = sorted(p.stat().st_size for p in ck.glob("*.safetensors"))
    total = sum(sizes)
    budget = sizes[-1] + sizes[0] + (1 << 20)  # room for the largest shard and one more: less than the model
    with FakeHub() as hub, tempfile.TemporaryDirectory() as tmp:
        hub.add_commit(REPO, ck)
        hub.rate = RATE
        t = Path(tmp)
        cold = run(hub, t / "cache", t / "cold")
        warm = run(hub, t / "cache", t / "warm")
        bounded = run(hub, t / "cache2", t / "bounded", "--max-disk", str(budget))
        fetch = download_only(hub, t / "cache3")
    seq = fetch + warm["wall"]
    lines = [
        f"- checkpoint: {len(sizes)} shards, {total / 1e6:.0f} MB (largest {sizes[-1] / 1e6:.0f} MB); "
        f"server throttled to {RATE / 1e6:.0f} MB/s; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (shared)",
        "",
        "| run | wall | shard bytes on disk (peak) | peak RSS |",
        "|---|---|---|---|",
        f"| cold cache (download while scanning) | {cold['wall']:.1f} s | {cold['disk_peak'] / 1e6:.0f} MB "
        f"| {cold['peak_rss_mb']:.0f} MB |",
        f"| warm cache (shards used in place) | {warm['wall']:.1f} s | {warm['disk_peak'] / 1e6:.0f} MB "
        f"| {warm['peak_rss_mb']:.0f} MB |",
        f"| cold, `--max-disk {budget / 1e6:.0f}MB` | {bounded['wall']:.1f} s | {bounded['disk_peak'] / 1e6:.0f} MB "
        f"| {bounded['peak_rss_mb']:.0f} MB |",
        f"| download all first (`hf_hub_download` per file), then the warm scan | {seq:.1f} s ({fetch:.1f} + "
        f"{warm['wall']:.1f}) | {total / 1e6:.0f} MB | |",
        "",
        f"Ratios: cold / warm = {cold['wall'] / warm['wall']:.2f}; cold / (download, then scan) = "
        f"{cold['wall'] / seq:.2f}; --max-disk peak / budget = {bounded['disk_peak'] / budget:.2f} "
        f"(budget {budget / 1e6:.0f} MB, model {total / 1e6:.0f} MB).",
        "",
        NOTE,
    ]
    text = "## Hub models: cold vs warm cache, bounded disk (`python -m bench.hub`)\n\n" + "\n".join(lines)
    print(text)
    update_section("hub", text)


if __name__ == "__main__":
    main()
