"""reading: how a job's matrix is read for a device -- prefetched, or read now by the worker, alone or with its
batch -- and the read statistics. Shares the scheduler's condition variable for the prefetcher's state and
the stats; the reads themselves run without it.

A matrix over ``pieces_above`` bytes as stored is read in ~PIECE_BYTES pieces by the worker while its Gram
accumulates (reader.Pieces); in a pool with a GPU, whole tensors go straight into staging buffers (staging.py).
"""

from __future__ import annotations

import threading
import time

from streamscan.checkpoint.reader import Pieces, can_read_in_pieces, read_many, stageable
from streamscan.compute.jobqueue import JobQueue
from streamscan.compute.placement import BATCH_MAX_K
from streamscan.compute.spectrum import chunk_step
from streamscan.compute.staging import STAGE_BYTES, Read, StagingPool, read_job
from streamscan.records import Job

PIECES_ABOVE = 1 << 30  # bytes as stored above which a matrix is read in pieces (or half the RAM budget)
PIECE_BYTES = 64 << 20  # about this many bytes as stored per piece


def batch_key(job: Job) -> tuple:
    """Jobs with equal keys stack into one batch: the matrix's shape, its dtype as read, its quantization."""
    q = job.tensor.quant
    return (job.shape, job.tensor.dtype, job.tensor.element_size, None if q is None else (q.scheme, q.block))


class Reader:
    """Reads for one run_jobs call. ``prefetcher`` (prefetch.Prefetcher) is set once it exists."""

    def __init__(
        self,
        cond: threading.Condition,
        stats,
        method: str,
        staging: StagingPool | None,
        max_memory: int,
        pieces_above: int | None,
        batching: bool,
        queue: JobQueue,
    ):
        self.cond, self.stats, self.method, self.staging = cond, stats, method, staging
        self.pieces_above = pieces_above or min(PIECES_ABOVE, max(max_memory // 2, 4 * PIECE_BYTES))
        self.batching, self.queue = batching, queue
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

    def with_its_batch(self, job: Job) -> bool:
        """Whether JOB will likely go to a GPU in a batch read straight into one staging buffer by the worker
        (then prefetching it alone would only add a copy into that buffer)."""
        if self.staging is None or not self.batching or self.pieced(job) or job.nbytes * 2 > STAGE_BYTES:
            return False
        if min(job.shape) > BATCH_MAX_K["cuda"]:
            return False
        key = batch_key(job)
        return any(o is not job and batch_key(o) == key for o in self.queue.same_cost(job))

    def read(self, job: Job) -> Read:
        return read_job(job, self.staging, self.stored, self.pieces(job) if self.pieced(job) else None)

    def count(self, seconds: float, nbytes: int) -> None:
        """With ``cond`` held: a read's seconds and the bytes it delivered in the stats."""
        self.stats.read_seconds += seconds
        self.stats.read_bytes += nbytes

    def _claim(self, job: Job) -> Read | None:
        got = self.prefetcher.claim(job) if self.prefetcher is not None else None
        if got is not None:
            self.stats.prefetched += 1
        return got

    def give(self, tensor) -> None:
        """A staging buffer back to the pool (anything else is left to the garbage collector)."""
        if self.staging is not None:
            self.staging.give(tensor)

    def tensor_for(self, job: Job) -> Read:
        """The job's tensor: prefetched, being prefetched (wait), or read now."""
        with self.cond:
            got = self._claim(job)
            if got is not None:
                self.cond.notify_all()
                return got
        got = self.read(job)
        with self.cond:
            self.count(got[1], job.nbytes if got[2] is None else 0)
        return got

    def read_batch(self, jobs: list[Job]) -> tuple[object | None, list]:
        """A batch's matrices: (the stack read straight into a staging buffer, each member's share of the
        read seconds), or (None, ``tensor_for`` of each member) where that cannot be done: the members not
        prefetched are then read together (reader.read_many: one open per shard, one allocation), or one
        by one where that fails (each then gets its own error)."""
        with self.cond:
            got = {j.name: r for j in jobs if (r := self._claim(j)) is not None}
            self.cond.notify_all()
        rest = [j for j in jobs if j.name not in got]
        whole = all(j.part is None and not self.pieced(j) for j in rest)
        if self.staging is not None and whole and all(r[2] is None for r in got.values()):
            if all(stageable(j.tensor, self.stored) for j in jobs):
                start = time.perf_counter()
                try:
                    stack = self.staging.read(jobs, {n: r[0] for n, r in got.items()})
                except Exception:  # read one by one below: the member that fails gets the error
                    stack = None
                if stack is not None:
                    seconds = time.perf_counter() - start
                    with self.cond:
                        self.count(seconds, sum(j.nbytes for j in rest))
                    share = seconds / len(jobs)
                    return stack, [got[j.name][1] if j.name in got else share for j in jobs]
                got = {}  # the prefetched members were copied into the buffer and given back: read again
                rest = list(jobs)
        if len(rest) > 1 and whole:
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
