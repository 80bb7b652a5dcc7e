"""executor: one job's matrix -> its score -> its Result, the one path of file scans and in-memory scans."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from streamscan.checkpoint.reader import Pieces
from streamscan.compute.backends import Device
from streamscan.compute.spectrum import SNR
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
    tensor,
    method: str,
    worker: str,
    device: Device,
    read: float = 0.0,
    keep: Callable[[str, torch.Tensor], None] | None = None,
    path: str = "gram64",
) -> Result:
    """Score JOB's matrix TENSOR (a tensor, a stored FP8/MXFP4 weight or a matrix to read in pieces) on
    DEVICE (backends.Device). CUDA out-of-memory propagates (the caller retries or records it); any other
    failure becomes the job's error Result.

    ``keep(name, singular_values)`` receives the matrix's singular values (float64, descending, CPU) when it
    had a spectrum, before the Result is returned (the kept spectra, results/spectra.py). ``path``: where
    gram64 finds its eigenvalues (compute/solver.py)."""
    start = time.perf_counter()
    if isinstance(tensor, torch.Tensor) and tensor.is_meta:
        return Result(snr=None, reason=META_REASON, status="null", read_seconds=read, **_base(job, method, worker))
    try:
        out = device.score_pieces(tensor) if isinstance(tensor, Pieces) else device.score(tensor, method, path)
    except oom_types():
        raise
    except Exception as err:  # recorded with its reason; the scan goes on and a resume retries it
        return error_result(job, method, worker, err, time.perf_counter() - start, read)
    _keep(keep, job, out)
    return _result(job, out, method, worker, time.perf_counter() - start, read)


def _keep(keep: Callable[[str, torch.Tensor], None] | None, job: Job, out: SNR) -> None:
    if keep is not None and getattr(out, "singular_values", None) is not None:
        keep(job.name, out.singular_values.detach().to("cpu", torch.float64))


def _result(job: Job, out: SNR, method: str, worker: str, seconds: float, read: float) -> Result:
    return Result(
        snr=out.snr,
        reason=out.reason,
        status="ok" if out.snr is not None else "null",
        seconds=seconds,
        read_seconds=read,
        sigma_max=out.sigma_max,
        threshold=out.threshold,
        n_signal=out.n_signal,
        degenerate=out.degenerate,
        **_base(job, method, worker),
    )


def score_batch_jobs(
    jobs: list[Job],
    stack,
    method: str,
    worker: str,
    device: Device,
    reads: list[float],
    keep: Callable[[str, torch.Tensor], None] | None = None,
    path: str = "gram64",
) -> list[Result]:
    """Score same-shape JOBS whose matrices are the [B, m, n] STACK (a tensor, or stored FP8 weights as one
    stack) as one batched job on DEVICE: one Result per member, in order, each with its share of the batch's
    seconds. CUDA out-of-memory propagates (the scheduler splits the batch in halves and retries); any other
    failure is each member's error."""
    start = time.perf_counter()
    try:
        outs = device.score_batch(stack, method, path)
    except oom_types():
        raise
    except Exception as err:
        share = (time.perf_counter() - start) / len(jobs)
        return [error_result(j, method, worker, err, share, r) for j, r in zip(jobs, reads)]
    share = (time.perf_counter() - start) / len(jobs)
    for j, o in zip(jobs, outs):
        _keep(keep, j, o)
    return [_result(j, o, method, worker, share, r) for j, o, r in zip(jobs, outs, reads)]
