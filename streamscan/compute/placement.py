"""placement: which waiting job goes to which idle device. A pure function of jobs and device states.

The scheduler calls :func:`assign` whenever a device frees up or a job arrives, with a snapshot of
every device: its *currently* free memory (for a GPU: ``torch.cuda.mem_get_info`` plus what our own
allocator holds unused; for the CPU: what is left of the RAM budget), total memory, idle slots and an
estimated speed. The rules:

1. Jobs are considered largest first, so the long ones start early and the tail is short.
2. A job goes to an idle GPU whose free memory, minus a safety margin, fits its estimate; among
   several, the one with the least room that fits (the roomiest stays free for a bigger job).
3. A job that fits no GPU *now* but fits one when it empties waits for it, without holding back
   smaller jobs. A job that no GPU can ever fit (or that ran out of memory on every GPU) goes to the
   CPU, and its placement note says why.
4. With GPUs present, a CPU slot takes a job from the small end of the queue, and only if its
   estimated CPU time is shorter than the GPUs' estimated time for the whole queue: CPU workers help
   without stretching the tail. Without GPUs the CPU takes the largest job first.
5. A job never goes back to a device where it ran out of memory (``excluded``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PRIOR_SPEED = {"cpu": 15e9, "cuda": 5e12}  # flop/s of one slot before any job has been timed

GPU_MARGIN_FRACTION = (
    0.05  # of a GPU's total memory, kept free for the CUDA context, cuBLAS/cuSOLVER handles, fragmentation
)
GPU_MARGIN_MIN = 512 << 20


@dataclass(frozen=True)
class Task:
    """What the policy knows of a waiting job."""

    key: str
    cost: float  # floating-point operations
    need: dict[str, int]  # bytes needed on a device of each kind: {"cuda": …, "cpu": …}
    excluded: frozenset[str] = frozenset()  # devices where it ran out of memory


@dataclass(frozen=True)
class DeviceState:
    name: str  # "cuda:0", "cpu"
    kind: str  # "cuda" | "cpu"
    free: int  # bytes usable now
    total: int  # bytes usable when the device is empty of our work
    idle: int  # free worker slots
    speed: float  # flop/s of one slot (an estimate, refined as jobs finish)
    running: int = 0  # our jobs running there now


@dataclass(frozen=True)
class Assignment:
    key: str
    device: str
    note: str | None = None  # why it runs where it does, when that is not its first choice


@dataclass
class _Slot:
    state: DeviceState
    free: int
    idle: int
    running: int


def margin(state: DeviceState) -> int:
    if state.kind == "cpu":
        return 0
    return max(GPU_MARGIN_MIN, int(state.total * GPU_MARGIN_FRACTION))


def fits_ever(task: Task, state: DeviceState) -> bool:
    return state.name not in task.excluded and task.need[state.kind] <= state.total - margin(state)


def assign(
    tasks: Sequence[Task],
    devices: Sequence[DeviceState],
    *,
    fallback_cpu: bool = True,
    queue_cost: float | None = None,
    stalled: bool = False,
) -> list[Assignment]:
    """Assignments for now. ``tasks`` are in queue order (largest first); each is assigned at most once.

    ``fallback_cpu``: a task no GPU can hold may run on a device named "cpu" even when the pool has none
    (the scheduler starts a fallback CPU worker for it). ``queue_cost``: the flops of every waiting job
    when ``tasks`` shows only part of a long queue (default: the sum over ``tasks``). ``stalled``: nothing
    of ours has run for a while although jobs wait (GPU memory held by other processes): the head job
    then goes to the CPU rather than waiting forever.
    """
    out = _assign(tasks, devices, fallback_cpu, queue_cost)
    if out or not stalled or not tasks:
        return out
    gpus = [d.name for d in devices if d.kind == "cuda" and fits_ever(tasks[0], d)]
    note = f"waited for GPU memory that other processes hold on {', '.join(gpus)}; scored on CPU"
    cpus = [_Slot(d, d.free, d.idle, d.running) for d in devices if d.kind == "cpu"]
    target = _take_cpu(cpus, tasks[0]) or ("cpu" if fallback_cpu and not cpus else None)
    return [Assignment(tasks[0].key, target, note)] if target else []


def _assign(
    tasks: Sequence[Task], devices: Sequence[DeviceState], fallback_cpu: bool, queue_cost: float | None
) -> list[Assignment]:
    slots = [_Slot(d, d.free - margin(d), d.idle, d.running) for d in devices]
    gpus = [s for s in slots if s.state.kind == "cuda"]
    cpus = [s for s in slots if s.state.kind == "cpu"]
    out: list[Assignment] = []
    left: list[Task] = []
    for task in tasks:
        room = [g for g in gpus if fits_ever(task, g.state)]
        if room:
            now = [g for g in room if g.idle > 0 and task.need["cuda"] <= g.free]
            if now:
                best = min(now, key=lambda g: g.free)
                best.idle -= 1
                best.free -= task.need["cuda"]
                out.append(Assignment(task.key, best.state.name))
            else:
                left.append(task)
            continue
        if gpus or not cpus:  # no GPU can ever hold it: the CPU takes it, saying why
            why = _why_cpu(task, [g.state for g in gpus])
            target = _take_cpu(cpus, task)
            if target is not None:
                out.append(Assignment(task.key, target, why))
            elif not cpus and fallback_cpu:
                out.append(Assignment(task.key, "cpu", why))
            continue  # otherwise it waits for a CPU slot
        left.append(task)  # CPU-only pool: handled below, largest first
    if not cpus:
        return out
    if not gpus:
        for task in left:
            target = _take_cpu(cpus, task)
            if target is not None:
                out.append(Assignment(task.key, target))
        return out
    gpu_rate = sum(g.state.speed for g in gpus) or 1.0
    shown = sum(t.cost for t in tasks)
    hidden = max(0.0, (queue_cost if queue_cost is not None else shown) - shown)
    queue_seconds = (sum(t.cost for t in left) + hidden) / gpu_rate
    for task in reversed(left):  # smallest first
        if not any(c.idle > 0 for c in cpus):
            break
        cpu_seconds = task.cost / max(cpus[0].state.speed, 1.0)
        if cpu_seconds >= queue_seconds:
            break
        target = _take_cpu(cpus, task)
        if target is not None:
            out.append(Assignment(task.key, target))
            queue_seconds -= task.cost / gpu_rate
    return out


def _take_cpu(cpus: list[_Slot], task: Task) -> str | None:
    """A CPU slot for the task if one is idle and the RAM budget holds it (a task bigger than the whole
    budget may run when nothing else of ours holds CPU memory, so that it cannot wait forever)."""
    for c in cpus:
        if c.idle <= 0:
            continue
        if task.need["cpu"] <= c.free or c.running == 0:
            c.idle -= 1
            c.running += 1
            c.free -= task.need["cpu"]
            return c.state.name
    return None


def _why_cpu(task: Task, gpus: list[DeviceState]) -> str | None:
    if not gpus:
        return None
    oom = [g.name for g in gpus if g.name in task.excluded]
    small = [g for g in gpus if g.name not in task.excluded]
    why = []
    if oom:
        why.append("ran out of memory on " + ", ".join(oom))
    if small:
        room = max(g.total - margin(g) for g in small)
        why.append(
            f"needs {task.need['cuda'] / 2**30:.1f} GiB, more than "
            f"{'any GPU' if not oom else ', '.join(g.name for g in small)} can give ({room / 2**30:.1f} GiB)"
        )
    return "; ".join(why) + "; scored on CPU"


THREADS_PER_JOB = 1


def cpu_threads(shape: tuple[int, ...], configured: int | None = None) -> int:
    """Torch threads for a CPU job: a fixed rule of the job alone (its shape), never of the worker count, of
    what else runs or of the machine's load, so a matrix's float sums happen in the same order in every run
    (``--cpu-workers``, ranks, shards, resumes and load give byte-identical outputs; docs/reproducibility.md).

    One thread by default: two jobs on one thread each have 2x the throughput of one job on two threads here,
    and a single-threaded job does not collapse when another process takes a core. CONFIGURED
    (``ScanOptions.threads_per_job``; the CLI's STREAMSCAN_THREADS_PER_JOB) sets another fixed count, e.g. to match a reference run's
    ``svdvals32`` bit for bit.
    """
    del shape  # the rule may use the shape; today it is the same for every shape
    return max(1, configured or THREADS_PER_JOB)


# Batches of same-shape matrices (score_batch). CPU: measured by bench/batching.py (bench/RESULTS.md,
# "batching"): one stack pays below a small side of ~256 (0.35-0.9x the time per matrix), not above it.
# CUDA: not yet measured (no GPU lent); the per-call latency of syevd is ~ms, so up to 64 small matrices.
BATCH_MAX = {"cpu": 16, "cuda": 64}
BATCH_MAX_K = {"cpu": 256, "cuda": 2048}
# Tiny matrices (MoE experts of a small model, DeepSeek-V3's shapes shrunk in bench/scale.py) cost less to score
# than to schedule: on the CPU up to SMALL_BATCH_MAX of them go as one job while the stack holds at most
# SMALL_BATCH_ELEMENTS values (256 of 32x64, 64 of 256x64; 16 from 256x256 up).
SMALL_BATCH_MAX, SMALL_BATCH_ELEMENTS = 256, 1 << 20


def batch_size(shape: tuple[int, int], kind: str, need: int, room: int, cap: int | None = None) -> int:
    """How many same-shape matrices go to a device of KIND as one job: the measured maximum for the size,
    bounded by the ROOM left there (each member needs NEED bytes) and by CAP (halved after an OOM)."""
    if min(shape) > BATCH_MAX_K.get(kind, 0):
        return 1
    most = BATCH_MAX.get(kind, 1)
    if kind == "cpu":
        most = max(most, min(SMALL_BATCH_MAX, SMALL_BATCH_ELEMENTS // max(1, shape[0] * shape[1])))
    most = most if cap is None else min(cap, most)
    return max(1, min(most, room // max(need, 1)))
