"""scheduler: run jobs on a pool of devices (GPUs and CPU workers), reading ahead within a RAM budget.

One thread per GPU and one per CPU worker, each driving a device (backends.Device: real CPU and CUDA ones,
or simulated ones that tests and benchmarks pass in). The dispatcher (the generator :func:`run_jobs`) asks
the pure placement policy (placement.py) which waiting job (jobqueue.py) goes to which idle device, given
each device's free memory right now. A prefetch thread (prefetch.py) reads the next tensors while devices
compute, holding at most ``max_memory`` bytes of tensors and CPU work at a time (budget.py; a job bigger
than the whole budget runs alone). A GPU has two worker slots: while one computes, the other streams its
next whole tensors to the device through a small ring of host buffers (one ring per core, pinned when CUDA
is there; staging.py); FP8 weights go as stored, dequantized on the device. Streamed jobs are not prefetched.
A huge 2-D safetensors matrix (over 1 GiB as stored or half the budget, at least 256 MiB; ``pieces_above``
bytes if given) is never read whole: with gram64 its Gram accumulates from ~64 MiB pieces read in the worker
(reader.Pieces), and its memory estimate and prefetch hold count one piece instead of the tensor.
A CUDA out-of-memory error sends the job back to the queue, never to that device again; when no GPU can
hold it, it runs on the CPU. Results are yielded as jobs finish, in any order.

CPU workers run torch with one thread per job (placement.cpu_threads: a fixed rule, never the worker count
or the load, so outputs are byte-identical whatever --cpu-workers): one job per core beats one job on all
cores, and a multi-threaded torch op slows down ~10x as soon as another process takes a core.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch

from streamscan.checkpoint.reader import Stored
from streamscan.compute import solver
from streamscan.compute.backends import Device, device_for, on_host
from streamscan.compute.budget import MemoryBudget
from streamscan.compute.devices import default_max_memory, default_workers, gpu_memory, parse_devices  # noqa: F401 (re-exported)
from streamscan.compute.executor import error_result, oom_types, score_batch_jobs, score_job
from streamscan.compute.jobqueue import JobQueue
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
from streamscan.compute.prefetch import Prefetcher
from streamscan.compute.reading import Reader, batch_key
from streamscan.compute.spectrum import DEFAULT_METHOD, SHARED_BYTES, batch_member_bytes, memory_bytes
from streamscan.compute.staging import STAGE_BYTES
from streamscan.records import Job, Result

log = logging.getLogger(__name__)

WINDOW = 256  # jobs from each end of the queue shown to the policy per decision
GPU_SLOTS = 2  # worker slots per GPU: one streams its next matrices in while the other computes
STALL_SECONDS = 120.0  # how long the head job waits for GPU memory other processes hold before going to CPU


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
    """One slot of a device: takes (jobs, note, threads) from its inbox, reads what is not read yet, scores.
    A GPU has two: while one computes (holding the device's ``computing`` lock), the other streams its next
    matrices in (staging.stream)."""

    def __init__(self, pool: _Pool, name: str, device: Device, computing):
        super().__init__(name=f"streamscan-{name}", daemon=True)
        self.pool, self.worker, self.device, self.computing = pool, name, device, computing
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()

    def path_for(self, shape: tuple[int, int], batch: int) -> str:
        """The solver path of a [batch, *shape] job here (solver.choose), recorded in the pool's stats."""
        pool, dev = self.pool, self.device
        rates = dev.rates()
        path = solver.choose(shape, batch, rates, dev.kind, pool.solver)
        shown = dev.shown or (path if pool.method == "gram64" else pool.method)
        with pool.cond:
            entry = pool.stats.solver.setdefault(dev.name, {"paths": set()})
            if rates is not None:
                entry.update(fp64_tflops=rates.fp64_tflops, fp32_tflops=rates.fp32_tflops)
            entry["paths"].add(shown)
        return path

    def run(self) -> None:
        self.device.enter()
        while (item := self.inbox.get()) is not None:
            jobs, note, threads = item
            if self.device.kind == "cpu":
                torch.set_num_threads(threads)
            try:
                outcome = self._run(jobs[0]) if len(jobs) == 1 else self._run_batch(jobs)
            except Exception as err:  # a bug must not kill the worker (the scan would wait forever)
                outcome = [error_result(j, self.pool.method, self.worker, err, 0.0) for j in jobs]
            self.pool.finish(self, jobs, note, outcome)

    def _streaming(self, read):
        """READ() (which may stream to this worker's GPU). Out of device memory while the other slot computes:
        once more after that computation, holding the device meanwhile (its memory then as free as it gets)."""
        try:
            return read()
        except oom_types():
            pass  # leave the except block first: its traceback would hold the failed attempt's memory
        with self.computing:
            return read()

    def _run_batch(self, jobs: list[Job]):
        """Same-shape jobs as one stacked job: a list of Results, or the OOM (the pool splits the batch)."""
        pool = self.pool
        try:
            stack, reads = self._streaming(lambda: pool.reads.read_batch(jobs, self.device))
        except oom_types() as oom:  # no room on the device for the stack streamed in
            return _bare(oom)
        if stack is None:  # read one by one: the members that failed get their errors, the others a stack
            out: dict[str, Result] = {
                j.name: error_result(j, pool.method, self.worker, err, 0.0, sec)
                for j, (_, sec, err) in zip(jobs, reads)
                if err is not None
            }
            good = [(j, t, sec) for j, (t, sec, err) in zip(jobs, reads) if err is None]
            del reads
            members = [j for j, _, _ in good]
            stack = _stack([t for _, t, _ in good])
            if stack is None:  # stored weights that do not stack (their scales): each on its own, for its error
                for j, t, sec in good:
                    single = self._run(j, t, sec)
                    if not isinstance(single, Result):
                        return single  # out of memory
                    out[j.name] = single
                return [out[j.name] for j in jobs]
            seconds = [sec for _, _, sec in good]
            del good
        else:
            out, members, seconds = {}, jobs, reads
        if members:
            path = self.path_for(members[0].shape, len(members))
            try:
                with self.computing:
                    results = score_batch_jobs(
                        members, stack, pool.method, self.worker, self.device, seconds, pool.keep, path
                    )
            except oom_types() as oom:
                return _bare(oom)
            finally:
                del stack
            out.update((r.name, r) for r in results)
        return [out[j.name] for j in jobs]

    def _run(self, job: Job, tensor=None, read: float = 0.0):
        """One job (its TENSOR read already, or read now): its Result, or the OOM."""
        err = None
        if tensor is None:
            try:
                tensor, read, err = self._streaming(lambda: self.pool.reads.tensor_for(job, self.device))
            except oom_types() as oom:
                return _bare(oom)
        if err is not None:
            return error_result(job, self.pool.method, self.worker, err, 0.0, read)
        path = self.path_for(job.shape, 1)
        try:
            with self.computing:
                return score_job(job, tensor, self.pool.method, self.worker, self.device, read, self.pool.keep, path)
        except oom_types() as oom:
            return _bare(oom)
        finally:
            del tensor


def _bare(oom: BaseException) -> BaseException:
    """OOM without its traceback, whose frames would hold the job's memory on the device until the pool
    has handled it."""
    oom.__traceback__ = None
    return oom


def _stack(tensors: list):
    """Read matrices of one shape as one stack: tensors stacked, block-scaled FP8 weights as one stored stack
    (dequantized on the device), other stored weights dequantized here; None when stored weights do not
    stack (their scales differ: each then runs on its own, for its own error)."""
    if not tensors or all(isinstance(t, torch.Tensor) for t in tensors):
        return torch.stack(tensors) if tensors else None
    first = tensors[0]
    same = (first.scheme, first.block, first.weight.shape, first.scale.shape) if isinstance(first, Stored) else None
    if all(isinstance(t, Stored) and (t.scheme, t.block, t.weight.shape, t.scale.shape) == same for t in tensors):
        if first.scheme == "fp8-block":
            return Stored(
                torch.stack([t.weight for t in tensors]),
                torch.stack([t.scale for t in tensors]),
                "fp8-block",
                first.block,
            )
    try:
        return torch.stack([on_host(t) for t in tensors])
    except Exception:
        return None


class _Pool:
    """The shared state of one run_jobs call: the queue, the RAM budget, the prefetcher and the devices'
    workers, every field guarded by ``cond``; dispatch (what starts where) and collect (what finished)."""

    def __init__(
        self,
        devices: list[Device],
        method: str,
        cpu_workers: int,
        max_memory: int,
        prefetch: int,
        stats: PoolStats,
        batch: bool = True,
        solver_path: str | None = None,
        pieces_above: int | None = None,
        threads_per_job: int | None = None,
    ):
        self.method, self.cond, self.stats = method, threading.Condition(), stats
        self.keep = None  # score_job's keep: where singular values go (run_jobs' keep)
        self.solver = solver_path
        self.threads_per_job = threads_per_job
        self.batching = batch
        self.batch_cap: dict[tuple, int] = {}  # (device, batch key) -> most members, halved at each OOM
        self.queue = JobQueue()
        self.budget = MemoryBudget(max_memory)
        streaming = any(d.kind != "cpu" for d in devices)  # GPU workers stream whole tensors to their devices
        self.reads = Reader(self.cond, stats, method, streaming, max_memory, pieces_above, self.queue)
        self.excluded: dict[str, set[str]] = {}
        self.gpu_active = time.perf_counter()  # when a job of ours last ran or started on a GPU
        self.need_cache: dict[str, tuple[int, int]] = {}
        self.held: dict[_Worker, int] = {}  # GPU bytes (estimated) of the job each busy GPU worker runs
        self.outbox: list[tuple[_Worker, list[Job], str | None, object]] = []
        self.feeding = True
        self.prefetcher = Prefetcher(
            self.cond,
            self.queue,
            self.budget,
            prefetch,
            self.reads.read,
            self.reads.host_bytes,
            lambda: not self.feeding and not self.queue,
            self.reads.count,
            self.reads.streamed,
        )
        self.reads.prefetcher = self.prefetcher
        self.speed = dict(PRIOR_SPEED)
        self.timed: set[str] = set()  # device kinds whose speed has been measured (replacing the prior)
        self.devices: dict[str, Device] = {}
        self.workers: dict[str, list[_Worker]] = {}
        self.idle: dict[str, list[_Worker]] = {}
        self.running: dict[str, int] = {}
        self.chosen = [d.name for d in devices]  # a fallback CPU worker (not chosen) only takes jobs no GPU can hold
        for dev in devices:
            self._add_device(dev, cpu_workers if dev.kind == "cpu" else 1)

    def _add_device(self, dev: Device, count: int) -> None:
        """COUNT CPU workers, or a GPU's two worker slots (one computes while the other streams; DeviceStats
        counts the one that computes)."""
        names = [f"cpu{i}" for i in range(count)] if dev.kind == "cpu" else [dev.name] * GPU_SLOTS
        computing = contextlib.nullcontext() if dev.kind == "cpu" else threading.Lock()
        self.devices[dev.name] = dev
        self.workers[dev.name] = [_Worker(self, n, dev, computing) for n in names]
        self.idle[dev.name] = list(self.workers[dev.name])
        self.running[dev.name] = 0
        self.stats.devices[dev.name] = DeviceStats(slots=count)
        for w in self.workers[dev.name]:
            w.start()

    def feed(self, jobs: Iterable[Job], lookahead: int) -> None:
        """Pull jobs from a lazy iterable (e.g. shards still downloading) while the queue is short."""
        try:
            for job in jobs:
                with self.cond:
                    while len(self.queue) >= lookahead and not self.prefetcher.stopped:
                        self.cond.wait()
                    if self.prefetcher.stopped:
                        return
                    self.queue.add(job)
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.feeding = False
                self.cond.notify_all()

    # dispatch --------------------------------------------------------------------------------------
    def states(self) -> list[DeviceState]:
        out = []
        for name in self.chosen:
            dev = self.devices[name]
            if dev.kind == "cpu":
                free, total = self.budget.free, self.budget.limit
            else:
                free, total = self._gpu_memory(name)
            out.append(
                DeviceState(name, dev.kind, free, total, len(self.idle[name]), self.speed[dev.kind], self.running[name])
            )
        return out

    def _gpu_memory(self, name: str) -> tuple[int, int]:
        """(free, total) of GPU NAME for placement: what it reports free, but never more than its total minus
        the estimated needs of our jobs started on it and not finished (its other slot's job may be streaming
        in, its working memory not allocated yet)."""
        free, total = self.devices[name].memory()
        held = sum(need for worker, need in self.held.items() if worker.device.name == name)
        return min(free, total - held), total

    def dispatch(self) -> int:
        """Start what the policy assigns now; the number of jobs started.

        The policy first sees a few jobs from each end of the queue (4 per idle slot): at 45k small
        jobs, showing it WINDOW from each end per finished job cost more than the jobs. Only when that
        leaves slots idle (nothing shown fits now) does it see the whole WINDOW."""
        idle = sum(len(v) for v in self.idle.values())
        if not self.queue or not idle:
            return 0
        small = max(8, 4 * idle)
        started = self._dispatch(small)
        if started < idle and len(self.queue) > 2 * small:
            started += self._dispatch(WINDOW)
        return started

    def _needs(self, job: Job) -> tuple[int, int]:
        """(GPU bytes, CPU bytes) the job needs, computed once per job."""
        got = self.need_cache.get(job.name)
        if got is None:
            size = _element_size(job)
            piece = self.reads.host_bytes(job) if self.reads.pieced(job) else None
            got = self.need_cache[job.name] = (
                memory_bytes(job.shape, size, self.method, "cuda", piece),
                memory_bytes(job.shape, size, self.method, "cpu", piece),
            )
        return got

    def _cpu_need(self, job: Job) -> int:
        need = self._needs(job)[1]
        return need - self.reads.host_bytes(job) if self.prefetcher.has(job) else need

    def _dispatch(self, width: int) -> int:
        if not self.queue or not any(self.idle.values()):
            return 0
        window = self.queue.ends(width)
        tasks = []
        for j in window:
            cuda = self._needs(j)[0]
            tasks.append(
                Task(j.name, j.cost, {"cuda": cuda, "cpu": self._cpu_need(j)}, frozenset(self.excluded.get(j.name, ())))
            )
        by_name = {j.name: j for j in window}
        states = self.states()
        now = time.perf_counter()
        gpus = [d for d in self.chosen if self.devices[d].kind != "cpu"]
        if not gpus or any(self.running[d] for d in gpus):
            self.gpu_active = now
        # no job of ours has run on any GPU for STALL_SECONDS although jobs wait: GPU memory is held elsewhere
        stalled = bool(gpus) and now - self.gpu_active >= STALL_SECONDS
        started = 0
        taken: set[str] = set()  # members of a batch started in this round
        for a in assign(tasks, states, queue_cost=self.queue.cost, stalled=stalled):
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
            self._add_device(device_for("cpu"), 1)
        worker = self.idle[a.device].pop(0)
        members = self._batch(job, a.device)
        self.queue.take(members)
        self.running[a.device] += 1
        threads = 0
        if a.device == "cpu":
            for i, j in enumerate(members):  # the members after the first share its NaN check and vectors
                self.budget.hold(j.name, self._cpu_need(j) - (SHARED_BYTES if i else 0))
            threads = cpu_threads(job.shape, self.threads_per_job)
        else:
            for j in members:
                if not self.prefetcher.has(j) and not self.reads.streamed(j):
                    self.budget.hold(j.name, self.reads.host_bytes(j))  # the host copy it will read
            self.held[worker] = sum(self._needs(j)[0] for j in members)
        self.stats.peak_held = max(self.stats.peak_held, self.budget.peak)
        worker.inbox.put((members, a.note, threads))
        return [j.name for j in members]

    def _batch(self, job: Job, device: str) -> list[Job]:
        """JOB and the waiting jobs of its shape, dtype and quantization that go with it as one batched job:
        as many as placement.batch_size allows for the size and the room left on DEVICE (same-shape jobs
        have equal cost, so they sit next to JOB in the queue)."""
        if not self.batching or self.reads.pieced(job):
            return [job]
        dev = self.devices[device]
        key = batch_key(job)
        if dev.kind == "cpu":
            need = batch_member_bytes(job.shape, _element_size(job), self.method, "cpu")  # a further member's need
            room = self.budget.free - self._cpu_need(job)  # what the first leaves to the others
            room = need + room if room >= 0 else 0
        else:
            need = memory_bytes(job.shape, _element_size(job), self.method, "cuda")
            free, total = self._gpu_memory(device)
            room = free - margin(DeviceState(device, "cuda", free, total, 0, 0.0))
        n = batch_size(job.shape, dev.kind, need, max(room, need), self.batch_cap.get((device, key)))
        if dev.kind != "cpu":  # a stack's input on the GPU: at most STAGE_BYTES
            n = min(n, max(1, STAGE_BYTES // max(job.nbytes, 1)))
        members = [job]
        if n <= 1:
            return members
        for other in self.queue.same_cost(job):
            if len(members) >= n:
                break
            if other is not job and batch_key(other) == key and device not in self.excluded.get(other.name, ()):
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
            dev = worker.device.name
            self.held.pop(worker, None)
            self.idle[dev].append(worker)
            self.running[dev] -= 1
            for job in jobs:
                self.budget.release(job.name)
                self.prefetcher.forget(job)
            self.cond.notify_all()
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
                    kind = worker.device.kind
                    self.speed[kind] = 0.7 * self.speed[kind] + 0.3 * rate if kind in self.timed else rate
                    self.timed.add(kind)
                results.extend(replace(r, note=note) if note else r for r in outcome)
            elif len(jobs) > 1:  # a batch ran out of memory: split in halves, retried on the same device
                stats.oom += 1
                self.batch_cap[(dev, batch_key(jobs[0]))] = len(jobs) // 2
                log.info(
                    "%d-matrix batch of %s ran out of memory on %s; retrying in halves", len(jobs), jobs[0].shape, dev
                )
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                for job in jobs:
                    self.queue.add(job)
            else:  # out of memory: never this device again for this job
                job = jobs[0]
                stats.oom += 1
                self.excluded.setdefault(job.name, set()).add(dev)
                log.info("%s: out of memory on %s (%s); retrying elsewhere", job.name, dev, outcome)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.queue.add(job)
        self.outbox.clear()
        return results

    def busy(self) -> bool:
        return bool(self.queue or self.feeding or any(self.running.values()) or self.outbox)

    def stop(self) -> None:
        with self.cond:
            self.prefetcher.stopped = True
            self.cond.notify_all()
        for workers in self.workers.values():
            for w in workers:
                w.inbox.put(None)


def _element_size(job: Job) -> int:
    return job.tensor.element_size  # of the tensor read: float32 for dequantized weights


def run_jobs(
    jobs: Iterable[Job],
    method: str = DEFAULT_METHOD,
    workers: int | None = None,
    *,
    devices: Sequence[str | Device] = ("cpu",),
    max_memory: int | None = None,
    prefetch: int | None = None,
    stats: PoolStats | None = None,
    keep=None,
    batch: bool = True,
    solver_path: str | None = None,
    pieces_above: int | None = None,
    threads_per_job: int | None = None,
) -> Iterator[Result]:
    """Yield a Result per job as each finishes (any order). Closing the iterator cancels queued jobs.

    ``devices``: "cpu" and/or "cuda:N" names (devices.parse_devices), or backends.Device objects (e.g. the
    simulated GPUs of tests and benchmarks). ``workers``: CPU worker threads. ``max_memory``: RAM bytes for
    read tensors and CPU work (default: available RAM minus headroom). ``prefetch``: tensors read ahead
    (default: one per device slot). ``batch``: same-shape small matrices go to a device as one batched job
    (placement.batch_size); results are one per job either way. ``keep(name, singular_values)`` is called
    from the worker threads with each scored matrix's spectrum. ``solver_path`` forces a gram64 solver path
    on every device (solver.PATHS); ``pieces_above``: bytes as stored above which a matrix is read in pieces;
    ``threads_per_job``: a fixed torch thread count for every CPU job (placement.cpu_threads).
    """
    workers = workers or default_workers()
    pool_devices = [device_for(d) if isinstance(d, str) else d for d in devices] or [device_for("cpu")]
    slots = sum(workers if d.kind == "cpu" else 1 for d in pool_devices)
    stats = stats if stats is not None else PoolStats()
    stats.max_memory = max_memory or default_max_memory()
    before = torch.get_num_threads()
    pool = _Pool(
        pool_devices,
        method,
        workers,
        stats.max_memory,
        prefetch if prefetch is not None else slots,
        stats,
        batch,
        solver_path,
        pieces_above,
        threads_per_job,
    )
    pool.keep = keep
    threads = []
    if isinstance(jobs, Sequence):
        for job in jobs:
            pool.queue.add(job)
        pool.feeding = False
    else:
        threads.append(
            threading.Thread(target=pool.feed, args=(jobs, 4 * slots + 8), daemon=True, name="streamscan-feed")
        )
    if pool.prefetcher.depth > 0:
        threads.append(threading.Thread(target=pool.prefetcher.run, daemon=True, name="streamscan-prefetch"))
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
        stats.peak_held = max(stats.peak_held, pool.budget.peak)
        pool.stop()  # queued jobs are dropped; a running SVD finishes in its daemon thread, unjournaled
        torch.set_num_threads(before)
