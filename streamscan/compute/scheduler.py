"""schedule: run jobs on a pool of devices (GPUs and CPU workers), reading ahead within a RAM budget.

One thread per GPU and one per CPU worker. The dispatcher (the generator :func:`run_jobs`) asks the pure
placement policy (placement.py) which waiting job goes to which idle device, given each device's free
memory right now. A prefetch thread reads the next tensors while devices compute, holding at most
``max_memory`` bytes of tensors and CPU work at a time (a job bigger than the whole budget runs alone).
A huge 2-D safetensors matrix (over 1 GiB as stored or half the budget, at least 256 MiB;
STREAMSCAN_PIECES_ABOVE bytes if set) is never read whole: with gram64 its Gram accumulates from ~64 MiB pieces read in the worker
(reader.Pieces), and its memory estimate and prefetch hold count one piece instead of the tensor.
A CUDA out-of-memory error sends the job back to the queue, never to that device again; when no GPU can
hold it, it runs on the CPU. Results are yielded as jobs finish, in any order.

CPU workers run torch with one thread per job (placement.cpu_threads: a fixed rule, never the worker count
or the load, so outputs are byte-identical whatever --cpu-workers): one job per core beats one job on all
cores, and a multi-threaded torch op slows down ~10x as soon as another process takes a core.
"""

from __future__ import annotations

import bisect
import ctypes
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from streamscan.checkpoint.reader import Pieces, Stored, can_read_in_pieces, read_many, read_stored, read_tensor
from streamscan.compute import solver
from streamscan.compute.devices import default_max_memory, default_workers, gpu_memory, parse_devices  # noqa: F401 (re-exported)
from streamscan.compute.executor import error_result, oom_types, score_batch_jobs, score_job
from streamscan.compute.placement import (
    PRIOR_SPEED,
    Assignment,
    DeviceState,
    Task,
    assign,
    batch_size,
    cpu_threads,
    margin,
)
from streamscan.compute.spectrum import DEFAULT_METHOD, SHARED_BYTES, batch_member_bytes, chunk_step, memory_bytes
from streamscan.compute.staging import StagingPool
from streamscan.records import Job, Result

log = logging.getLogger(__name__)

WINDOW = 256  # jobs from each end of the queue shown to the policy per decision
PIECES_ABOVE = 1 << 30  # bytes as stored above which a matrix is read in pieces (or half the RAM budget)
PIECE_BYTES = 64 << 20  # about this many bytes as stored per piece
STALL_SECONDS = 120.0  # how long the head job waits for GPU memory other processes hold before going to CPU


