"""spectra: every scored matrix's singular values (float64, descending), kept beside the journal.

Stored as append-only segment files ``spectra/segment-<rank>-<n>.safetensors`` (``<rank>`` is ``main``
for a single-process scan, the 5-digit rank or shard otherwise): each segment is a complete safetensors
file written under a temporary name, fsync'd and renamed, so a kill leaves whole segments only. Keys are
the journal's result names. Segments of every rank sit side by side, so a merge needs no copying; a name
found in several segments keeps the last one read (segments sorted by rank, then number).

Consistency with the journal: a spectrum is buffered when it is computed and written in batches, so a
kill can leave journaled results without a stored spectrum (never the reverse that matters: a spectrum
without a record is ignored). A resumed scan with spectra on rescans those matrices (``missing``);
``streamscan metrics`` marks any still missing as such.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

SPECTRA_DIR = "spectra"
FORMAT = "streamscan-spectra-1"
_SEGMENT = re.compile(r"^segment-(main|\d{5})-(\d{6})\.safetensors$")


def spectra_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / SPECTRA_DIR


def segments(out_dir: str | Path) -> list[Path]:
    """The complete segment files in OUT_DIR, in reading order (rank, then number)."""
    root = spectra_dir(out_dir)
    if not root.is_dir():
        return []
    found = [(m.group(1), int(m.group(2)), p) for p in root.iterdir() if (m := _SEGMENT.match(p.name))]
    return [p for _, _, p in sorted(found, key=lambda t: (t[0] != "main", t[0], t[1]))]


def kept(out_dir: str | Path) -> bool:
    """True if a scan in OUT_DIR keeps spectra (the directory is made when such a scan starts)."""
    return spectra_dir(out_dir).is_dir()


def stored_names(out_dir: str | Path) -> set[str]:
    """Names with a stored spectrum (headers only)."""
    names: set[str] = set()
    for path in segments(out_dir):
        with safe_open(path, framework="pt") as f:
            names.update(f.keys())
    return names


def load_spectra(out_dir: str | Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Stored singular values by name (all, or only NAMES)."""
    wanted = set(names) if names is not None else None
    out: dict[str, torch.Tensor] = {}
    for path in segments(out_dir):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if wanted is None or key in wanted:
                    out[key] = f.get_tensor(key)
    return out


def missing(out_dir: str | Path, done: Iterable[str], scored: Iterable[str]) -> set[str]:
    """Of the SCORED names (a spectrum expected), those DONE without a stored spectrum; empty when the scan in
    OUT_DIR does not keep spectra."""
    if not kept(out_dir):
        return set()
    have = stored_names(out_dir)
    done = set(done)
    return {n for n in scored if n in done and n not in have}


def clear(out_dir: str | Path) -> None:
    """Remove the stored spectra (a --fresh scan)."""
    shutil.rmtree(spectra_dir(out_dir), ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SpectraWriter:
    """Buffers spectra (``add`` is thread-safe) and writes a segment every MAX_ITEMS spectra, MAX_BYTES or
    MAX_SECONDS (checked on ``add`` and ``maybe_flush``), and on ``close``."""

    def __init__(
        self,
        out_dir: str | Path,
        rank: int | None = None,
        *,
        max_items: int = 256,
        max_bytes: int = 64 << 20,
        max_seconds: float = 30.0,
    ):
        self.root = spectra_dir(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = "main" if rank is None else f"{rank:05d}"
        self.max_items, self.max_bytes, self.max_seconds = max_items, max_bytes, max_seconds
        self._lock = threading.Lock()
        self._buf: dict[str, torch.Tensor] = {}
        self._bytes = 0
        self._since = time.monotonic()
        numbers = [
            int(m.group(2)) for p in self.root.iterdir() if (m := _SEGMENT.match(p.name)) and m.group(1) == self.tag
        ]
        self._next = max(numbers, default=0) + 1
        for stale in self.root.glob(f".segment-{self.tag}-*.tmp"):  # a kill mid-write
            stale.unlink(missing_ok=True)
        self.written = 0

    def add(self, name: str, singular_values: torch.Tensor) -> None:
        S = singular_values.detach().to("cpu", torch.float64).contiguous()
        with self._lock:
            self._buf[name] = S
            self._bytes += S.numel() * 8

    def maybe_flush(self) -> None:
        with self._lock:
            due = (
                len(self._buf) >= self.max_items
                or self._bytes >= self.max_bytes
                or (self._buf and time.monotonic() - self._since >= self.max_seconds)
            )
        if due:
            self.flush()

    def flush(self) -> Path | None:
        with self._lock:
            buf, self._buf, self._bytes = self._buf, {}, 0
            self._since = time.monotonic()
            number, self._next = self._next, self._next + 1 if buf else self._next
        if not buf:
            return None
        final = self.root / f"segment-{self.tag}-{number:06d}.safetensors"
        tmp = self.root / f".segment-{self.tag}-{number:06d}.tmp"
        save_file(buf, str(tmp), metadata={"format": FORMAT})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(self.root)
        self.written += len(buf)
        return final

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> SpectraWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
