"""spectra: every scored matrix's singular values (float64, descending), kept beside the journal.

Stored as safetensors files in ``spectra/``, keyed by the journal's result names, each a complete file
written under a temporary name, fsync'd and renamed (a kill leaves whole files only):
- ``segment-<rank>-<n>.safetensors``: the spectra buffered since the last one, written (and fsync'd) by
  ``SpectraWriter.flush`` just before the journal commits a batch of records (journal group commit), so every
  journaled matrix has its spectrum on disk; a kill loses the buffered spectra together with the uncommitted
  records they belong to, and the resume recomputes both.
``<rank>`` is ``main`` for a single-process scan, the 5-digit rank or shard otherwise. Ranks write side by
side in the shared directory, so a merge needs no copying.

A scan that finds journaled scores without a spectrum (an older scan, or one run with --no-spectra before)
rescans them when it keeps spectra and the directory already held spectra (``missing``); ``streamscan
metrics`` marks any still missing as such.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SPECTRA_DIR = "spectra"
FORMAT = "streamscan-spectra-1"
_SEGMENT = re.compile(r"^segment-(main|\d{5})-(\d{6})\.safetensors$")


def spectra_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / SPECTRA_DIR


def _regular(path: Path) -> bool:
    """PATH is a regular file itself (a planted symlink is never followed)."""
    try:
        if stat.S_ISREG(os.lstat(path).st_mode):
            return True
    except OSError:
        return False
    log.warning("%s: not a regular file (a symlink?); ignored, remove it", path)
    return False


def segments(out_dir: str | Path) -> list[Path]:
    """The complete segment files in OUT_DIR, in reading order (rank, then number); symlinks are ignored."""
    root = spectra_dir(out_dir)
    if not root.is_dir():
        return []
    found = [(m.group(1), int(m.group(2)), p) for p in root.iterdir() if (m := _SEGMENT.match(p.name))]
    ordered = sorted(found, key=lambda t: (t[0] != "main", t[0], t[1]))
    return [p for *_, p in ordered if _regular(p)]


def _readable(path: Path) -> bool:
    """Whether PATH opens as a safetensors file; a corrupt or truncated segment is skipped with a one-line
    warning (its matrices count as without a spectrum: the next scan recomputes them)."""
    try:
        with safe_open(path, framework="pt") as f:
            f.keys()
        return True
    except (SafetensorError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        log.warning("%s: unreadable spectra segment (%s); ignored: rerun the scan to recompute them", path, first)
        return False


def kept(out_dir: str | Path) -> bool:
    """True if a scan in OUT_DIR keeps spectra (the directory is made when such a scan starts)."""
    return spectra_dir(out_dir).is_dir()


def stored_names(out_dir: str | Path) -> set[str]:
    """Names with a stored spectrum (headers only)."""
    names: set[str] = set()
    for path in filter(_readable, segments(out_dir)):
        with safe_open(path, framework="pt") as f:
            names.update(f.keys())
    return names


def load_spectra(out_dir: str | Path, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """Stored singular values by name (all, or only NAMES)."""
    wanted = set(names) if names is not None else None
    out: dict[str, torch.Tensor] = {}
    for path in filter(_readable, segments(out_dir)):
        try:
            with safe_open(path, framework="pt") as f:
                got = {key: f.get_tensor(key) for key in f.keys() if wanted is None or key in wanted}
        except (SafetensorError, OSError, ValueError) as err:  # a header that opens, data that does not
            log.warning("%s: unreadable spectra segment (%s); ignored: rerun the scan to recompute them", path, err)
            continue
        out.update(got)
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


def _serialize(tensors: dict[str, torch.Tensor]) -> bytes:
    """The segment's bytes, as ``safetensors.torch.save(tensors, metadata)`` makes them, through safetensors'
    own ``serialize`` given each (contiguous, CPU) spectrum's buffer: save's per-tensor checks for shared and
    sparse storage cost ~25 us a tensor, and a segment holds a journal commit's worth of spectra."""
    import numpy as np
    from safetensors import TensorSpec, serialize

    arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in tensors.items()}  # alive until serialize returns
    specs = {
        k: TensorSpec(
            dtype=str(tensors[k].dtype).split(".")[-1], shape=a.shape, data_ptr=a.ctypes.data, data_len=a.nbytes
        )
        for k, a in arrays.items()
    }
    return bytes(serialize(specs, metadata={"format": FORMAT}))


def _save(tensors: dict[str, torch.Tensor], final: Path) -> Path:
    """Write a segment to a fresh ``mkstemp`` file in its directory (O_EXCL: a planted symlink is never
    followed), fsync it and rename it over FINAL (a symlink there is replaced, its target untouched)."""
    data = _serialize(tensors)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)
    return final


def write_segment(out_dir: str | Path, spectra: dict[str, torch.Tensor], rank: int | None = None) -> Path:
    """Store many spectra at once as the next segment of RANK (imports, benchmarks)."""
    root = spectra_dir(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tag = _tag(rank)
    n = _next_number(root, tag)
    import torch

    return _save(
        {k: v.to(torch.float64).contiguous() for k, v in spectra.items()}, root / f"segment-{tag}-{n:06d}.safetensors"
    )


def _tag(rank: int | None) -> str:
    return "main" if rank is None else f"{rank:05d}"


def _next_number(root: Path, tag: str) -> int:
    """The number of TAG's next segment in ROOT (after the highest there)."""
    found = (int(m.group(2)) for p in root.iterdir() if (m := _SEGMENT.match(p.name)) and m.group(1) == tag)
    return 1 + max(found, default=0)


class SpectraWriter:
    """Buffers each spectrum as it arrives (``add``, thread-safe, from the workers) and writes the buffer as
    one segment on ``flush`` (called by the journal before each commit) and on ``close``."""

    def __init__(self, out_dir: str | Path, rank: int | None = None):
        self.root = spectra_dir(out_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tag = _tag(rank)
        self._lock = threading.Lock()
        self._buf: dict[str, torch.Tensor] = {}
        self._next = _next_number(self.root, self.tag)
        for stale in self.root.glob(f".*-{self.tag}-*.tmp"):  # a kill mid-write
            stale.unlink(missing_ok=True)
        self.written = 0

    def _number(self) -> int:
        with self._lock:
            n = self._next
            self._next += 1
            return n

    def add(self, name: str, singular_values: torch.Tensor) -> None:
        """Buffer NAME's spectrum (thread-safe, from the workers); ``flush`` makes the buffer a segment. The
        journal calls ``flush`` before it commits a batch (``Journal.before_commit``), so every journaled
        matrix has its spectrum on disk, at the cost of one segment per journal commit, not a file per matrix."""
        import torch

        S = singular_values
        if S.dtype != torch.float64 or S.device.type != "cpu" or not S.is_contiguous() or S.requires_grad:
            S = S.detach().to("cpu", torch.float64).contiguous()
        with self._lock:
            self._buf.pop(name, None)  # a later record of the same name wins (kept last in the segment)
            self._buf[name] = S

    def flush(self) -> Path | None:
        """Write the buffered spectra as the next segment (None when nothing is buffered)."""
        with self._lock:
            buf, self._buf = self._buf, {}
        if not buf:
            return None
        final = _save(buf, self.root / f"segment-{self.tag}-{self._number():06d}.safetensors")
        self.written += len(buf)
        return final

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> SpectraWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