def limit_heap_growth() -> None:
    """Serve large buffers (tensors, Gram chunks) with their own mmap so that freeing them returns the memory.

    glibc otherwise raises its mmap threshold after the first large free and keeps later buffers in
    per-thread heaps, where fragmentation holds ~70 MB more resident per scan. No-op off glibc.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (fixed, not dynamic)
    except (OSError, AttributeError):
        pass


@dataclass
class DeviceStats:
    """What one device did: jobs, busy seconds (computing), out-of-memory retries, worker slots."""

    slots: int = 0
    jobs: int = 0
    busy: float = 0.0
    oom: int = 0


@dataclass
class PoolStats:
    """Live figures of a run (read by progress displays; written by the scheduler)."""

    devices: dict[str, DeviceStats] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    wall: float = 0.0
    read_seconds: float = 0.0
    read_bytes: int = 0
    prefetched: int = 0
    peak_held: int = 0
    max_memory: int = 0
    # per device: measured matmul rates (CUDA) and the solver paths that ran (compute/solver.py)
    solver: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> dict:
        wall = self.wall or (time.perf_counter() - self.started)
        busy = sum(d.busy for d in self.devices.values())
        slots = sum(d.slots for d in self.devices.values()) or 1
        return {
            "wall_seconds": round(wall, 3),
            "overlap": round(busy / max(wall * slots, 1e-9), 3),
            "read_seconds": round(self.read_seconds, 3),
            "prefetched": self.prefetched,
            "peak_held_mb": round(self.peak_held / 2**20, 1),
            "max_memory_mb": round(self.max_memory / 2**20, 1),
            "devices": {
                n: {
                    "slots": d.slots,
                    "jobs": d.jobs,
                    "busy_seconds": round(d.busy, 3),
                    "utilisation": round(d.busy / max(wall * max(d.slots, 1), 1e-9), 3),
                    "oom_retries": d.oom,
                }
                for n, d in self.devices.items()
            },
            "solver": {n: self._solver_entry(e) for n, e in self.solver.items()},
        }

    @staticmethod
    def _solver_entry(entry: dict) -> dict:
        out = {k: round(v, 3) for k, v in entry.items() if k in ("fp64_tflops", "fp32_tflops")}
        out["path"] = ", ".join(sorted(entry.get("paths", ())))
        return out


class _Worker(threading.Thread):
    def __init__(self, pool: _Pool, name: str, device: str):
        super().__init__(name=f"streamscan-{name}", daemon=True)
        self.pool, self.worker, self.device = pool, name, device
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.rates: solver.Rates | None = None
        self.probed = False

    def path_for(self, shape: tuple[int, int], batch: int) -> str:
        """The solver path of a [batch, *shape] job here (solver.choose), recorded in the pool's stats."""
        pool = self.pool
        simulated = self.device != "cpu" and pool.compute is not None
        kind = "cpu" if self.device == "cpu" else "cuda"
        if kind == "cuda" and not simulated and not self.probed:
            self.probed = True
            try:
                self.rates = solver.probe(self.device)
            except Exception as err:  # a failed probe must not fail the scan: the defaults apply
                log.info("%s: matmul rate probe failed (%s); default solver path", self.device, err)
        path = solver.choose(shape, batch, self.rates, kind, pool.solver_timings, solver.forced_path())
        shown = "simulated" if simulated else (path if pool.method == "gram64" else pool.method)
        with pool.cond:
            entry = pool.stats.solver.setdefault(self.device, {"paths": set()})
            if self.rates is not None:
                entry.update(fp64_tflops=self.rates.fp64_tflops, fp32_tflops=self.rates.fp32_tflops)
            entry["paths"].add(shown)
        return path

    def run(self) -> None:
        if self.device != "cpu" and self.pool.compute is None:
            torch.cuda.set_device(torch.device(self.device))
        while (item := self.inbox.get()) is not None:
            jobs, note, threads = item
            if self.device == "cpu":
                torch.set_num_threads(threads)
            try:
                outcome = self._run(jobs[0]) if len(jobs) == 1 else self._run_batch(jobs)
            except Exception as err:  # a bug must not kill the worker (the scan would wait forever)
                outcome = [error_result(j, self.pool.method, self.worker, err, 0.0) for j in jobs]
            self.pool.finish(self, jobs, note, outcome)

    def _run_batch(self, jobs: list[Job]):
        """Same-shape jobs as one stacked job: a list of Results, or the OOM (the pool splits the batch)."""
        pin = self.device != "cpu" and self.pool.compute is None
        read = self.pool.tensors_for(jobs, pin=pin)
        out: dict[str, Result] = {
            j.name: error_result(j, self.pool.method, self.worker, err, 0.0, sec)
            for j, (_, sec, err) in zip(jobs, read)
            if err is not None
        }
        good = [(j, t, sec) for j, (t, sec, err) in zip(jobs, read) if err is None]
        del read
        if good:
            tensors = [t for _, t, _ in good]
            stored = any(isinstance(t, Stored) for t in tensors)
            staged = not stored and self.device != "cpu"  # pinned buffers help only a copy to a GPU
            if staged:
                stack = self.pool.staging.stack(tensors)
            elif not stored:
                stack = torch.stack(tensors)
            elif getattr(self.pool.compute, "raw", False):  # a simulated device that takes them as read
                stack = list(tensors)
            else:  # stored FP8/MXFP4: dequantized on the device (the CPU for simulated ones) as one stack
                where = self.device if self.pool.compute is None else "cpu"
                try:
                    stack = Stored.dequantize_stack(tensors, where)
                except oom_types() as oom:
                    return oom
                except Exception:  # a member that cannot be dequantized (its scales): each on its own, for its error
                    for j, t, sec in good:
                        single = self._run(j, t, sec)
                        if not isinstance(single, Result):
                            return single  # out of memory
                        out[j.name] = single
                    return [out[j.name] for j in jobs]
            del tensors
            members = [j for j, _, _ in good]
            reads = [sec for _, _, sec in good]
            del good
            path = self.path_for(members[0].shape, len(members))
            try:
                results = score_batch_jobs(
                    members,
                    stack,
                    self.pool.method,
                    self.worker,
                    self.device,
                    reads,
                    self.pool.compute,
                    self.pool.keep,
                    path,
                )
            except oom_types() as oom:
                return oom
            finally:
                if staged:
                    self.pool.staging.give(stack)
                del stack
            out.update((r.name, r) for r in results)
        return [out[j.name] for j in jobs]

    def _run(self, job: Job, tensor=None, read: float = 0.0):
        """One job (its TENSOR read already, or read now): its Result, or the OOM."""
        err = None
        if tensor is None:
            tensor, read, err = self.pool.tensor_for(job, pin=self.device != "cpu" and self.pool.compute is None)
        if err is not None:
            return error_result(job, self.pool.method, self.worker, err, 0.0, read)
        path = self.path_for(job.shape, 1)
        try:
            return score_job(
                job, tensor, self.pool.method, self.worker, self.device, read, self.pool.compute, self.pool.keep, path
            )
        except oom_types() as oom:
            return oom
        finally:
            del tensor


