"""reading: how a job's matrix is read for a device -- prefetched, streamed to a GPU, or read now by the worker,
alone or with its batch -- and the read statistics. Shares the scheduler's condition variable for the
prefetcher's state and the stats; the reads themselves run without it.

A matrix over ``pieces_above`` bytes as stored is read in ~PIECE_BYTES pieces by the worker while its Gram
accumulates (reader.Pieces); in a pool with a GPU, the GPU workers stream whole tensors to their devices
(staging.py).
"""

from __future__ import annotations

import logging
import threading
import time

from streamscan.checkpoint.reader import Pieces, can_read_in_pieces, read_many
from streamscan.compute.jobqueue import JobQueue
from streamscan.compute.spectrum import chunk_step
from streamscan.compute.staging import Read, read_job, stream, streamable
from streamscan.errors import CheckpointError
from streamscan.records import Job

log = logging.getLogger(__name__)

PIECES_ABOVE = 1 << 30  # bytes as stored above which a matrix is read in pieces (or half the RAM budget)
PIECE_BYTES = 64 << 20  # about this many bytes as stored per piece


def batch_key(job: Job) -> tuple:
    """Jobs with equal keys stack into one batch: the matrix's shape, its dtype as read, its quantization."""
    q = job.tensor.quant
    return (job.shape, job.tensor.dtype, job.tensor.element_size, None if q is None else (q.scheme, q.block))


class Reader:
    """Reads for one run_jobs call. ``prefetcher`` (prefetch.Prefetcher) is set once it exists. STREAMING: the
    pool has a GPU, whose workers stream whole tensors to their device (staging.stream)."""

    def __init__(
        self,
        cond: threading.Condition,
        stats,
        method: str,
        streaming: bool,
        max_memory: int,
        pieces_above: int | None,
        queue: JobQueue,
    ):
        self.cond, self.stats, self.method, self.streaming = cond, stats, method, streaming
        self.pieces_above = pieces_above or min(PIECES_ABOVE, max(max_memory // 2, 4 * PIECE_BYTES))
        self.queue = queue
        self.stored = True  # whole FP8/MXFP4 weights read as stored, dequantized by the worker on its device
        self.prefetcher = None

    def pieced(self, job: Job) -> bool:
        """Whether JOB's matrix is read in pieces (see the module's docstring)."""
        return (
            self.method == "gram64"
            and job.part is None
            and job.nbytes > self.pieces_above
            and can_read_in_pieces(job.tensor)
        )

    def pieces(self, job: Job) -> Pieces:
        return Pieces(job.tensor, chunk_step(job.shape), PIECE_BYTES)

    def host_bytes(self, job: Job) -> int:
        """Bytes of host memory the job's read holds: its tensor, or one piece of it."""
        return self.pieces(job).nbytes if self.pieced(job) else job.nbytes

    def streamed(self, job: Job) -> bool:
        """Whether a GPU worker would stream JOB to its device (then reading it ahead into host memory would
        only add a copy: the prefetcher leaves it)."""
        return self.streaming and not self.pieced(job) and streamable(job, self.stored)

    def read(self, job: Job) -> Read:
        return read_job(job, self.stored, self.pieces(job) if self.pieced(job) else None)

    def count(self, seconds: float, nbytes: int) -> None:
        """With ``cond`` held: a read's seconds and the bytes it delivered in the stats."""
        self.stats.read_seconds += seconds
        self.stats.read_bytes += nbytes

    def _claim(self, job: Job) -> Read | None:
        got = self.prefetcher.claim(job) if self.prefetcher is not None else None
        if got is not None:
            self.stats.prefetched += 1
        return got

    def _stream(self, jobs: list[Job], device) -> Read:
        """(the matrices of JOBS streamed to DEVICE, seconds, None), or (None, seconds, the error) when a read
        failed. Out of device memory propagates (the worker hands it to the pool, as from the computation)."""
        start = time.perf_counter()
        try:
            out = stream(jobs, device)
        except CheckpointError as err:
            return None, time.perf_counter() - start, err
        seconds = time.perf_counter() - start
        with self.cond:
            self.count(seconds, sum(j.nbytes for j in jobs))
        return out, seconds, None

    def tensor_for(self, job: Job, device=None) -> Read:
        """The job's tensor: prefetched, being prefetched (wait), streamed to DEVICE (a GPU), or read now."""
        with self.cond:
            got = self._claim(job)
            if got is not None:
                self.cond.notify_all()
                return got
        if device is not None and device.kind != "cpu" and self.streamed(job):
            return self._stream([job], device)  # a failed read is the job's error (no second read to the host)
        got = self.read(job)
        with self.cond:
            self.count(got[1], job.nbytes if got[2] is None else 0)
        return got

    def read_batch(self, jobs: list[Job], device=None) -> tuple[object | None, list]:
        """A batch's matrices: (the stack streamed to DEVICE (a GPU), each member's share of the read
        seconds), or (None, ``tensor_for`` of each member) where that cannot be done: the members not
        prefetched are then read together (reader.read_many: one open per shard, one allocation), or one
        by one where that fails (each then gets its own error)."""
        with self.cond:
            got = {j.name: r for j in jobs if (r := self._claim(j)) is not None}
            self.cond.notify_all()
        if device is not None and device.kind != "cpu" and not got and all(self.streamed(j) for j in jobs):
            stack, seconds, err = self._stream(jobs, device)
            if stack is not None:
                return stack, [seconds / len(jobs)] * len(jobs)
            log.debug("streaming %d matrices to %s failed (%s); reading them to the host", len(jobs), device.name, err)
        rest = [j for j in jobs if j.name not in got]
        if len(rest) > 1 and all(j.part is None and not self.pieced(j) for j in rest):
            start = time.perf_counter()
            try:
                tensors = read_many([j.tensor for j in rest], self.stored)
            except Exception:  # read one by one below: the member that fails gets the error
                tensors = None
            if tensors is not None:
                share = (time.perf_counter() - start) / len(rest)
                with self.cond:
                    self.count(share * len(rest), sum(j.nbytes for j in rest))
                got.update((j.name, (t, share, None)) for j, t in zip(rest, tensors))
                rest = []
        for job in rest:
            got[job.name] = self.tensor_for(job)
        return None, [got[j.name] for j in jobs]
