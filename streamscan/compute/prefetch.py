"""prefetch: read the jobs at the head of the queue ahead of their dispatch, within the RAM budget.

One thread. It shares the scheduler's condition variable: every field here is read and written with it
held, and the reads themselves run without it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from streamscan.compute.budget import MemoryBudget
from streamscan.compute.jobqueue import JobQueue
from streamscan.compute.staging import Read
from streamscan.records import Job


class Prefetcher:
    """Reads up to ``depth`` jobs ahead, from the head of QUEUE, holding their host bytes in BUDGET.

    ``read(job)`` reads one job (staging.read_job); ``host_bytes(job)`` is what its read holds;
    ``finished()`` says when nothing more will be queued (the thread then ends, as it does once ``stopped``); ``counted(seconds,
    nbytes)`` books a read in the stats; jobs for which ``skip(job)`` holds are left to the worker."""

    def __init__(
        self,
        cond: threading.Condition,
        queue: JobQueue,
        budget: MemoryBudget,
        depth: int,
        read: Callable[[Job], Read],
        host_bytes: Callable[[Job], int],
        finished: Callable[[], bool],
        counted: Callable[[float, int], None],
        skip: Callable[[Job], bool] = lambda job: False,
    ):
        self.cond, self.queue, self.budget, self.depth = cond, queue, budget, depth
        self.read, self.host_bytes, self.finished, self.counted = read, host_bytes, finished, counted
        self.skip = skip
        self.ready: dict[str, Read] = {}
        self.reading: set[str] = set()
        self.claimed = 0  # reads used as prefetched
        self.stopped = False

    def has(self, job: Job) -> bool:
        """Whether JOB is read or being read (its host bytes are held already)."""
        return job.name in self.ready or job.name in self.reading

    def run(self) -> None:
        while True:
            with self.cond:
                while True:
                    if self.stopped:
                        return
                    if (job := self._next()) is not None:
                        break
                    if self.finished():
                        return
                    self.cond.wait()
                self.reading.add(job.name)
                self.budget.hold(job.name, self.host_bytes(job))
            got = self.read(job)
            with self.cond:
                self.reading.discard(job.name)
                self.counted(got[1], job.nbytes if got[2] is None else 0)
                self.ready[job.name] = got
                self.cond.notify_all()

    def _next(self) -> Job | None:
        if len(self.ready) + len(self.reading) >= self.depth:
            return None
        for job in self.queue.jobs[: self.depth + len(self.ready) + len(self.reading)]:
            if self.has(job) or self.skip(job):
                continue
            return job if self.budget.fits(self.host_bytes(job)) else None  # the head waits: no reading around it
        return None

    def claim(self, job: Job) -> Read | None:
        """With ``cond`` held: the job's prefetched read (waiting while it is being read), or None."""
        while job.name in self.reading:
            self.cond.wait()
        got = self.ready.pop(job.name, None)
        if got is not None:
            self.claimed += 1
        return got

    def forget(self, job: Job) -> None:
        """With ``cond`` held: JOB finished (a read of it not claimed is dropped)."""
        self.ready.pop(job.name, None)
