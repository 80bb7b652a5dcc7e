"""schedule: run jobs on a pool of CPU workers, largest first, reading overlapped with compute.

Each worker is a thread that runs torch with one intra-op thread: one job per core beats one job on
all cores (the eigenvalue phase barely scales with threads, and a multi-threaded torch op slows down
~10x as soon as another process takes a core), and results do not depend on the thread count.
A job reads its tensor itself, so the next tensor is read while the other workers compute; at most
``workers`` tensors are in memory at once.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import psutil
import torch

from .errors import UsageError
from .plan import Job, Result
from .reader import read_tensor
from .spectrum import score

log = logging.getLogger(__name__)


def limit_heap_growth() -> None:
    """Serve large buffers (tensors, Gram chunks) with their own mmap so that freeing them returns the memory.

    glibc otherwise raises its mmap threshold after the first large free and keeps later buffers in
    per-thread heaps, where fragmentation holds ~70 MB more resident per scan. No-op off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (fixed, not dynamic)
    except (OSError, AttributeError):
        pass


def default_workers() -> int:
    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def parse_devices(devices: str) -> list[str]:
    """'cpu' or 'auto'. GPU pools are not scheduled yet: 'auto' runs on CPU and logs it if CUDA is present."""
    spec = (devices or "cpu").strip().lower()
    if spec == "auto" and torch.cuda.is_available():
        log.warning("--devices auto: GPU scheduling is not implemented yet; scanning on CPU")
    if spec in ("cpu", "auto"):
        return ["cpu"]
    raise UsageError(f"--devices {devices}: only 'cpu' and 'auto' are supported in this version; use --devices cpu")


def run_job(job: Job, method: str, worker: str) -> Result:
    """Read and score one job; any failure becomes an error Result, never an exception."""
    start = time.perf_counter()
    base = dict(name=job.name, type=job.type, shape=job.tensor.shape, dtype=job.tensor.dtype, role=job.role,
                method=method, worker=worker)
    try:
        tensor = read_tensor(job.tensor)
        out = score(tensor, method)
        del tensor
    except Exception as err:  # recorded with its reason; the scan goes on and a resume retries it
        return Result(snr=None, reason=f"{type(err).__name__}: {err}", status="error",
                      seconds=time.perf_counter() - start, **base)
    return Result(snr=out.snr, reason=out.reason, status="ok" if out.snr is not None else "null",
                  seconds=time.perf_counter() - start, sigma_max=out.sigma_max, threshold=out.threshold,
                  n_signal=out.n_signal, **base)


def run_jobs(jobs: Iterable[Job], method: str, workers: int | None = None) -> Iterator[Result]:
    """Yield a Result per job as each finishes (any order). Closing the iterator cancels queued jobs."""
    workers = workers or default_workers()
    limit_heap_growth()
    before = torch.get_num_threads()
    names = iter(range(workers))
    local = threading.local()

    def init() -> None:
        torch.set_num_threads(1)
        local.name = f"cpu{next(names)}"

    def task(job: Job) -> Result:
        return run_job(job, method, local.name)

    pending: set[Future] = set()
    queue = iter(jobs)
    pool = ThreadPoolExecutor(max_workers=workers, initializer=init, thread_name_prefix="streamscan")
    try:
        for job in queue:
            pending.add(pool.submit(task, job))
            if len(pending) >= workers:
                break
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                nxt = next(queue, None)
                if nxt is not None:
                    pending.add(pool.submit(task, nxt))
                yield fut.result()
    finally:
        for fut in pending:
            fut.cancel()
        pool.shutdown(wait=False, cancel_futures=True)  # an interrupt must not wait for a long SVD
        torch.set_num_threads(before)
