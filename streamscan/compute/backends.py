"""backends: a device as the scheduler drives it -- where a job's matrix goes and where its score is computed.

The scheduler (scheduler.py) knows devices only through :class:`Device`: its memory right now, how a host
tensor reaches it, and how it scores a matrix, a same-shape stack or a matrix read in pieces. Two real ones
live here: :class:`CpuDevice` (torch on the host's cores) and :class:`CudaDevice` (one GPU; matrices streamed
in on their own CUDA stream from a ring of pinned buffers, staging.py). Simulated GPUs for tests and benchmarks
implement the same interface beside them (tests/fixtures/simulated.py), never as hooks in this code.

What a device is given: a ``torch.Tensor`` in the stored dtype (on the device already when a GPU worker streamed
it in: ``receive``, ``copy_in``, ``received``), a :class:`~streamscan.checkpoint.reader.Stored` FP8/MXFP4 weight
as stored (dequantized on the device), or a :class:`~streamscan.checkpoint.reader.Pieces`.
"""

from __future__ import annotations

import logging
import threading

import torch

from streamscan.checkpoint.reader import Pieces, Stored
from streamscan.compute import solver
from streamscan.compute.devices import gpu_memory
from streamscan.compute.spectrum import SNR, score, score_batch, score_pieces

log = logging.getLogger(__name__)


class Device:
    """The interface: ``kind`` ("cpu" | "cuda") decides the placement policy's view of it (placement.py),
    ``name`` is what results and stats show, ``pinned`` whether the ring buffers its matrices are streamed
    through are page-locked (staging.stream)."""

    kind = "cpu"
    pinned = False
    shown: str | None = None  # the solver path stats show for it (None: the path that ran)

    def __init__(self, name: str):
        self.name = name

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes a job of ours could use right now (asked of GPUs only)."""
        raise NotImplementedError

    def enter(self) -> None:
        """Called once in each worker thread of the device before its first job."""

    def rates(self) -> solver.Rates | None:
        """The device's measured matmul rates for the solver choice, or None (the defaults apply)."""
        return None

    def receive(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor on the device that a matrix is streamed into (staging.stream; GPUs only)."""
        raise NotImplementedError

    def copy_in(self, dest: torch.Tensor, chunk: torch.Tensor):
        """Copy the host bytes CHUNK (a staging ring buffer) into DEST (bytes of a received tensor). Returns
        what says when CHUNK may be overwritten -- something with ``synchronize()`` -- or None: now."""
        raise NotImplementedError

    def received(self) -> None:
        """What runs next on the device sees every copy_in made so far."""

    def score(self, matrix, method: str, path: str) -> SNR:
        raise NotImplementedError

    def score_batch(self, stack, method: str, path: str) -> list[SNR]:
        """One SNR per matrix of a [B, m, n] stack (a tensor, or a Stored whose weight is the stack)."""
        raise NotImplementedError

    def score_pieces(self, pieces: Pieces) -> SNR:
        raise NotImplementedError


def on_host(matrix) -> torch.Tensor:
    """A matrix or stack as a host tensor: a stored FP8/MXFP4 weight dequantized on the CPU."""
    return matrix.dequantize("cpu") if isinstance(matrix, Stored) else matrix


class CpuDevice(Device):
    """torch on the host (one thread per job: placement.cpu_threads, set by the scheduler's worker)."""

    def score(self, matrix, method: str, path: str) -> SNR:
        return score(on_host(matrix), method, path=path)

    def score_batch(self, stack, method: str, path: str) -> list[SNR]:
        return score_batch(on_host(stack), method, path=path)

    def score_pieces(self, pieces: Pieces) -> SNR:
        return score_pieces(pieces, pieces.shape)


class CudaDevice(Device):
    """One CUDA GPU. Host tensors go over on the device's copy stream (asynchronous from pinned staging
    buffers, so the worker thread is free while the DMA runs and a copy does not wait behind kernels queued
    on the compute stream); the compute stream waits for the copy's event, never the host."""

    kind = "cuda"
    pinned = True

    def __init__(self, name: str):
        super().__init__(name)
        self.index = torch.device(name).index or 0
        self._rates: solver.Rates | None = None
        self._probed = False
        self._lock = threading.Lock()
        self._copies: torch.cuda.Stream | None = None

    def memory(self) -> tuple[int, int]:
        return gpu_memory(self.name)

    def enter(self) -> None:
        torch.cuda.set_device(self.index)

    def rates(self) -> solver.Rates | None:
        with self._lock:
            if not self._probed:
                self._probed = True
                try:
                    self._rates = solver.probe(self.name)
                except Exception as err:  # a failed probe must not fail the scan: the defaults apply
                    log.info("%s: matmul rate probe failed (%s); default solver path", self.name, err)
        return self._rates

    def _copy_stream(self) -> torch.cuda.Stream:
        """The device's copy stream, made once (its two worker slots may ask at the same time)."""
        with self._lock:
            if self._copies is None:
                self._copies = torch.cuda.Stream(self.index)
            return self._copies

    def receive(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Allocated on the copy stream (its memory is free of earlier kernels there) and marked as used on the
        compute stream (not reused before the kernels queued there with it are done)."""
        with torch.cuda.stream(self._copy_stream()):
            out = torch.empty(shape, dtype=dtype, device=self.name)
        out.record_stream(torch.cuda.current_stream(self.index))
        return out

    def copy_in(self, dest: torch.Tensor, chunk: torch.Tensor):
        """An asynchronous copy on the copy stream (from a pinned chunk), and its event."""
        copies = self._copy_stream()
        with torch.cuda.stream(copies):
            dest.copy_(chunk, non_blocking=chunk.is_pinned())
            done = torch.cuda.Event(blocking=True)  # waited for by sleeping, not spinning on a core
            done.record(copies)
        return done

    def received(self) -> None:
        torch.cuda.current_stream(self.index).wait_stream(self._copy_stream())

    def upload(self, tensor: torch.Tensor) -> torch.Tensor:
        """TENSOR on this GPU, copied on the copy stream; the current (compute) stream waits for the copy."""
        if tensor.device.type == "cuda":
            return tensor
        copies = self._copy_stream()
        compute = torch.cuda.current_stream(self.index)
        with torch.cuda.stream(copies):  # allocated there: memory no earlier kernel of the copy stream still uses
            out = tensor.to(self.name, non_blocking=tensor.is_pinned())
        compute.wait_stream(self._copies)
        out.record_stream(compute)
        return out

    def _on_device(self, matrix) -> torch.Tensor:
        if isinstance(matrix, Stored):  # the FP8/MXFP4 bytes go over as stored, dequantized here
            return Stored(
                self.upload(matrix.weight), self.upload(matrix.scale), matrix.scheme, matrix.block
            ).dequantize(self.name)
        return self.upload(matrix)

    def score(self, matrix, method: str, path: str) -> SNR:
        with torch.cuda.device(self.index):
            return score(self._on_device(matrix), method, self.name, path)

    def score_batch(self, stack, method: str, path: str) -> list[SNR]:
        with torch.cuda.device(self.index):
            return score_batch(self._on_device(stack), method, self.name, path)

    def score_pieces(self, pieces: Pieces) -> SNR:
        with torch.cuda.device(self.index):
            return score_pieces(pieces, pieces.shape, self.name)


def device_for(name: str) -> Device:
    """The real device a --devices name ("cpu", "cuda:N") or a tensor's device stands for."""
    return CudaDevice(name) if name.startswith("cuda") else CpuDevice(name)
