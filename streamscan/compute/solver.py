"""solver: which gram64 path runs on a device, chosen from the device's measured fp64/fp32 matmul rates.

Paths (every one computes the float64 Gram of :func:`spectrum.gram`, so all agree with float64 SVD to
~1e-12 relative SNR; only where the eigenvalues are found differs):
- ``gram64``: the Gram and ``eigvalsh`` on the job's device (LAPACK on the CPU; on CUDA the linear-algebra
  library torch prefers, cuSOLVER by default: ``torch.backends.cuda.preferred_linalg_library`` is a
  process-wide setting, chosen by the CLI entry point from ``STREAMSCAN_CUDA_LINALG``, never here).
- ``gram64-host-eig``: for GPUs with weak fp64 (fp64 rate < 1/16 of fp32: L4, L40S, RTX 4090): the float64
  Gram on the GPU in blocks, its eigenvalues on the CPU cores (fp64 ``syevd`` on such a GPU is slower than
  LAPACK). A float32 Gram is never used: with an outlier direction its noise eigenvalues lose ~1e-2.

:func:`choose` is pure policy; :func:`probe` is the only measurement (a few ms, cached per device name).
A scan's ``solver`` option (``ScanOptions.solver``) forces a path on every device (checks, benchmarks).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

PATHS = ("gram64", "gram64-host-eig")
WEAK_FP64 = 1 / 16  # fp64/fp32 rate below which a GPU's eigenvalues go to the host
PROBE_N = 1024  # matmul size of the probe: 2 GFLOP per fp64 product
_cache: dict[str, Rates] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class Rates:
    """A device's measured matmul rates in TFLOP/s."""

    fp64_tflops: float
    fp32_tflops: float

    @property
    def fp64_ratio(self) -> float:
        return self.fp64_tflops / max(self.fp32_tflops, 1e-12)


def choose(shape: tuple[int, int], batch: int, rates: Rates | None, device_kind: str, forced: str | None = None) -> str:
    """The gram64 path for a [batch, m, n] job on a device of DEVICE_KIND ("cpu" | "cuda").

    On CUDA: ``gram64-host-eig`` when the device's fp64 is weak (measured RATES), else ``gram64``.
    ``forced`` (a path name) wins over everything.
    """
    if forced:
        if forced not in PATHS:
            raise ValueError(f"unknown solver path {forced!r}; choose one of {', '.join(PATHS)}")
        return forced
    if device_kind == "cuda" and rates is not None and rates.fp64_ratio < WEAK_FP64:
        return "gram64-host-eig"
    return "gram64"


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def probe(device: str, n: int = PROBE_N, repeat: int = 3) -> Rates:
    """The device's fp64 and fp32 matmul rates (best of REPEAT n×n products), cached per device name."""
    name = device_name(device)
    with _lock:
        if name in _cache:
            return _cache[name]
    rates = Rates(_rate(device, torch.float64, n, repeat), _rate(device, torch.float32, n, repeat))
    with _lock:
        _cache.setdefault(name, rates)
    return rates


def _rate(device: str, dtype: torch.dtype, n: int, repeat: int) -> float:
    cuda = torch.device(device).type == "cuda"
    a = torch.randn((n, n), dtype=dtype, device=device)
    a @ a  # warm-up (handles, kernels)
    best = float("inf")
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        a @ a
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / max(best, 1e-9) / 1e12