class _Pool:
    """The shared state of one run_jobs call. Every field is guarded by ``cond``."""

    def __init__(
        self,
        devices: list[str],
        method: str,
        cpu_workers: int,
        max_memory: int,
        prefetch: int,
        memory_probe,
        compute,
        stats: PoolStats,
        batch: bool = True,
    ):
        self.method, self.cond, self.stats, self.compute = method, threading.Condition(), stats, compute
        self.keep = None  # score_job's keep: where singular values go (run_jobs' keep)
        self.solver_timings = _solver_timings()
        self.batching = batch
        self.batch_cap: dict[tuple, int] = {}  # (device, batch key) -> most members, halved at each OOM
        self.staging = StagingPool(pinned=None if compute is None else False)
        self.stored = True  # whole FP8/MXFP4 weights read as stored, dequantized by the worker on its device
        self.cpu_workers = cpu_workers
        self.memory_probe = memory_probe or gpu_memory
        self.max_memory, self.prefetch_depth = max_memory, prefetch
        self.pending: list[Job] = []  # largest first
        self.keys: list[float] = []  # -cost of pending, for bisect
        self.queued_cost = 0.0
        self.excluded: dict[str, set[str]] = {}
        self.gpu_active = time.perf_counter()  # when a job of ours last ran or started on a GPU
        self.ready: dict[str, tuple[torch.Tensor | None, float, BaseException | None]] = {}
        self.reading: set[str] = set()
        self.held = 0  # bytes of RAM held: read tensors and CPU work
        self.holds: dict[str, int] = {}
        self.need_cache: dict[str, tuple[int, int]] = {}
        env = os.environ.get("STREAMSCAN_PIECES_ABOVE")
        self.pieces_above = int(env) if env else min(PIECES_ABOVE, max(max_memory // 2, 4 * PIECE_BYTES))
        self.outbox: list[tuple[_Worker, list[Job], str | None, object]] = []
        self.feeding = True
        self.stopped = False
        self.speed = dict(PRIOR_SPEED)
        self.timed: set[str] = set()  # device kinds whose speed has been measured (replacing the prior)
        self.workers: dict[str, list[_Worker]] = {}
        self.idle: dict[str, list[_Worker]] = {}
        self.running: dict[str, int] = {}
        self.chosen = list(devices)  # a fallback CPU worker (not chosen) only takes jobs no GPU can hold
        for dev in devices:
            count = cpu_workers if dev == "cpu" else 1
            self._add_device(dev, count)

    def _add_device(self, dev: str, count: int) -> None:
        names = [f"cpu{i}" for i in range(count)] if dev == "cpu" else [dev]
        self.workers[dev] = [_Worker(self, n, dev) for n in names]
        self.idle[dev] = list(self.workers[dev])
        self.running[dev] = 0
        self.stats.devices[dev] = DeviceStats(slots=count)
        for w in self.workers[dev]:
            w.start()

    # queue -----------------------------------------------------------------------------------------
    def add(self, job: Job) -> None:
        i = bisect.bisect_right(self.keys, -job.cost)
        self.keys.insert(i, -job.cost)
        self.pending.insert(i, job)
        self.queued_cost += job.cost

    def take(self, jobs: list[Job]) -> None:
        """Remove JOBS (one job, or a batch: equal cost, so they sit in one run of the queue) in one pass over
        the stretch of the queue they span, from the first job of their cost."""
        cost = jobs[0].cost
        lo = bisect.bisect_left(self.keys, -cost)
        wanted = {id(j) for j in jobs}
        found, hi = 0, lo
        while found < len(wanted):  # every member is in the run of their cost
            found += id(self.pending[hi]) in wanted
            hi += 1
        kept = [j for j in self.pending[lo:hi] if id(j) not in wanted]
        self.pending[lo:hi] = kept
        self.keys[lo:hi] = [-cost] * len(kept)
        for j in jobs:
            self.queued_cost -= j.cost

    def feed(self, jobs: Iterable[Job], lookahead: int) -> None:
        """Pull jobs from a lazy iterable (e.g. shards still downloading) while the queue is short."""
        try:
            for job in jobs:
                with self.cond:
                    while len(self.pending) >= lookahead and not self.stopped:
                        self.cond.wait()
                    if self.stopped:
                        return
                    self.add(job)
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.feeding = False
                self.cond.notify_all()

    # memory ----------------------------------------------------------------------------------------
    def _hold(self, key: str, nbytes: int) -> None:
        self.holds[key] = self.holds.get(key, 0) + nbytes
        self.held += nbytes
        self.stats.peak_held = max(self.stats.peak_held, self.held)

    def _release(self, key: str) -> None:
        self.held -= self.holds.pop(key, 0)
        self.cond.notify_all()

    def _cpu_need(self, job: Job) -> int:
        need = self._needs(job)[1]
        return need - self._host_bytes(job) if job.name in self.ready or job.name in self.reading else need

    def _pieced(self, job: Job) -> bool:
        """Whether JOB's matrix is read in pieces (see the module's docstring)."""
        return (
            self.method == "gram64"
            and job.part is None
            and job.nbytes > self.pieces_above
            and can_read_in_pieces(job.tensor)
        )

    def _host_bytes(self, job: Job) -> int:
        """Bytes of host memory the job's read holds: its tensor, or one piece of it."""
        return _pieces(job).nbytes if self._pieced(job) else job.nbytes

    # prefetch --------------------------------------------------------------------------------------
    def prefetch(self) -> None:
        """Read the jobs at the head of the queue ahead of their dispatch, within the RAM budget."""
        pin = any(d != "cpu" for d in self.workers) and self.compute is None and torch.cuda.is_available()
        while True:
            with self.cond:
                while True:
                    if self.stopped:
                        return
                    job = self._next_to_read()
                    if job is not None:
                        break
                    if not self.feeding and not self.pending:
                        return
                    self.cond.wait()
                self.reading.add(job.name)
                self._hold(job.name, self._host_bytes(job))
                pieced = self._pieced(job)
            tensor, seconds, err = _read(job, pin, self.stored, pieced)
            with self.cond:
                self.reading.discard(job.name)
                self._count_read(seconds, job.nbytes if err is None else 0)
                self.ready[job.name] = (tensor, seconds, err)
                self.cond.notify_all()

    def _next_to_read(self) -> Job | None:
        if len(self.ready) + len(self.reading) >= self.prefetch_depth:
            return None
        for job in self.pending[: self.prefetch_depth + len(self.ready) + len(self.reading)]:
            if job.name in self.ready or job.name in self.reading:
                continue
            if self.held + self._host_bytes(job) <= self.max_memory or self.held == 0:
                return job
            return None  # the head does not fit yet: wait rather than read around it
        return None

    def _claim(self, job: Job) -> tuple | None:
        """With ``cond`` held: the job's prefetched read (waiting while the prefetcher reads it), or None."""
        while job.name in self.reading:
            self.cond.wait()
        got = self.ready.pop(job.name, None)
        if got is not None:
            self.stats.prefetched += 1
        return got

    def _count_read(self, seconds: float, nbytes: int) -> None:
        """With ``cond`` held: a read's seconds and the bytes it delivered in the stats."""
        self.stats.read_seconds += seconds
        self.stats.read_bytes += nbytes

    def tensor_for(self, job: Job, pin: bool) -> tuple[torch.Tensor | None, float, BaseException | None]:
        """The job's tensor: prefetched, being prefetched (wait), or read now."""
        with self.cond:
            got = self._claim(job)
            if got is not None:
                self.cond.notify_all()
                return got
        tensor, seconds, err = _read(job, pin, self.stored, self._pieced(job))
        with self.cond:
            self._count_read(seconds, job.nbytes if err is None else 0)
        return tensor, seconds, err

    def tensors_for(self, jobs: list[Job], pin: bool) -> list[tuple[torch.Tensor | None, float, BaseException | None]]:
        """``tensor_for`` of each of a batch's JOBS: the prefetched ones as prefetched, the others read together
        (reader.read_many: one open per shard, one allocation), or one by one where that fails (each then gets
        its own error)."""
        got: dict[str, tuple] = {}
        with self.cond:
            for job in jobs:
                if (ready := self._claim(job)) is not None:
                    got[job.name] = ready
            self.cond.notify_all()
        rest = [j for j in jobs if j.name not in got]
        if len(rest) > 1 and all(j.part is None and not self._pieced(j) for j in rest):
            start = time.perf_counter()
            try:  # not pinned one by one: a batch is stacked into a pinned staging buffer (or dequantized) anyway
                tensors = read_many([j.tensor for j in rest], self.stored)
            except Exception:  # read one by one below: the member that fails gets the error
                tensors = None
            if tensors is not None:
                share = (time.perf_counter() - start) / len(rest)
                with self.cond:
                    self._count_read(share * len(rest), sum(j.nbytes for j in rest))
                got.update((j.name, (t, share, None)) for j, t in zip(rest, tensors))
                rest = []
        for job in rest:
            got[job.name] = self.tensor_for(job, pin)
        return [got[j.name] for j in jobs]

    # dispatch --------------------------------------------------------------------------------------
    def states(self) -> list[DeviceState]:
        out = []
        for dev in self.chosen:
            if dev == "cpu":
                out.append(
                    DeviceState(
                        dev,
                        "cpu",
                        self.max_memory - self.held,
                        self.max_memory,
                        len(self.idle[dev]),
                        self.speed["cpu"],
                        self.running[dev],
                    )
                )
            else:
                free, total = self.memory_probe(dev)
                out.append(
                    DeviceState(dev, "cuda", free, total, len(self.idle[dev]), self.speed["cuda"], self.running[dev])
                )
        return out

    def dispatch(self) -> int:
        """Start what the policy assigns now; the number of jobs started.

        The policy first sees a few jobs from each end of the queue (4 per idle slot): at 45k small
        jobs, showing it WINDOW from each end per finished job cost more than the jobs. Only when that
        leaves slots idle (nothing shown fits now) does it see the whole WINDOW."""
        idle = sum(len(v) for v in self.idle.values())
        if not self.pending or not idle:
            return 0
        small = max(8, 4 * idle)
        started = self._dispatch(small)
        if started < idle and len(self.pending) > 2 * small:
            started += self._dispatch(WINDOW)
        return started

    def _needs(self, job: Job) -> tuple[int, int]:
        """(GPU bytes, CPU bytes) the job needs, computed once per job."""
        got = self.need_cache.get(job.name)
        if got is None:
            size = _element_size(job)
            piece = self._host_bytes(job) if self._pieced(job) else None
            got = self.need_cache[job.name] = (
                memory_bytes(job.shape, size, self.method, "cuda", piece),
                memory_bytes(job.shape, size, self.method, "cpu", piece),
            )
        return got

    def _dispatch(self, width: int) -> int:
        if not self.pending or not any(self.idle.values()):
            return 0
        window = self.pending[:width] + self.pending[max(width, len(self.pending) - width) :]
        tasks = []
        for j in window:
            cuda, cpu = self._needs(j)
            if j.name in self.ready or j.name in self.reading:
                cpu -= self._host_bytes(j)
            tasks.append(Task(j.name, j.cost, {"cuda": cuda, "cpu": cpu}, frozenset(self.excluded.get(j.name, ()))))
        by_name = {j.name: j for j in window}
        states = self.states()
        now = time.perf_counter()
        gpus = [d for d in self.chosen if d != "cpu"]
        if not gpus or any(self.running[d] for d in gpus):
            self.gpu_active = now
        # no job of ours has run on any GPU for STALL_SECONDS although jobs wait: GPU memory is held elsewhere
        stalled = bool(gpus) and now - self.gpu_active >= STALL_SECONDS
        started = 0
        taken: set[str] = set()  # members of a batch started in this round
        for a in assign(tasks, states, queue_cost=self.queued_cost, stalled=stalled):
            if a.key in taken:
                continue  # it went with an earlier job's batch; the slot the policy gave it stays idle
            if a.device not in self.chosen and a.device in self.idle and not self.idle[a.device]:
                continue  # the fallback CPU worker is busy: the job waits for it
            if a.note and stalled:
                log.warning("%s: %s", a.key, a.note)
            if a.device != "cpu":
                self.gpu_active = now
            members = self._start(by_name[a.key], a)
            taken.update(members)
            started += 1
            if len(members) > 1:
                break  # the batch used room the policy gave to later jobs: decide again with fresh states
        return started

    def _start(self, job: Job, a: Assignment) -> list[str]:
        if a.device not in self.workers:  # a job no GPU can hold, in a pool without CPU workers
            self._add_device("cpu", 1)
        worker = self.idle[a.device].pop(0)
        members = self._batch(job, a.device)
        self.take(members)
        self.running[a.device] += 1
        threads = 0
        if a.device == "cpu":
            for i, j in enumerate(members):  # the members after the first share its NaN check and vectors
                self._hold(j.name, self._cpu_need(j) - (SHARED_BYTES if i else 0))
            threads = cpu_threads(job.shape, _configured_threads())
        else:
            for j in members:
                if j.name not in self.ready and j.name not in self.reading:
                    self._hold(j.name, self._host_bytes(j))  # the host copy it will read
        worker.inbox.put((members, a.note, threads))
        return [j.name for j in members]

    def _batch(self, job: Job, device: str) -> list[Job]:
        """JOB and the waiting jobs of its shape, dtype and quantization that go with it as one batched job:
        as many as placement.batch_size allows for the size and the room left on DEVICE (same-shape jobs
        have equal cost, so they sit next to JOB in the queue)."""
        if not self.batching or self._pieced(job):
            return [job]
        kind = "cpu" if device == "cpu" else "cuda"
        key = _batch_key(job)
        if kind == "cpu":
            need = batch_member_bytes(job.shape, _element_size(job), self.method, "cpu")  # a further member's need
            room = self.max_memory - self.held - self._cpu_need(job)  # what the first leaves to the others
            room = need + room if room >= 0 else 0
        else:
            need = memory_bytes(job.shape, _element_size(job), self.method, "cuda")
            free, total = self.memory_probe(device)
            room = free - margin(DeviceState(device, "cuda", free, total, 0, 0.0))
        n = batch_size(job.shape, kind, need, max(room, need), self.batch_cap.get((device, key)))
        members = [job]
        if n <= 1:
            return members
        lo = bisect.bisect_left(self.keys, -job.cost)
        hi = bisect.bisect_right(self.keys, -job.cost)
        for other in self.pending[lo:hi]:
            if len(members) >= n:
                break
            if other is not job and _batch_key(other) == key and device not in self.excluded.get(other.name, ()):
                members.append(other)
        return members

    def finish(self, worker: _Worker, jobs: list[Job], note: str | None, outcome) -> None:
        with self.cond:
            self.outbox.append((worker, jobs, note, outcome))
            self.cond.notify_all()

    def collect(self) -> list[Result]:
        """Book the finished jobs: results out, OOMs back to the queue, slots idle again."""
        results = []
        for worker, jobs, note, outcome in self.outbox:
            dev = worker.device
            self.idle[dev].append(worker)
            self.running[dev] -= 1
            for job in jobs:
                self._release(job.name)
                self.ready.pop(job.name, None)
            stats = self.stats.devices[dev]
            if isinstance(outcome, Result):
                outcome = [outcome]
            if isinstance(outcome, list):
                for j in jobs:
                    self.need_cache.pop(j.name, None)
                stats.jobs += len(outcome)
                stats.busy += sum(r.seconds for r in outcome)
                ok = [(j, r) for j, r in zip(jobs, outcome) if r.status != "error"]
                seconds = sum(r.seconds for _, r in ok)
                if ok and seconds > 0:
                    rate = sum(j.cost for j, _ in ok) / seconds
                    kind = "cpu" if dev == "cpu" else "cuda"
                    self.speed[kind] = 0.7 * self.speed[kind] + 0.3 * rate if kind in self.timed else rate
                    self.timed.add(kind)
                results.extend(replace(r, note=note) if note else r for r in outcome)
            elif len(jobs) > 1:  # a batch ran out of memory: split in halves, retried on the same device
                stats.oom += 1
                self.batch_cap[(dev, _batch_key(jobs[0]))] = len(jobs) // 2
                log.info(
                    "%d-matrix batch of %s ran out of memory on %s; retrying in halves", len(jobs), jobs[0].shape, dev
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for job in jobs:
                    self.add(job)
            else:  # out of memory: never this device again for this job
                job = jobs[0]
                stats.oom += 1
                self.excluded.setdefault(job.name, set()).add(dev)
                log.info("%s: out of memory on %s (%s); retrying elsewhere", job.name, dev, outcome)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.add(job)
        self.outbox.clear()
        return results

    def busy(self) -> bool:
        return bool(self.pending or self.feeding or any(self.running.values()) or self.outbox)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        for workers in self.workers.values():
            for w in workers:
                w.inbox.put(None)


def _batch_key(job: Job) -> tuple:
    """Jobs with equal keys stack into one batch: the matrix's shape, its dtype as read, its quantization."""
    q = job.tensor.quant
    return (job.shape, job.tensor.dtype, job.tensor.element_size, None if q is None else (q.scheme, q.block))


def _element_size(job: Job) -> int:
    return job.tensor.element_size  # of the tensor read: float32 for dequantized weights


def _pieces(job: Job) -> Pieces:
    return Pieces(job.tensor, chunk_step(job.shape), PIECE_BYTES)


def _read(
    job: Job, pin: bool, stored: bool = False, pieced: bool = False
) -> tuple[torch.Tensor | Stored | Pieces | None, float, BaseException | None]:
    """The job's matrix as read_tensor gives it, or with STORED a whole FP8/MXFP4 weight as stored (reader.Stored),
    or with PIECED nothing yet: the pieces the worker will read while it scores (reader.Pieces)."""
    start = time.perf_counter()
    if pieced:
        return _pieces(job), 0.0, None
    try:
        if stored and job.part is None and job.tensor.quant is not None:
            tensor = read_stored(job.tensor)
        else:
            tensor = read_tensor(job.tensor) if job.part is None else read_tensor(job.tensor, job.part)
        if pin:
            tensor = tensor.pin_memory()
    except Exception as err:  # becomes the job's error Result
        return None, time.perf_counter() - start, err
    return tensor, time.perf_counter() - start, None


def _solver_timings() -> dict[str, dict[int, float]] | None:
    """STREAMSCAN_SOLVER_TIMINGS: a JSON file of measured seconds per path and size ({"gram64": {"4096": 0.2},
    "gram64-magma": {...}}, as bench/gpu.py writes under "solver_timings"); None when unset or unreadable."""
    where = os.environ.get("STREAMSCAN_SOLVER_TIMINGS")
    if not where:
        return None
    try:
        data = json.loads(open(where, encoding="utf-8").read())
        data = data.get("solver_timings", data)
        return {p: {int(k): float(v) for k, v in t.items()} for p, t in data.items()}
    except (OSError, ValueError, AttributeError, TypeError) as err:
        log.info("STREAMSCAN_SOLVER_TIMINGS=%s: not read (%s); default solver paths", where, err)
        return None


def _configured_threads() -> int | None:
    """STREAMSCAN_THREADS_PER_JOB: a fixed torch thread count for every CPU job (placement.cpu_threads)."""
    value = os.environ.get("STREAMSCAN_THREADS_PER_JOB", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def run_jobs(
    jobs: Iterable[Job],
    method: str = DEFAULT_METHOD,
    workers: int | None = None,
    *,
    devices: Sequence[str] = ("cpu",),
    max_memory: int | None = None,
    prefetch: int | None = None,
    stats: PoolStats | None = None,
    memory_probe=None,
    compute=None,
    keep=None,
    batch: bool = True,
) -> Iterator[Result]:
    """Yield a Result per job as each finishes (any order). Closing the iterator cancels queued jobs.

    ``devices``: "cpu" and/or "cuda:N" names (devices.parse_devices). ``workers``: CPU worker threads.
    ``max_memory``: RAM bytes for read tensors and CPU work (default: available RAM minus headroom).
    ``prefetch``: tensors read ahead (default: one per device slot). ``memory_probe(device) -> (free,
    total)`` and ``compute(tensor, method, device) -> SNR`` replace the CUDA query and the CUDA computation
    (tests simulate GPUs with them; ``compute`` may raise torch.OutOfMemoryError). ``batch``: same-shape
    small matrices go to a device as one batched job (placement.batch_size); results are one per job either way.
    ``keep(name, singular_values)`` is called from the worker threads with each scored matrix's spectrum.
    """
    workers = workers or default_workers()
    devices = list(devices) or ["cpu"]
    slots = sum(workers if d == "cpu" else 1 for d in devices)
    stats = stats if stats is not None else PoolStats()
    stats.max_memory = max_memory or default_max_memory()
    limit_heap_growth()
    before = torch.get_num_threads()
    pool = _Pool(
        devices,
        method,
        workers,
        stats.max_memory,
        prefetch if prefetch is not None else slots,
        memory_probe,
        compute,
        stats,
        batch,
    )
    pool.keep = keep
    threads = []
    if isinstance(jobs, Sequence):
        for job in jobs:
            pool.add(job)
        pool.feeding = False
    else:
        threads.append(
            threading.Thread(target=pool.feed, args=(jobs, 4 * slots + 8), daemon=True, name="streamscan-feed")
        )
    if pool.prefetch_depth > 0:
        threads.append(threading.Thread(target=pool.prefetch, daemon=True, name="streamscan-prefetch"))
    for t in threads:
        t.start()
    try:
        while True:
            with pool.cond:
                results = pool.collect()
                pool.dispatch()
                if not results:
                    if not pool.busy():
                        break
                    if not pool.outbox:
                        pool.cond.wait(timeout=1.0)
                    continue
            yield from results
    finally:
        stats.wall = time.perf_counter() - stats.started
        pool.stop()  # queued jobs are dropped; a running SVD finishes in its daemon thread, unjournaled
        torch.set_num_threads(before)
