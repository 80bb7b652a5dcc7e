"""staging: a small pool of reusable host buffers that batches are stacked into before they go to a device.

With CUDA the buffers are pinned (page-locked), so the host-to-device copy is a DMA that can overlap with
compute; on a machine without CUDA pinned memory is unavailable and the same code hands out plain buffers.
A buffer is reused for any later request of the same dtype that fits in it (a view of its first elements).
"""

from __future__ import annotations

import math
import threading

import torch


def pinning_available() -> bool:
    return torch.cuda.is_available()


class StagingPool:
    """``take(shape, dtype)`` -> a buffer (pinned when ``pinned``); ``give(buffer)`` returns it for reuse.
    At most ``keep`` idle buffers are kept (the largest); the rest are freed."""

    def __init__(self, pinned: bool | None = None, keep: int = 4):
        self.pinned = pinning_available() if pinned is None else pinned
        self.keep = keep
        self._idle: list[torch.Tensor] = []  # flat buffers
        self._lock = threading.Lock()
        self.allocated = 0  # buffers created (tests: reuse means this stays small)

    def take(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        n = math.prod(shape)
        with self._lock:
            fits = [b for b in self._idle if b.dtype == dtype and b.numel() >= n]
            if fits:
                buf = min(fits, key=torch.Tensor.numel)
                self._idle = [b for b in self._idle if b is not buf]
                return buf[:n].view(shape)
            self.allocated += 1
        return torch.empty(n, dtype=dtype, pin_memory=self.pinned).view(shape)

    def give(self, buffer: torch.Tensor) -> None:
        flat = buffer._base if buffer._base is not None else buffer.view(-1)
        with self._lock:
            self._idle.append(flat)
            self._idle.sort(key=torch.Tensor.numel, reverse=True)
            del self._idle[self.keep :]

    def stack(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        """The tensors (same shape and dtype) copied into one [B, ...] buffer of the pool."""
        out = self.take((len(tensors), *tensors[0].shape), tensors[0].dtype)
        for i, t in enumerate(tensors):
            out[i].copy_(t)
        return out
