"""The reference tool's way of working, for side-by-side timing: load the whole checkpoint, cast it to
float32 (as `from_pretrained(torch_dtype=torch.float32)` does), then float32 `torch.linalg.svdvals` per
2-D weight on torch's default threads, SNR arithmetic in float32 as spectrum.py does it.

Usage: python -m bench.reference_way CHECKPOINT_DIR OUT.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def reference_snr(W: torch.Tensor) -> float:
    S = torch.linalg.svdvals(W)
    sigma = (torch.quantile(S, 0.75) - torch.quantile(S, 0.25)) / 1.349
    n, m = W.shape[-2:]
    beta = n / m if n < m else m / n
    thr = sigma * math.sqrt((1 + math.sqrt(beta)) ** 2)
    below = S[S <= thr]
    noise = below.sum() if below.numel() else 1.0  # the reference's rule when nothing is below the threshold
    return float(S[S > thr].sum() / noise / S[0])


def main(ckpt: str, out: str) -> None:
    state = {}
    for shard in sorted(Path(ckpt).glob("*.safetensors")):
        state.update({k: v.float() for k, v in load_file(str(shard)).items()})  # the whole model in fp32
    snr = {k.removesuffix(".weight"): reference_snr(v) for k, v in state.items() if v.ndim == 2}
    Path(out).write_text(json.dumps(snr))


if __name__ == "__main__":
    main(*sys.argv[1:])
