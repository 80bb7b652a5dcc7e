"""jobqueue: the jobs waiting for a device, largest cost first (the placement policy sees its two ends)."""

from __future__ import annotations

import bisect

from streamscan.records import Job


class JobQueue:
    """Waiting jobs sorted by descending cost; jobs of equal cost (e.g. same shape) sit next to each other."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []  # largest first
        self._keys: list[float] = []  # -cost of jobs, for bisect
        self.cost = 0.0  # total cost waiting

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, job: Job) -> None:
        i = bisect.bisect_right(self._keys, -job.cost)
        self._keys.insert(i, -job.cost)
        self.jobs.insert(i, job)
        self.cost += job.cost

    def take(self, jobs: list[Job]) -> None:
        """Remove JOBS (one job, or a batch: equal cost, so they sit in one run of the queue) in one pass over
        the stretch of the queue they span, from the first job of their cost."""
        cost = jobs[0].cost
        lo = bisect.bisect_left(self._keys, -cost)
        wanted = {id(j) for j in jobs}
        found, hi = 0, lo
        while found < len(wanted):  # every member is in the run of their cost
            found += id(self.jobs[hi]) in wanted
            hi += 1
        kept = [j for j in self.jobs[lo:hi] if id(j) not in wanted]
        self.jobs[lo:hi] = kept
        self._keys[lo:hi] = [-cost] * len(kept)
        self.cost -= sum(j.cost for j in jobs)

    def same_cost(self, job: Job) -> list[Job]:
        """The waiting jobs of JOB's cost (JOB among them when it waits)."""
        lo = bisect.bisect_left(self._keys, -job.cost)
        hi = bisect.bisect_right(self._keys, -job.cost)
        return self.jobs[lo:hi]

    def ends(self, width: int) -> list[Job]:
        """Up to WIDTH jobs from each end (the largest and the smallest waiting)."""
        return self.jobs[:width] + self.jobs[max(width, len(self.jobs) - width) :]
