"""read, Hub side: feed a Hub model's jobs shard by shard while a thread downloads the next shards.

Shards already in the HF cache are scanned first, in place, and never deleted. The others are fetched
one at a time with ``hf_hub_download`` in a background thread, in order, as far ahead as the disk budget
(``--max-disk``) allows: the budget counts every shard this run downloaded that is still on disk plus
the one being fetched. When the next shard does not fit, a shard whose jobs are all journaled is
deleted from the cache (never a pre-cached one; never with ``keep=True``); until one is, the download
waits. A ledger in the output directory lists the shards this scan downloaded, so a resumed run counts
(and may delete) what an interrupted one left. ``jobs()`` yields a shard's jobs (largest first) once its file is there, so the scheduler's lazy
feed blocks on the shard being fetched while the current one is scanned.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from streamscan.checkpoint.hub import HubSource
from streamscan.errors import StreamscanError, UsageError
from streamscan.records import Job

log = logging.getLogger(__name__)

DISK_HEADROOM = 1 << 30  # left free on the cache's filesystem by the default budget


def default_max_disk(cache_dir: Path) -> int:
    """Free space on the HF cache's filesystem, minus max(1 GiB, 5% of the disk)."""
    path = cache_dir
    while not path.exists():
        path = path.parent
    usage = shutil.disk_usage(path)
    return max(0, usage.free - max(DISK_HEADROOM, usage.total // 20))


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


class ShardFeed:
    """Jobs of a Hub model in shard order, with its downloads running one shard ahead (or more)."""

    def __init__(
        self,
        hub: HubSource,
        jobs: Sequence[Job],
        max_disk: int | None = None,
        keep: bool = False,
        ledger: Path | None = None,
    ):
        self.hub = hub
        self.keep = keep
        self.ledger = ledger
        earlier = self._read_ledger()  # shards an interrupted run of this scan downloaded: still ours
        by_shard: dict[str, list[Job]] = {}
        for job in jobs:
            by_shard.setdefault(job.tensor.shard.name, []).append(job)
        names = [f.name for f in hub.files if f.name in by_shard]  # a shard with nothing left to score is skipped
        cached = [n for n in names if hub.present(n)]
        self.order = cached + [n for n in names if n not in cached]
        self.pre_cached = (frozenset(hub.cached) | frozenset(cached)) - earlier
        self.jobs_of = {n: sorted(by_shard[n], key=lambda j: -j.cost) for n in self.order}
        self.remaining = {n: {j.name for j in self.jobs_of[n]} for n in self.order}
        self.shard_of = {j.name: n for n in self.order for j in self.jobs_of[n]}
        self.to_fetch = [n for n in self.order if n not in cached]
        self.sizes = {n: hub.file(n).size for n in self.order}
        need = sum(self.sizes[n] for n in self.to_fetch)
        self.budget = max_disk if max_disk is not None else default_max_disk(hub.cache_dir)
        if self.to_fetch:
            biggest = max(self.to_fetch, key=self.sizes.__getitem__)
            if self.sizes[biggest] > self.budget:
                what = "--max-disk" if max_disk is not None else "free disk space in the HF cache"
                raise UsageError(
                    f"{what} ({_gb(self.budget)}) is smaller than shard {biggest} "
                    f"({_gb(self.sizes[biggest])}); allow at least that much"
                )
            if keep and need > self.budget:
                raise UsageError(
                    f"--keep-shards needs {_gb(need)} of disk for the shards to download, "
                    f"--max-disk allows {_gb(self.budget)}; raise --max-disk or drop --keep-shards"
                )
        self.cond = threading.Condition()
        self.state = {n: "cached" if n in cached else "waiting" for n in self.order}
        # downloaded by this scan (this run, or an interrupted one: the ledger) and still on disk, oldest first
        self.ours: list[str] = [f.name for f in hub.files if f.name in earlier and hub.present(f.name)]
        for n in self.ours:
            self.remaining.setdefault(n, set())
            self.sizes.setdefault(n, hub.file(n).size)
        self.used = sum(self.sizes[n] for n in self.ours)
        self.peak = self.used
        self.earlier = len(self.ours)
        self.error: StreamscanError | None = None
        self.stopped = False
        self.downloaded_bytes = 0
        self.deleted: list[str] = []
        self.download_seconds = 0.0
        self.wait_seconds = 0.0  # the scan waiting for a shard
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._download_all, daemon=True, name="streamscan-download")

    # the download thread ---------------------------------------------------------------------------
    def start(self) -> Iterator[Job]:
        self._thread.start()
        return self.jobs()

    def _download_all(self) -> None:
        for name in self.to_fetch:
            size = self.sizes[name]
            with self.cond:
                while not self.stopped and self.used + size > self.budget:
                    if not self._free_one():
                        self.cond.wait(timeout=1.0)
                if self.stopped:
                    return
                self.used += size
                self.peak = max(self.peak, self.used)
                self.state[name] = "downloading"
                self._write_ledger(name)
            start = time.perf_counter()
            try:
                self.hub.download(name)
            except StreamscanError as err:
                with self.cond:
                    self.used -= size
                    self.state[name] = "failed"
                    self.error = err
                    self.cond.notify_all()
                return
            seconds = time.perf_counter() - start
            log.info("downloaded %s (%s) in %.1f s", name, _gb(size), seconds)
            with self.cond:
                self.download_seconds += seconds
                self.downloaded_bytes += size
                self.state[name] = "ready"
                self.ours.append(name)
                self.cond.notify_all()

    def _free_one(self) -> bool:
        """Delete the oldest scanned shard of ours (lock held). False if none can go yet."""
        if self.keep:
            return False
        for name in self.ours:
            if not self.remaining[name]:
                self.ours.remove(name)
                self.hub.delete(name)
                self.used -= self.sizes[name]
                self.state[name] = "deleted"
                self.deleted.append(name)
                log.info("deleted scanned shard %s from the HF cache to make room", name)
                return True
        return False

    def _read_ledger(self) -> frozenset[str]:
        if self.ledger is None or not self.ledger.exists():
            return frozenset()
        try:
            data = json.loads(self.ledger.read_text())
        except ValueError:
            return frozenset()
        if data.get("repo") != self.hub.repo_id or data.get("commit") != self.hub.commit:
            return frozenset()
        return frozenset(data.get("shards", []))

    def _write_ledger(self, name: str) -> None:
        """Record, before fetching it, that this scan downloads NAME (lock held)."""
        if self.ledger is None:
            return
        shards = sorted(self._read_ledger() | {name})
        tmp = self.ledger.with_suffix(".tmp")
        tmp.write_text(json.dumps({"repo": self.hub.repo_id, "commit": self.hub.commit, "shards": shards}))
        os.replace(tmp, self.ledger)

    # the scan side ---------------------------------------------------------------------------------
    def jobs(self) -> Iterator[Job]:
        """Each shard's jobs once its file is on disk; stops early (see ``check``) if a download failed."""
        for name in self.order:
            start = time.perf_counter()
            with self.cond:
                while self.state[name] in ("waiting", "downloading") and not self.stopped:
                    self.cond.wait()
                if self.state[name] not in ("cached", "ready"):
                    return
            self.wait_seconds += time.perf_counter() - start
            yield from self.jobs_of[name]

    def finished(self, job_name: str) -> None:
        """A job's result is journaled: once a shard has none left, it may be deleted."""
        with self.cond:
            left = self.remaining.get(self.shard_of.get(job_name, ""))
            if left is not None:
                left.discard(job_name)
                if not left:
                    self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def check(self) -> None:
        """Raise the download error that stopped the feed, if any (after the finished work is journaled)."""
        if self.error is not None:
            done = sum(len(self.jobs_of[n]) - len(self.remaining[n]) for n in self.order)
            raise type(self.error)(f"{self.error} ({done} matrices scanned before it are saved; rerun to resume)")

    def summary(self) -> dict:
        return {
            "repo": self.hub.repo_id,
            "revision": self.hub.revision,
            "commit": self.hub.commit,
            "shards_scanned_from_cache": sorted(n for n in self.order if n in self.pre_cached),
            "shards_downloaded": len(self.ours) + len(self.deleted) - self.earlier,
            "downloaded_bytes": self.downloaded_bytes,
            "download_seconds": round(self.download_seconds, 3),
            "waited_for_download_seconds": round(self.wait_seconds, 3),
            "deleted_after_scan": self.deleted,
            "max_disk_bytes": self.budget,
            "peak_disk_bytes": self.peak,
        }
