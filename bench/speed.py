"""streamscan vs the reference's way of working, side by side in one run, on TinyLlama shapes.

Run: python -m bench.speed [--layers 4]
Times (a) bench/reference_way.py (whole checkpoint in fp32, fp32 svdvals) and (b) `streamscan run`
(defaults), then checks both against float64-exact singular values (float64 svdvals of each matrix).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch

from bench.common import checkpoint, measure, python, update_section
from streamscan.checkpoint.index import build_index
from streamscan.checkpoint.reader import read_tensor
from streamscan.checkpoint.source import resolve
from streamscan.compute.spectrum import score


def exact_snrs(ck: Path) -> dict[str, float]:
    """float64 svdvals on the tall orientation (same singular values, faster), reference SNR arithmetic."""
    out = {}
    for t in build_index(resolve(ck)).tensors:
        if len(t.shape) == 2:
            W = read_tensor(t).double()
            out[t.name.removesuffix(".weight")] = score(W if W.shape[0] >= W.shape[1] else W.T, "svdvals64").snr
    return out


def max_rel(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) / abs(b[k]) for k in b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()
    ck = checkpoint(
        f"tinyllama{args.layers}", layers=args.layers, hidden=2048, ffn=5632, kv=256, vocab=32000, layers_per_shard=2
    )
    size = sum(p.stat().st_size for p in ck.glob("*.safetensors")) / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        ref = measure([python(), str(Path(__file__).with_name("reference_way.py")), str(ck), f"{tmp}/ref.json"])
        ours = measure([python(), "-m", "streamscan", "run", str(ck), "--out", f"{tmp}/scan", "-q"])
        ref_snr = json.loads(Path(f"{tmp}/ref.json").read_text())
        our_snr = {
            k: v["snr"]
            for k, v in json.loads(next(Path(f"{tmp}/scan").glob("snr_results_*[!d].json")).read_text()).items()
        }
    exact = exact_snrs(ck)
    n = len(exact)
    ratio = ref["wall"] / ours["wall"]
    err_ours, err_ref = max_rel(our_snr, exact), max_rel(ref_snr, exact)
    print(
        f"{n} matrices, {size:.2f} GB bf16: reference way {ref['wall']:.1f} s, streamscan {ours['wall']:.1f} s "
        f"-> {ratio:.2f}x; max rel SNR error vs fp64: streamscan {err_ours:.1e}, reference {err_ref:.1e}"
    )
    update_section(
        f"speed-{args.layers}",
        f"""## Speed vs the reference's way (`python -m bench.speed --layers {args.layers}`)
Synthetic TinyLlama shapes (hidden 2048, ffn 5632, kv 256, vocab 32000), {args.layers} layers, {n} matrices,
{size:.2f} GB bf16, {os.cpu_count()} CPUs, torch {torch.__version__}. Both measured in the same run, one after the other.

| | wall | peak RSS | peak anon RSS | max rel SNR error vs fp64 SVD |
|---|---|---|---|---|
| (a) reference way: whole model in fp32, fp32 `svdvals` | {ref["wall"]:.1f} s | {ref["peak_rss_mb"]:.0f} MB | {ref["peak_anon_mb"]:.0f} MB | {err_ref:.1e} |
| (b) `streamscan run` (gram64, 1 job per core) | {ours["wall"]:.1f} s | {ours["peak_rss_mb"]:.0f} MB | {ours["peak_anon_mb"]:.0f} MB | {err_ours:.1e} |

Speed-up (a)/(b): **{ratio:.2f}x**.""",
    )


if __name__ == "__main__":
    main()
