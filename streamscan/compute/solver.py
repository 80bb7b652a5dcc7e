"""solver: which gram64 path runs on a device, chosen from the device's measured fp64/fp32 matmul rates.

Paths (every one computes the float64 Gram of :func:`spectrum.gram`, so all agree with float64 SVD to
~1e-12 relative SNR; only where the eigenvalues are found differs):
- ``gram64``: the Gram and ``eigvalsh`` (cuSOLVER ``syevd`` on CUDA, LAPACK on the CPU) on the job's device.
- ``gram64-magma``: the same with ``torch.backends.cuda.preferred_linalg_library("magma")`` for the
  eigenvalues, chosen on CUDA for a size only when measured per-size timings say MAGMA is faster there.
- ``gram64-host-eig``: for GPUs with weak fp64 (fp64 rate < 1/16 of fp32: L4, L40S, RTX 4090): the float64
  Gram on the GPU in blocks, its eigenvalues on the CPU cores (fp64 ``syevd`` on such a GPU is slower than
  LAPACK). A float32 Gram is never used: with an outlier direction its noise eigenvalues lose ~1e-2.

:func:`choose` is pure policy; :func:`probe` is the only measurement (a few ms, cached per device name).
``STREAMSCAN_SOLVER`` forces a path on every device (checks, benchmarks).
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from dataclasses import dataclass

import torch

PATHS = ("gram64", "gram64-magma", "gram64-host-eig")
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


def choose(
    shape: tuple[int, int],
    batch: int,
    rates: Rates | None,
    device_kind: str,
    timings: dict[str, dict[int, float]] | None = None,
    forced: str | None = None,
) -> str:
    """The gram64 path for a [batch, m, n] job on a device of DEVICE_KIND ("cpu" | "cuda").

    ``timings``: measured seconds per path and small side k ({"gram64": {4096: 0.2}, "gram64-magma": …});
    the nearest measured k at or above this one decides between cuSOLVER and MAGMA. Without timings the
    default is cuSOLVER (``gram64``). ``forced`` (a path name) wins over everything.
    """
    if forced:
        if forced not in PATHS:
            raise ValueError(f"unknown solver path {forced!r}; choose one of {', '.join(PATHS)}")
        return forced
    if device_kind != "cuda":
        return "gram64"
    if rates is not None and rates.fp64_ratio < WEAK_FP64:
        return "gram64-host-eig"
    k = min(shape)
    if timings and "gram64" in timings and "gram64-magma" in timings:
        a, b = _at(timings["gram64"], k), _at(timings["gram64-magma"], k)
        if a is not None and b is not None and b < a:
            return "gram64-magma"
    return "gram64"


def _at(table: dict[int, float], k: int) -> float | None:
    """The timing of the smallest measured size ≥ k (else the largest measured)."""
    if not table:
        return None
    sizes = sorted(table)
    i = bisect.bisect_left(sizes, k)
    return table[sizes[min(i, len(sizes) - 1)]]


def forced_path() -> str | None:
    return os.environ.get("STREAMSCAN_SOLVER") or None


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
