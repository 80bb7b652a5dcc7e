"""staging: reusable host buffers that a GPU's matrices are read straight into, and the reads themselves.

A whole safetensors tensor (or a block-scaled FP8 weight and its scales, as stored) is read with pread
from the page cache into a buffer of the pool (reader.read_into): no fresh allocation whose pages fault in
on first touch, no second copy into a stack, no pinning per tensor. A batch of same-shape matrices is read
member by member into its slot of one [B, m, n] buffer. With CUDA the buffers are pinned (page-locked), so
the host-to-device copy is a DMA that runs on the device's copy stream (backends.CudaDevice); without CUDA
the same code hands out plain buffers. A buffer is reused for any later request of the same dtype that
fits in it (a view of its first elements); at most ``keep`` idle buffers stay. Reuse is what makes this
fast: a fresh buffer's pages fault in on first touch, which halves the rate of a read into it (measured
in bench/RESULTS.md, "feed"), so a GPU's batches are capped at STAGE_BYTES and fill the same few buffers.
"""

from __future__ import annotations

import math
import threading
import time

import torch

from streamscan.checkpoint.reader import Pieces, Stored, read_into, read_stored, read_tensor, stageable
from streamscan.records import Job

STAGE_BYTES = 64 << 20  # most bytes as stored of one batch sent to a GPU: its stack fills one reused buffer

Read = tuple[object, float, BaseException | None]  # (tensor | Stored | Pieces | None, seconds, error)


def pinning_available() -> bool:
    return torch.cuda.is_available()


class StagingPool:
    """``take(shape, dtype)`` -> a buffer (pinned when ``pinned``); ``give(buffer)`` returns it for reuse.
    At most ``keep`` idle buffers are kept (the largest); the rest are freed."""

    def __init__(self, pinned: bool | None = None, keep: int = 4):
        self.pinned = pinning_available() if pinned is None else pinned
        self.keep = keep
        self._idle: list[torch.Tensor] = []  # flat buffers
        self._lent: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(view) -> (view, its flat buffer)
        self._lock = threading.Lock()
        self.allocated = 0  # buffers created (tests: reuse means this stays small)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        with self._lock:
            fits = [b for b in self._idle if b.dtype == dtype and b.numel() >= n]
            if fits:
                buf = min(fits, key=torch.Tensor.numel)
                self._idle = [b for b in self._idle if b is not buf]
            else:
                buf = None
                self.allocated += 1
        if buf is None:
            buf = torch.empty(n, dtype=dtype, pin_memory=self.pinned)
        view = buf[:n].view(shape)
        with self._lock:
            self._lent[id(view)] = (view, buf)
        return view

    def give(self, buffer) -> None:
        """Return a buffer of the pool (a Stored's weight and scales too); anything else is left alone."""
        if isinstance(buffer, Stored):
            self.give(buffer.weight)
            self.give(buffer.scale)
            return
        with self._lock:
            lent = self._lent.pop(id(buffer), None)
            if lent is None:
                return
            flat = lent[1]
            self._idle.append(flat)
            self._idle.sort(key=torch.Tensor.numel, reverse=True)
            del self._idle[self.keep :]

    def stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The tensors (same shape and dtype) copied into one [B, ...] buffer of the pool."""
        out = self.take((len(tensors), *tensors[0].shape), tensors[0].dtype)
        for i, t in enumerate(tensors):
            out[i].copy_(t)
        return out

    def read(self, jobs: list[Job], have: dict[str, object] | None = None):
        """The whole matrices of JOBS (one shape, dtype and quantization, each ``stageable``) read straight
        into one buffer: a [B, m, n] tensor, or a Stored whose weight and scales are [B, ...] stacks; one job
        without the batch dimension. HAVE: members already read (copied into their slot, given back)."""
        have = have or {}
        first = jobs[0].tensor
        lead = (len(jobs),) if len(jobs) > 1 else ()
        weights = self.take((*lead, *first.shape), _dtype(first))
        scales = None
        if first.quant is not None:
            scales = self.take((*lead, *first.quant.scale.shape), _dtype(first.quant.scale))
        try:
            rest = []
            for i, job in enumerate(jobs):
                got = have.get(job.name)
                if got is None:
                    rest.append(i)
                    continue
                slot = slice(None) if not lead else i
                if isinstance(got, Stored):
                    weights[slot].copy_(got.weight)
                    scales[slot].copy_(got.scale)
                else:
                    weights[slot].copy_(got)
                self.give(got)
            if rest:
                read_into([jobs[i].tensor for i in rest], _rows(weights, rest, lead))
                if scales is not None:
                    read_into([jobs[i].tensor.quant.scale for i in rest], _rows(scales, rest, lead))
        except BaseException:
            self.give(weights)
            if scales is not None:
                self.give(scales)
            raise
        if scales is None:
            return weights
        return Stored(weights, scales, first.quant.scheme, first.quant.block)


def _rows(buffer: torch.Tensor, members: list[int], lead: tuple) -> list[torch.Tensor]:
    return [buffer] if not lead else [buffer[i] for i in members]


def _dtype(info) -> torch.dtype:
    from streamscan.checkpoint.formats.safetensors import torch_dtype

    return torch_dtype(info.dtype)


def read_job(job: Job, staging: StagingPool | None, stored: bool, pieces: Pieces | None) -> Read:
    """The job's matrix: into a staging buffer when it can be (see :func:`reader.stageable`), else as
    read_tensor gives it, or with STORED a whole FP8/MXFP4 weight as stored (reader.Stored); with PIECES
    nothing is read yet (the worker reads the pieces while it scores)."""
    start = time.perf_counter()
    if pieces is not None:
        return pieces, 0.0, None
    try:
        if staging is not None and job.part is None and stageable(job.tensor, stored):
            tensor = staging.read([job])
        elif stored and job.part is None and job.tensor.quant is not None:
            tensor = read_stored(job.tensor)
        else:
            tensor = read_tensor(job.tensor) if job.part is None else read_tensor(job.tensor, job.part)
    except Exception as err:  # becomes the job's error Result
        return None, time.perf_counter() - start, err
    return tensor, time.perf_counter() - start, None
