"""Shared helpers of the benchmarks: a cache outside the repo, timed child processes, RESULTS.md sections."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
CACHE = Path(os.environ.get("STREAMSCAN_BENCH_CACHE", Path.home() / ".cache" / "streamscan-bench"))


def checkpoint(name: str, **shape) -> Path:
    """A synthetic Llama checkpoint, generated once and cached outside the repo."""
    from tests.fixtures.synthetic import LlamaShape, write_llama

    root = CACHE / name
    if not (root / "config.json").exists():
        per = shape.pop("layers_per_shard", None)
        write_llama(root, LlamaShape(**shape), layers_per_shard=per)
    return root


def measure(args: list[str], env: dict | None = None) -> dict:
    """Run a child under /usr/bin/time -v; wall seconds, peak RSS and peak anonymous RSS (sampled) in MB."""
    proc = subprocess.Popen(
        ["/usr/bin/time", "-v", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    peak_anon = 0

    def sample() -> None:
        nonlocal peak_anon
        while proc.poll() is None:
            for child in _children(proc.pid):
                try:
                    text = Path(f"/proc/{child}/status").read_text()
                    peak_anon = max(peak_anon, int(re.search(r"RssAnon:\s+(\d+)", text).group(1)))
                except (OSError, AttributeError):
                    pass
            time.sleep(0.02)

    start = time.perf_counter()
    sampler = threading.Thread(target=sample)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if proc.returncode:
        sys.exit(f"benchmark child failed ({proc.returncode}): {' '.join(args)}\n{err[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"wall": wall, "peak_rss_mb": rss / 1024, "peak_anon_mb": peak_anon / 1024, "stdout": out}


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


def update_section(name: str, text: str) -> None:
    """Replace this benchmark's section of bench/RESULTS.md (other sections stay)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc:
        doc = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, doc, flags=re.S)
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(doc)


def python() -> str:
    return sys.executable
