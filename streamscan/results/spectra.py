"""spectra: every scored matrix's singular values (float64, descending), kept beside the journal.

Stored as safetensors files in ``spectra/``, keyed by the journal's result names, each a complete file
written under a temporary name, fsync'd and renamed (a kill leaves whole files only):
- ``segment-<rank>-<n>.safetensors``: up to 256 spectra (or 64 MiB, or 30 s of them). ``SpectraWriter.flush``
  writes the spectra buffered since the last flush just before the journal commits a batch of records
  (journal group commit), so every journaled matrix has its spectrum on disk, and merges those parts into one
  segment once they fill one (see ``SpectraWriter``); a kill loses the buffered spectra together with the
  uncommitted records they belong to, and the resume recomputes both.
``<rank>`` is ``main`` for a single-process scan, the 5-digit rank or shard otherwise. Ranks write side by
side in the shared directory, so a merge needs no copying.

Every spectrum read is checked: float64, one dimension, at most min(m, n) of its matrix's values (from the
header, before its data is read), each finite, >= 0 and <= MAX_VALUE. A bad spectrum or an unreadable
segment is skipped with one warning; its matrices count as without a spectrum. A ``spectra`` directory
or segment that is a symlink is never followed (lstat checks); writers refuse it in one line.

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
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import SafetensorError, safe_open

from streamscan.errors import OutputError
from streamscan.results.files import fsync_dir, os_error, write_atomic

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SPECTRA_DIR = "spectra"
FORMAT = "streamscan-spectra-1"
MAX_VALUE = 1e150  # a kept singular value's bound: sums of squares of min(m, n) of them stay finite
_SEGMENT = re.compile(r"^segment-(main|\d{5})-(\d{6})\.safetensors$")


def spectra_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / SPECTRA_DIR


def _root(out_dir: str | Path) -> Path | None:
    """OUT_DIR's spectra directory for reading, or None when there is none; a ``spectra`` that is a symlink
    (or not a directory) is never followed: a one-line warning, and no spectra."""
    root = spectra_dir(out_dir)
    try:
        mode = os.lstat(root).st_mode
    except OSError:
        return None
    if not stat.S_ISDIR(mode):
        log.warning("%s: not a directory (a symlink?); no spectra are read through it: remove it", root)
        return None
    return root


def _writable_root(out_dir: str | Path) -> Path:
    """OUT_DIR's spectra directory for writing, made if need be; a symlink there is refused in one line."""
    root = spectra_dir(out_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass
    except OSError as err:
        raise os_error(root, err, "cannot create the directory") from None
    if not stat.S_ISDIR(os.lstat(root).st_mode):
        raise OutputError(
            f"{root}: not a directory (a symlink?); streamscan never writes through one, remove it and rerun"
        )
    return root


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
    root = _root(out_dir)
    if root is None:
        return []
    found = [(m.group(1), int(m.group(2)), p) for p in root.iterdir() if (m := _SEGMENT.match(p.name))]
    ordered = sorted(found, key=lambda t: (t[0] != "main", t[0], t[1]))
    return [p for *_, p in ordered if _regular(p)]


def kept(out_dir: str | Path) -> bool:
    """True if a scan in OUT_DIR keeps spectra (the directory is made when such a scan starts)."""
    return _root(out_dir) is not None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def check_spectrum(S: torch.Tensor, shape: tuple[int, ...] | None) -> str | None:
    """Why S cannot be the kept spectrum of a matrix of SHAPE (None when it can): float64, one dimension,
    1 to min(m, n) values, each finite, >= 0 and <= MAX_VALUE (so sums of squares stay finite)."""
    import torch

    if S.dtype != torch.float64:
        return f"dtype {str(S.dtype).split('.')[-1]}, not float64"
    if S.dim() != 1 or S.numel() == 0:
        return f"shape {list(S.shape)}, not a non-empty vector"
    if shape is not None and len(shape) == 2 and S.numel() > min(shape):
        return f"{S.numel()} values for a {shape[0]}x{shape[1]} matrix (at most {min(shape)})"
    if not bool(((S >= 0) & (S <= MAX_VALUE)).all()):  # also False for NaN
        return f"values outside [0, {MAX_VALUE:g}] or not finite"
    return None


def _read_segment(
    path: Path, wanted: Mapping[str, tuple[int, ...] | None] | None
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(good spectra, {name: why bad}) of the WANTED names (all when None) in one segment; a length over
    the matrix's min(m, n) is refused from the header, before the data is read. Raises _Unreadable."""
    good: dict[str, torch.Tensor] = {}
    bad: dict[str, str] = {}
    try:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if wanted is not None and key not in wanted:
                    continue
                shape = wanted.get(key) if wanted is not None else None
                head = f.get_slice(key)
                dims = head.get_shape()
                if head.get_dtype() != "F64" or len(dims) != 1:
                    bad[key] = f"dtype {head.get_dtype()}, shape {list(dims)}: not a float64 vector"
                    continue
                if shape is not None and len(shape) == 2 and dims[0] > min(shape):
                    bad[key] = f"{dims[0]} values for a {shape[0]}x{shape[1]} matrix (at most {min(shape)})"
                    continue
                S = f.get_tensor(key)
                why = check_spectrum(S, shape)
                if why is None:
                    good[key] = S
                else:
                    bad[key] = why
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as err:
        raise _Unreadable(_first_line(err)) from None
    return good, bad


class _Unreadable(Exception):
    pass


def _scan_segments(
    out_dir: str | Path, wanted: Mapping[str, tuple[int, ...] | None] | None, set_aside: bool, keep: bool
) -> dict[str, torch.Tensor | None]:
    """Every good stored spectrum of the WANTED names by name (values only with KEEP). The latest segment
    holding a name wins; when its spectrum is bad, the name has none (the next run rescans it). Each
    unreadable segment and each bad spectrum not replaced by a later good one is named in one warning. With SET_ASIDE (the caller holds the scan's lock) an unreadable segment is renamed to
    ``*.bad``, so later commands do not warn about it again."""
    out: dict[str, torch.Tensor | None] = {}
    bad: dict[str, tuple[Path, str]] = {}
    for path in segments(out_dir):
        try:
            good, wrong = _read_segment(path, wanted)
        except _Unreadable as err:
            aside = ""
            if set_aside:
                try:
                    os.replace(path, path.with_name(path.name + ".bad"))
                    aside = f"; set aside as {path.name}.bad"
                except OSError:
                    pass
            log.warning(
                "%s: unreadable spectra segment (%s); ignored%s: rerun the scan to recompute its spectra",
                path,
                err,
                aside,
            )
            continue
        for name, why in wrong.items():  # the latest record wins, a bad one too: the next run replaces it
            out.pop(name, None)
            bad[name] = (path, why)
        for name, S in good.items():
            out[name] = S if keep else None
            bad.pop(name, None)
    for name, (path, why) in bad.items():
        log.warning("%s: spectrum of %s: %s; ignored: rerun the scan to recompute it", path, ascii(name), why)
    return out


def _wanted(names: Iterable[str] | Mapping[str, tuple[int, ...] | None] | None):
    if names is None or isinstance(names, Mapping):
        return names
    return dict.fromkeys(names)


def stored_names(out_dir: str | Path, names=None, *, set_aside: bool = False) -> set[str]:
    """Names with a good stored spectrum (of NAMES, a mapping to their matrices' shapes or names only)."""
    return set(_scan_segments(out_dir, _wanted(names), set_aside, keep=False))


def load_spectra(out_dir: str | Path, names=None) -> dict[str, torch.Tensor]:
    """Stored singular values by name: all, or only NAMES (names, or a mapping of names to their matrices'
    shapes: a spectrum longer than min(m, n) is refused unread). Bad spectra and unreadable segments are
    skipped with one warning each (those matrices count as without a spectrum)."""
    return _scan_segments(out_dir, _wanted(names), False, keep=True)  # type: ignore[return-value]


def missing(
    out_dir: str | Path,
    done: Iterable[str],
    scored: Iterable[str] | Mapping[str, tuple[int, ...] | None],
    *,
    set_aside: bool = False,
) -> set[str]:
    """Of the SCORED names (a spectrum expected; a mapping to their shapes checks lengths), those DONE
    without a good stored spectrum; empty when the scan in OUT_DIR does not keep spectra. SET_ASIDE: the
    caller holds the scan's lock (unreadable segments are renamed aside)."""
    if not kept(out_dir):
        return set()
    done = set(done)
    expected = {n: s for n, s in _wanted(scored).items() if n in done}
    have = stored_names(out_dir, expected, set_aside=set_aside)
    return {n for n in expected if n not in have}


def clear(out_dir: str | Path) -> None:
    """Remove the stored spectra (a --fresh scan, under the scan's lock); a symlink there is removed itself,
    its target untouched."""
    root = spectra_dir(out_dir)
    try:
        mode = os.lstat(root).st_mode
    except FileNotFoundError:
        return
    try:
        if stat.S_ISDIR(mode):
            shutil.rmtree(root)
        else:
            root.unlink()
    except OSError as err:
        raise os_error(root, err, "cannot remove the old spectra") from None


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
    """Write a segment whole (a fresh temporary file, fsync'd, renamed over FINAL: a symlink there is replaced,
    its target untouched; the directory fsync'd)."""
    return write_atomic(final, _serialize(tensors), durable=True)


def write_segment(out_dir: str | Path, spectra: dict[str, torch.Tensor], rank: int | None = None) -> Path:
    """Store many spectra at once as the next segment of RANK (imports, benchmarks)."""
    root = _writable_root(out_dir)
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


# A segment's parts are merged into one file once they hold SEGMENT_MATRICES spectra or SEGMENT_BYTES, or the
# first of them is SEGMENT_SECONDS old, and when the writer closes.
SEGMENT_MATRICES = 256
SEGMENT_BYTES = 64 << 20
SEGMENT_SECONDS = 30.0


class SpectraWriter:
    """Buffers each spectrum as it arrives (``add``, thread-safe, from the workers) and writes the buffer on
    ``flush`` (called by the journal before each commit, so a committed record's spectrum is on disk).

    Each flush writes a part (a segment file of its own); the parts since the last segment closed are kept in
    memory too, and once they hold 256 spectra or 64 MiB, or the first is 30 s old, and on ``close``, they are
    written again as one segment, numbered after them, and removed: a scan leaves one segment per 256 matrices,
    64 MiB or 30 s, not one per journal commit. A kill between the two leaves the parts beside the segment
    that repeats them (same values; the later file wins on reading)."""

    def __init__(self, out_dir: str | Path, rank: int | None = None):
        self.root = _writable_root(out_dir)
        self.tag = _tag(rank)
        self._lock = threading.Lock()
        self._buf: dict[str, torch.Tensor] = {}
        self._next = _next_number(self.root, self.tag)
        for stale in self.root.glob(f".*-{self.tag}-*.tmp"):  # a kill mid-write
            stale.unlink(missing_ok=True)
        self.written = 0
        self._parts: list[Path] = []  # written since the last segment closed, oldest first
        self._group: dict[str, torch.Tensor] = {}  # their spectra, a later one of a name last
        self._group_bytes = 0
        self._group_since = 0.0

    def _number(self) -> int:
        with self._lock:
            n = self._next
            self._next += 1
            return n

    def _path(self) -> Path:
        return self.root / f"segment-{self.tag}-{self._number():06d}.safetensors"

    def add(self, name: str, singular_values: torch.Tensor) -> None:
        """Buffer NAME's spectrum (thread-safe, from the workers); ``flush`` writes the buffer."""
        import torch

        S = singular_values
        if S.dtype != torch.float64 or S.device.type != "cpu" or not S.is_contiguous() or S.requires_grad:
            S = S.detach().to("cpu", torch.float64).contiguous()
        with self._lock:
            self._buf.pop(name, None)  # a later record of the same name wins (kept last in the segment)
            self._buf[name] = S

    def flush(self) -> Path | None:
        """Write the buffered spectra (None when nothing is buffered); the part, or the segment it closed."""
        with self._lock:
            buf, self._buf = self._buf, {}
        if not buf:
            return None
        path = _save(buf, self._path())
        self.written += len(buf)
        if not self._parts:
            self._group_since = time.monotonic()
        self._parts.append(path)
        for name, S in buf.items():
            self._group.pop(name, None)
            self._group[name] = S
            self._group_bytes += S.nbytes
        full = len(self._group) >= SEGMENT_MATRICES or self._group_bytes >= SEGMENT_BYTES
        if full or time.monotonic() - self._group_since >= SEGMENT_SECONDS:
            return self._close_segment() or path
        return path

    def _close_segment(self) -> Path | None:
        """The parts written since the last segment closed, as one segment (None when there is one part or none)."""
        parts, group = self._parts, self._group
        self._parts, self._group, self._group_bytes = [], {}, 0
        if len(parts) < 2:
            return None
        merged = _save(group, self._path())
        for part in parts:
            part.unlink(missing_ok=True)
        fsync_dir(self.root)
        return merged

    def close(self) -> None:
        self.flush()
        self._close_segment()

    def __enter__(self) -> SpectraWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
