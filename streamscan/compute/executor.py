"""executor: one job's matrix -> its score -> its Result, the one path of file scans and in-memory scans."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from streamscan.checkpoint.reader import Pieces, Stored
from streamscan.compute.spectrum import SNR, score, score_batch, score_pieces
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


def materialize(tensor, device: str) -> torch.Tensor:
    """The matrix on DEVICE: a stored FP8/MXFP4 weight (reader.Stored) is dequantized there."""
    if isinstance(tensor, Stored):
        return tensor.dequantize(device)
    return tensor.to(device, non_blocking=True)


def score_job(
    job: Job,
    tensor: torch.Tensor,
    method: str,
    worker: str,
    device: str,
    read: float = 0.0,
    compute=None,
    keep: Callable[[str, torch.Tensor], None] | None = None,
    path: str = "gram64",
) -> Result:
    """Score JOB's matrix TENSOR on DEVICE (moved there if it is elsewhere). CUDA out-of-memory propagates
    (the caller retries or records it); any other failure becomes the job's error Result.

    ``keep(name, singular_values)`` receives the matrix's singular values (float64, descending, CPU) when it
    had a spectrum, before the Result is returned (the kept spectra, results/spectra.py). ``path``: where
    gram64 finds its eigenvalues (compute/solver.py). A simulated device's ``compute`` with ``raw = True``
    receives the tensor as read (a stored FP8/MXFP4 weight undequantized, as a GPU would)."""
    start = time.perf_counter()
    if isinstance(tensor, Pieces):
        return _score_pieces(job, tensor, method, worker, device, read, compute, keep)
    if isinstance(tensor, torch.Tensor) and tensor.is_meta:
        return Result(snr=None, reason=META_REASON, status="null", read_seconds=read, **_base(job, method, worker))
    try:
        if compute is not None and device != "cpu":
            out = compute(tensor if getattr(compute, "raw", False) else materialize(tensor, "cpu"), method, device)
        elif device == "cpu":
            out = score(materialize(tensor, "cpu"), method, path=path)
        else:
            with torch.cuda.device(torch.device(device)):
                W = materialize(tensor, device)
                out = score(W, method, device, path)
                del W
    except oom_types():
        raise
    except Exception as err:  # recorded with its reason; the scan goes on and a resume retries it
        return error_result(job, method, worker, err, time.perf_counter() - start, read)
    _keep(keep, job, out)
    return _result(job, out, method, worker, time.perf_counter() - start, read)


def _score_pieces(job: Job, pieces: Pieces, method: str, worker: str, device: str, read: float, compute, keep):
    """A huge matrix whose Gram accumulates from pieces read now (gram64 only; see reader.Pieces)."""
    start = time.perf_counter()
    try:
        if device == "cpu" or compute is not None:  # a simulated device scores on the CPU
            out = score_pieces(pieces, pieces.shape)
        else:
            with torch.cuda.device(torch.device(device)):
                out = score_pieces(pieces, pieces.shape, device)
    except oom_types():
        raise
    except Exception as err:
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
        **_base(job, method, worker),
    )


def score_batch_jobs(
    jobs: list[Job],
    stack: torch.Tensor,
    method: str,
    worker: str,
    device: str,
    reads: list[float],
    compute=None,
    keep: Callable[[str, torch.Tensor], None] | None = None,
    path: str = "gram64",
) -> list[Result]:
    """Score same-shape JOBS whose matrices are the [B, m, n] STACK as one batched job on DEVICE: one
    Result per member, in order, each with its share of the batch's seconds. CUDA out-of-memory propagates
    (the scheduler splits the batch in halves and retries); any other failure is each member's error."""
    start = time.perf_counter()
    try:
        if compute is not None and device != "cpu":  # a simulated device (tests): batched if it says so
            outs = compute(stack, method, device) if getattr(compute, "batched", False) else None
            outs = outs or [compute(W, method, device) for W in stack]
        elif device == "cpu":
            outs = score_batch(stack, method, path=path)
        else:
            with torch.cuda.device(torch.device(device)):
                Ws = stack.to(device, non_blocking=True)
                outs = score_batch(Ws, method, device, path)
                del Ws
    except oom_types():
        raise
    except Exception as err:
        share = (time.perf_counter() - start) / len(jobs)
        return [error_result(j, method, worker, err, share, r) for j, r in zip(jobs, reads)]
    share = (time.perf_counter() - start) / len(jobs)
    for j, o in zip(jobs, outs):
        _keep(keep, j, o)
    return [_result(j, o, method, worker, share, r) for j, o, r in zip(jobs, outs, reads)]
