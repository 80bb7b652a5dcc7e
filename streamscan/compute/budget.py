"""budget: the bytes of RAM a scan holds at a time (tensors read ahead and CPU work), and its peak."""

from __future__ import annotations


class MemoryBudget:
    """Holds are named (a job's name); ``hold`` adds to a name's share, ``release`` frees the name's whole
    share. A hold is never refused here: callers ask ``fits`` first (a job larger than the whole budget
    still runs, alone, when nothing else is held)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0
        self.peak = 0
        self._holds: dict[str, int] = {}

    def hold(self, key: str, nbytes: int) -> None:
        self._holds[key] = self._holds.get(key, 0) + nbytes
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def release(self, key: str) -> None:
        self.held -= self._holds.pop(key, 0)

    @property
    def free(self) -> int:
        return self.limit - self.held

    def fits(self, nbytes: int) -> bool:
        """Whether NBYTES more fit now (anything fits when nothing is held)."""
        return self.held + nbytes <= self.limit or self.held == 0
