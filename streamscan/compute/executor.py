"""executor: one job's matrix -> its score -> its Result, the one path of file scans and in-memory scans."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from streamscan.compute.spectrum import score
from streamscan.records import Job, Result

META_REASON = "weights on the meta device (offloaded or not loaded): not scored"


def oom_types() -> tuple[type[BaseException], ...]:
    return tuple({getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None})


def _base(job: Job, method: str, worker: str) -> dict:
    return dict(
        name=job.name,
        type=job.type,
        shape=job.shape,
        dtype=job.tensor.dtype,
        role=job.role,
        method=method,
        worker=worker,
    )


def error_result(job: Job, method: str, worker: str, err: BaseException, seconds: float, read: float = 0.0) -> Result:
    return Result(
        snr=None,
        reason=f"{type(err).__name__}: {err}",
        status="error",
        seconds=seconds,
        read_seconds=read,
        **_base(job, method, worker),
    )


def score_job(
    job: Job,
    tensor: torch.Tensor,
    method: str,
    worker: str,
    device: str,
    read: float = 0.0,
    compute=None,
    keep: Callable[[str, torch.Tensor], None] | None = None,
) -> Result:
    """Score JOB's matrix TENSOR on DEVICE (moved there if it is elsewhere). CUDA out-of-memory propagates
    (the caller retries or records it); any other failure becomes the job's error Result.

    ``keep(name, singular_values)`` receives the matrix's singular values (float64, descending, CPU) when it
    had a spectrum, before the Result is returned (the kept spectra, results/spectra.py)."""
    start = time.perf_counter()
    if tensor.is_meta:
        return Result(snr=None, reason=META_REASON, status="null", read_seconds=read, **_base(job, method, worker))
    try:
        if compute is not None and device != "cpu":
            out = compute(tensor, method, device)
        elif device == "cpu":
            out = score(tensor, method)
        else:
            with torch.cuda.device(torch.device(device)):
                W = tensor.to(device, non_blocking=True)
                out = score(W, method, device)
                del W
    except oom_types():
        raise
    except Exception as err:  # recorded with its reason; the scan goes on and a resume retries it
        return error_result(job, method, worker, err, time.perf_counter() - start, read)
    if keep is not None and getattr(out, "singular_values", None) is not None:
        keep(job.name, out.singular_values.detach().to("cpu", torch.float64))
    return Result(
        snr=out.snr,
        reason=out.reason,
        status="ok" if out.snr is not None else "null",
        seconds=time.perf_counter() - start,
        read_seconds=read,
        sigma_max=out.sigma_max,
        threshold=out.threshold,
        n_signal=out.n_signal,
        **_base(job, method, worker),
    )
