"""devices: what --devices names, and what each device has free right now (the only hardware queries)."""

from __future__ import annotations

import logging
import os
import re

import psutil

from streamscan.errors import UsageError

log = logging.getLogger(__name__)

RAM_HEADROOM = 0.25  # of available RAM left to the rest of the machine by the default --max-memory
RAM_HEADROOM_MIN = 1 << 30


def cuda_count() -> int:
    import torch  # here, not at the top: `inspect` and `merge` ask only for default_workers

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def default_workers() -> int:
    return max(1, psutil.cpu_count(logical=False) or os.cpu_count() or 1)


def parse_devices(spec: str | None, gpus: int | None = None) -> list[str]:
    """``auto`` | ``cpu`` | GPU indices and ``cpu`` mixed (``0,1,cpu``, ``cuda:2``) -> ["cuda:0", …, "cpu"].

    ``auto`` is every visible GPU, or the CPU when there is none. ``gpus`` overrides the visible count (tests).
    """
    gpus = cuda_count() if gpus is None else gpus
    text = (spec or "auto").strip().lower()
    if text == "auto":
        return [f"cuda:{i}" for i in range(gpus)] or ["cpu"]
    out: list[str] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "cpu":
            name = "cpu"
        elif m := re.fullmatch(r"(?:cuda:?)?(\d+)", part):
            index = int(m.group(1))
            if gpus == 0:
                raise UsageError(f"--devices {spec}: no CUDA GPU is visible here; use --devices cpu")
            if index >= gpus:
                raise UsageError(
                    f"--devices {spec}: GPU {index} does not exist (visible: 0-{gpus - 1}; check CUDA_VISIBLE_DEVICES)"
                )
            name = f"cuda:{index}"
        else:
            raise UsageError(f"--devices {spec}: {part!r} is not a GPU index or 'cpu'; e.g. --devices 0,1,cpu or auto")
        if name not in out:
            out.append(name)
    if not out:
        raise UsageError(f"--devices {spec!r}: names no device; e.g. --devices 0,1,cpu, cpu or auto")
    return out


def gpu_memory(name: str) -> tuple[int, int]:
    """(free, total) bytes of a GPU as our jobs can use them: the driver's free memory plus what our own
    caching allocator holds unused. Other processes' use is respected because it is not free."""
    import torch

    index = torch.device(name).index
    free, total = torch.cuda.mem_get_info(index)
    cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
    return free + cached, total


def parse_size(text: str | int | None, option: str = "--max-memory") -> int | None:
    """'24G', '512MiB', '1.5TB', plain bytes -> bytes (binary units either way: a GB here is 2**30)."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([\d.]+)\s*([kmgt]?)(i?b?)\s*", str(text).lower())
    if not m:
        raise UsageError(f"{option} {text}: write it as bytes or with a unit, e.g. 24G or 512M")
    scale = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}[m.group(2)]
    return int(float(m.group(1)) * scale)


def default_max_memory() -> int:
    """What the scan may hold in RAM: available memory minus a headroom (25%, at least 1 GiB)."""
    avail = psutil.virtual_memory().available
    return max(256 << 20, avail - max(RAM_HEADROOM_MIN, int(avail * RAM_HEADROOM)))
