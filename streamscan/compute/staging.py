"""staging: how a GPU's matrices travel from the page cache to the device -- streamed through a small ring
of reused host buffers -- and how the other reads are made.

A GPU worker streams each whole safetensors tensor (a block-scaled FP8 weight and its scales as stored) of
its job or batch into a tensor the device allocated for it (``Device.receive``): pread copies CHUNK_BYTES
at a time from the page cache into the next buffer of a :class:`Ring` lent by RINGS, and ``Device.copy_in``
sends it on (CUDA: an asynchronous copy on the device's copy stream from pinned memory; the buffer is reused
once that copy's event has fired). The host thus makes one copy of each byte, into a buffer that stays in
the core's cache: on this project's 2-core host that runs at 0.8-0.9x `cat` on one thread, against ~0.6x into
reused 64 MiB buffers and 0.2x into fresh ones (bench/RESULTS.md, "feed"). No host memory is held per job.

The process has one ring per core (RINGS), lent to one stream at a time: at most one stream per core runs
at once (more only share the cores and evict each other's buffers from the caches), and the ring given back
last -- likely still in a core's cache -- is lent first.
"""

from __future__ import annotations

import contextlib
import threading
import time

import torch

from streamscan.checkpoint.reader import Pieces, Stored, read_chunks, read_stored, read_tensor, stageable
from streamscan.compute.devices import default_workers
from streamscan.records import Job

STAGE_BYTES = 64 << 20  # most bytes as stored of one batch sent to a GPU (its input on the device)
CHUNK_BYTES = 2 << 20  # one read (bench/RESULTS.md, "feed-rings": 2 x 2 MiB beside 2 x 1 MiB, 4 x 2 MiB, 4 x 512 KiB)
RING = 2  # buffers per ring: a CUDA copy has the next read's time to finish before its buffer is reused

Read = tuple[object, float, BaseException | None]  # (tensor | Stored | Pieces | None, seconds, error)


class Ring:
    """RING host buffers of CHUNK_BYTES (page-locked when PINNED) used in turn, each with the fence of the
    copy that last read from it (``Device.copy_in``'s return: something with ``synchronize()``, or None)."""

    def __init__(self, pinned: bool = False):
        self.pinned = pinned
        self.buffers = [torch.empty(CHUNK_BYTES, dtype=torch.uint8, pin_memory=pinned) for _ in range(RING)]
        self.fences: list = [None] * RING
        self.next = 0

    def take(self) -> torch.Tensor:
        """The next buffer, once the copy that last read from it is done."""
        i = self.next
        self.next = (i + 1) % RING
        if self.fences[i] is not None:
            self.fences[i].synchronize()
            self.fences[i] = None
        return self.buffers[i]

    def fence(self, done) -> None:
        """DONE: the fence of the copy from the buffer last taken."""
        self.fences[(self.next - 1) % RING] = done


class Rings:
    """COUNT rings, each lent to one stream at a time (``with rings.lend(pinned) as ring``), waiting while all
    are lent; the ring given back last is lent first. A ring is made on first need (pinned or not, as asked;
    one of the other kind is replaced)."""

    def __init__(self, count: int):
        self.count = count
        self._free: list[Ring] = []
        self._made = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def lend(self, pinned: bool):
        with self._cond:
            while not self._free and self._made >= self.count:
                self._cond.wait()
            ring = self._free.pop() if self._free else None
            self._made += ring is None
        try:
            if ring is None or ring.pinned != pinned:
                ring = Ring(pinned)
        except BaseException:
            with self._cond:
                self._made -= 1
                self._cond.notify()
            raise
        try:
            yield ring
        finally:
            with self._cond:
                self._free.append(ring)
                self._cond.notify()


RINGS = Rings(default_workers())  # one per core


def stream(jobs: list[Job], device, ring: Ring | None = None):
    """The whole matrices of JOBS (one shape, dtype and quantization, each ``stageable``) streamed into one
    tensor DEVICE received for them, through RING or one lent by RINGS: [B, m, n], or a Stored whose weight
    and scales are [B, ...] stacks; one job without the batch dimension."""
    if ring is None:
        with RINGS.lend(device.pinned and torch.cuda.is_available()) as ring:
            return stream(jobs, device, ring)
    first = jobs[0].tensor
    lead = (len(jobs),) if len(jobs) > 1 else ()
    infos = [j.tensor for j in jobs]
    if first.quant is not None:
        infos += [j.tensor.quant.scale for j in jobs]
    weights = device.receive((*lead, *first.shape), _dtype(first))
    dests = [weights[i] if lead else weights for i in range(len(jobs))]
    scales = None
    if first.quant is not None:
        scales = device.receive((*lead, *first.quant.scale.shape), _dtype(first.quant.scale))
        dests += [scales[i] if lead else scales for i in range(len(jobs))]
    flat = [d.view(-1).view(torch.uint8) for d in dests]

    def put(i: int, position: int, chunk: torch.Tensor) -> None:
        ring.fence(device.copy_in(flat[i][position : position + chunk.numel()], chunk))

    read_chunks(infos, ring.take, put)
    device.received()
    if scales is None:
        return weights
    return Stored(weights, scales, first.quant.scheme, first.quant.block)


def _dtype(info) -> torch.dtype:
    from streamscan.checkpoint.formats.safetensors import torch_dtype

    return torch_dtype(info.dtype)


def read_job(job: Job, stored: bool, pieces: Pieces | None) -> Read:
    """The job's matrix read into host memory: as read_tensor gives it, or with STORED a whole FP8/MXFP4
    weight as stored (reader.Stored); with PIECES nothing is read yet (the worker reads the pieces while it
    scores)."""
    start = time.perf_counter()
    if pieces is not None:
        return pieces, 0.0, None
    try:
        if stored and job.part is None and job.tensor.quant is not None:
            tensor = read_stored(job.tensor)
        else:
            tensor = read_tensor(job.tensor) if job.part is None else read_tensor(job.tensor, job.part)
    except Exception as err:  # becomes the job's error Result
        return None, time.perf_counter() - start, err
    return tensor, time.perf_counter() - start, None


def streamable(job: Job, stored: bool) -> bool:
    """Whether a GPU worker streams JOB's matrix (a whole tensor that :func:`reader.stageable` allows)."""
    return job.part is None and stageable(job.tensor, stored)
