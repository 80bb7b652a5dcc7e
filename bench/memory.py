"""Peak RSS of `streamscan run` must not grow with the checkpoint: same shapes, 16 vs 64 layers.

Run: python -m bench.memory   (generates ~0.5 and ~1.6 GB of bf16 checkpoints under ~/.cache/streamscan-bench)
"""

from __future__ import annotations

import platform
import tempfile

from bench.common import checkpoint, measure, python, update_section


def main() -> None:
    rows = []
    for layers in (16, 64):
        ck = checkpoint(
            f"llama{layers}-h1024-f2816", layers=layers, hidden=1024, ffn=2816, kv=256, vocab=32000, layers_per_shard=8
        )
        size = sum(p.stat().st_size for p in ck.glob("*.safetensors")) / 1e9
        with tempfile.TemporaryDirectory() as out:
            m = measure([python(), "-m", "streamscan", "run", str(ck), "--out", out, "-q"])
        rows.append((layers, size, m))
        print(
            f"{layers} layers, {size:.2f} GB: wall {m['wall']:.1f} s, peak RSS {m['peak_rss_mb']:.0f} MB, "
            f"peak anon {m['peak_anon_mb']:.0f} MB"
        )
    table = "\n".join(
        f"| {n} | {s:.2f} GB | {m['peak_rss_mb']:.0f} MB | {m['peak_anon_mb']:.0f} MB | {m['wall']:.1f} s |"
        for n, s, m in rows
    )
    growth = rows[1][2]["peak_rss_mb"] - rows[0][2]["peak_rss_mb"]
    update_section(
        "memory",
        f"""## Peak memory vs checkpoint size (`python -m bench.memory`)
bf16 Llama shapes (hidden 1024, ffn 2816, kv 256, vocab 32000), default method and workers, on {platform.node() and "this machine"}
({__import__("os").cpu_count()} CPUs). Peak RSS as `/usr/bin/time -v` reports it; anonymous RSS sampled every 20 ms.

| layers | checkpoint | peak RSS | peak anon RSS | wall |
|---|---|---|---|---|
{table}

Growth from {rows[0][1]:.2f} GB to {rows[1][1]:.2f} GB of checkpoint: {growth:+.0f} MB of peak RSS. Target: ≤ 700 MB at 64 layers.""",
    )


if __name__ == "__main__":
    main()
