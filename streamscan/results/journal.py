"""journal: the durable record of finished jobs, one JSON line each, committed in fsync'd batches.

Group commit: ``append`` queues a record; the queue is written and fsync'd as one batch once it holds
``COMMIT_RECORDS`` records or its oldest record has waited ``COMMIT_SECONDS`` (a background thread commits
on time even while no job finishes), and on close, normally or through an exception. The guarantee: a
crash (kill -9, power loss) loses at most the records of the last, uncommitted batch (at most
COMMIT_RECORDS records or COMMIT_SECONDS of work); the journal on disk is always whole committed batches
(plus at most a torn last line, cut off on open), and a resume recomputes the lost records. One fsync
per batch instead of one per record: 3.5 ms per fsync on a local disk, 5-50 ms on NFS or Lustre.

Line 1 is a header with the scan's fingerprint (model files, method, options) and its plan totals.
Every later line is one Result. A torn last line (a kill mid-write) is cut off on open; a name seen
twice keeps its last record (a finished record is never replaced by an error), so nothing is counted
twice. A lock file keeps a second scan out.

Ranks of a multi-node scan (and ``--shard i/N`` runs) write one journal each,
``streamscan.journal.rank-NNNNN.jsonl``, under a shared lock on ``.streamscan.lock`` plus an exclusive
lock of their own: ranks run side by side, while a single-process scan or a merge (exclusive lock) is
refused as long as any of them runs. What is done is the union of every journal in the directory; a single-process
journal opened with the lock held folds the rank journals into itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson

from streamscan.errors import JournalError, StreamscanError
from streamscan.records import (
    DEGENERATE_KINDS,
    JOURNAL_FORMAT,
    Fingerprint,
    Result,
    ScanHeader,
    from_json_snr,
    upgrade_legacy,
)
from streamscan.results.files import open_nofollow, os_error, prepare_dir, write_atomic

log = logging.getLogger(__name__)

JOURNAL_NAME = "streamscan.journal.jsonl"
LOCK_NAME = ".streamscan.lock"
RANK_GLOB = "streamscan.journal.rank-*.jsonl"
FORMAT = JOURNAL_FORMAT
# A batch is committed once its oldest record waited COMMIT_SECONDS or it holds COMMIT_RECORDS records, by
# default (``Journal``'s commit_seconds and commit_records; ScanOptions' fields of the same names).
COMMIT_SECONDS = 0.5
COMMIT_RECORDS = 256


def no_scan(out_dir: Path) -> JournalError:
    return JournalError(f"{out_dir}: no streamscan scan here; run `streamscan run MODEL --out {out_dir}` first")


def rank_journal_name(rank: int) -> str:
    return f"streamscan.journal.rank-{rank:05d}.jsonl"


def rank_lock_name(rank: int) -> str:
    return f".streamscan.rank-{rank:05d}.lock"


def rank_journals(out_dir: str | Path) -> list[Path]:
    """The rank journals in OUT_DIR, by rank."""
    return sorted(Path(out_dir).glob(RANK_GLOB))


def journal_files(out_dir: str | Path) -> list[Path]:
    """Every journal in OUT_DIR: the single-process one first, then the rank journals by rank."""
    main = Path(out_dir) / JOURNAL_NAME
    return ([main] if main.is_file() else []) + rank_journals(out_dir)


def _keep(results: dict[str, Result], result: Result) -> None:
    """Record RESULT unless it is an error that would replace a finished record."""
    old = results.get(result.name)
    if old is not None and result.status == "error" and old.status != "error":
        return
    results[result.name] = result


REJECTED_SUFFIX = ".rejected.jsonl"


def rejected_path(path: Path) -> Path:
    """Where corrupt lines of journal PATH are set aside (``streamscan.journal.rejected.jsonl``)."""
    return path.with_name(path.name[: -len(".jsonl")] + REJECTED_SUFFIX)


_FIELDS = frozenset(f.name for f in dataclasses.fields(Result))


def _finite(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


_NUMBERS = ("snr", "sigma_max", "threshold", "seconds", "read_seconds")


def _result_from(row) -> Result:
    """A journal line's record; ValueError if it is not one (wrong types, NaN scores, missing fields).
    Fields a newer or older streamscan wrote that this one does not know are left out."""
    if type(row) is not dict:
        raise ValueError("not a record")
    fields = row if row.keys() <= _FIELDS else {k: v for k, v in row.items() if k in _FIELDS}
    shape = fields.get("shape", [])
    if type(shape) is not list or not all(type(d) is int for d in shape):
        raise ValueError("bad shape")
    if not (type(fields.get("name")) is type(fields.get("type")) is type(fields.get("dtype")) is str):
        raise ValueError("bad field types")
    if fields.get("status", "ok") not in _STATUSES or fields.get("degenerate") not in _KINDS:
        raise ValueError("bad field types")
    for key in _NUMBERS:
        if not _finite(fields.get(key)):
            raise ValueError("a number that is not finite")
    fields["shape"] = tuple(shape)
    if "degenerate" not in fields:  # a journal written before degenerate matrices were scored (D2)
        upgrade_legacy(fields)
    elif fields["degenerate"] is not None:  # its SNR written as JSON_INF is inf again
        fields["snr"] = from_json_snr(fields.get("snr"), fields["degenerate"])
    try:
        return Result(**fields)
    except TypeError as err:  # a required field missing
        raise ValueError(str(err)) from None


_STATUSES = ("ok", "null", "error")
_KINDS = (None, *DEGENERATE_KINDS)


def _header_from(path: Path, row) -> ScanHeader:
    try:
        if not isinstance(row, dict) or row.get("streamscan_journal") != FORMAT:
            raise ValueError(row)
        return ScanHeader.from_dict(row)
    except (KeyError, TypeError, ValueError):
        raise JournalError(
            f"{path}: not a streamscan journal; choose another --out (or --fresh to replace it)"
        ) from None


def _header_line(path: Path, line: bytes) -> ScanHeader:
    """The header of a journal whose first line (newline included) is LINE."""
    try:
        row = orjson.loads(line)
    except ValueError:
        row = None
    return _header_from(path, row)


def _read(path: Path) -> tuple[ScanHeader, list[Result], int]:
    """(header, every record in file order, byte length of the valid prefix). Raises JournalError if unreadable.
    Corrupt lines are skipped with a one-line warning (``Journal`` sets them aside in a file beside it)."""
    header, rows, good, rejected = _scan(path)
    if rejected:
        log.warning(
            "%s: %d corrupt line(s) skipped (first at byte %d); the next run recomputes their matrices "
            "and moves the lines to %s",
            path,
            len(rejected),
            rejected[0][0],
            rejected_path(path).name,
        )
    return header, rows, good


def _scan(path: Path) -> tuple[ScanHeader, list[Result], int, list[tuple[int, bytes]]]:
    """(header, good records in file order, byte length of the valid prefix, [(offset, line)] rejected)."""
    if path.is_symlink():
        raise JournalError(f"{path}: is a symlink; streamscan never reads or writes a journal through one, remove it")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise os_error(path, err, "cannot read") from None
    header: ScanHeader | None = None
    rows: list[Result] = []
    rejected: list[tuple[int, bytes]] = []
    good = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - pos)
            break
        try:
            row = orjson.loads(data[pos:end])
        except ValueError:
            if end + 1 >= len(data):
                log.warning("%s: dropping a torn last line", path)
                break
            if header is None:
                raise JournalError(f"{path}: not a streamscan journal; choose another --out") from None
            rejected.append((pos, data[pos : end + 1]))
            pos = good = end + 1
            continue
        if header is None:
            header = _header_from(path, row)
        else:
            try:
                rows.append(_result_from(row))
            except ValueError:
                rejected.append((pos, data[pos : end + 1]))
        pos = good = end + 1
    if header is None:
        raise JournalError(f"{path}: empty journal (no header line); remove it, or choose another --out")
    return header, rows, good, rejected


def _set_aside(path: Path, header: ScanHeader, rows: list[Result], rejected: list[tuple[int, bytes]]) -> int:
    """Append the REJECTED lines of journal PATH to its rejected file, then rewrite PATH with the good ones
    (atomically); returns the new valid length."""
    aside = rejected_path(path)
    fd = open_nofollow(aside, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(line for _, line in rejected))
        fh.flush()
        os.fsync(fh.fileno())
    text = "".join(_ENCODER.encode(row) + "\n" for row in [header.to_dict()] + [r.to_dict() for r in rows])
    write_atomic(path, text)
    return len(text.encode())


def read_journal(out_dir: Path, name: str = JOURNAL_NAME) -> tuple[ScanHeader, dict[str, Result], int]:
    """(header, results by name, byte length of the valid prefix). Raises JournalError if unreadable."""
    header, rows, good = _read(Path(out_dir) / name)
    results: dict[str, Result] = {}
    for result in rows:
        _keep(results, result)
    return header, results, good


def journal_header(out_dir: str | Path) -> ScanHeader | None:
    """The header of the first journal in OUT_DIR (its first line only), or None if there is none."""
    files = journal_files(out_dir)
    if not files:
        return None
    with open(files[0], "rb") as fh:
        line = fh.readline()
    return _header_line(files[0], line)


def read_journals(
    out_dir: str | Path, fingerprint: Fingerprint | None = None
) -> tuple[ScanHeader | None, dict[str, Result]]:
    """The union of every journal in OUT_DIR: (first header or None, results by name).

    Raises JournalError if a journal is unreadable or holds a different scan (other than FINGERPRINT,
    or than the first journal's when None).
    """
    header: ScanHeader | None = None
    results: dict[str, Result] = {}
    for path in journal_files(out_dir):
        head, rows, _ = _read(path)
        _check(path, head, fingerprint if fingerprint is not None else (header or head).fingerprint)
        header = header or head
        for result in rows:
            _keep(results, result)
    return header, results


def _check(path: Path, old: ScanHeader, fingerprint: Fingerprint) -> None:
    if old.fingerprint != fingerprint:
        raise JournalError(
            f"{path}: holds a scan of {_differs(old.fingerprint.to_dict(), fingerprint.to_dict())}; "
            "rerun with --fresh to replace it, or choose another --out"
        )


def _flock(path: Path, mode: int) -> IO[str] | None:
    """PATH opened (never through a symlink) and flocked with MODE (non-blocking), or None if another
    process holds it."""
    fh = os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+")
    try:
        fcntl.flock(fh, mode | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        return None
    return fh


def holders(out_dir: str | Path) -> str:
    """Who holds OUT_DIR's locks, as written in the lock files (for error messages)."""
    found = []
    for path in [Path(out_dir) / LOCK_NAME] + sorted(Path(out_dir).glob(".streamscan.rank-*.lock")):
        fh = _flock(path, fcntl.LOCK_SH) if path.exists() else None
        if fh is not None:  # nobody writes to it
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()
        elif path.exists():
            found.append(path.read_text().strip() or "another process")
    return ", ".join(found) or "another process"


class Journal:
    """An open, locked journal in OUT_DIR. Use as a context manager.

    With RANK, the rank's own journal (shared directory lock, exclusive rank lock); its ``results`` are
    the rank's own records. Without, the single-process journal (exclusive directory lock): rank
    journals found in the directory are folded into it on open, so ``results`` is everything done.
    """

    def __init__(
        self,
        out_dir: str | Path,
        header: ScanHeader,
        fresh: bool = False,
        *,
        rank: int | None = None,
        commit_seconds: float = COMMIT_SECONDS,
        commit_records: int = COMMIT_RECORDS,
    ):
        self.dir = Path(out_dir)
        self.commit_seconds = commit_seconds
        self.commit_records = max(1, commit_records)
        self._pending: list[bytes] = []
        self._oldest = 0.0  # monotonic time of the oldest pending record
        self._mutex = threading.Lock()
        self._wake = threading.Condition(self._mutex)
        self._flusher: threading.Thread | None = None
        self.commits = 0  # fsync'd batches of records
        self.before_commit: Callable[[], object] | None = None  # made durable first (kept spectra)
        self.rank = rank
        self.path = self.dir / (JOURNAL_NAME if rank is None else rank_journal_name(rank))
        prepare_dir(self.dir)
        self._locks: list[IO[str]] = []
        self._fh = None
        who = f"pid {os.getpid()}" if rank is None else f"rank {rank} pid {os.getpid()} on {socket.gethostname()}"
        for name, mode in (
            [(LOCK_NAME, fcntl.LOCK_EX)]
            if rank is None
            else [(LOCK_NAME, fcntl.LOCK_SH), (rank_lock_name(rank), fcntl.LOCK_EX)]
        ):
            fh = _flock(self.dir / name, mode)
            if fh is None:
                self.close()
                raise JournalError(
                    f"{self.dir}: another scan ({holders(self.dir)}) is writing here; wait for it or use another --out"
                )
            self._locks.append(fh)
        lock = self._locks[-1]
        lock.seek(0)
        lock.truncate()
        lock.write(who)
        lock.flush()
        self.results: dict[str, Result] = {}
        if fresh and rank is None:
            for path in rank_journals(self.dir):
                path.unlink()
        if (self.path.exists() or self.path.is_symlink()) and not fresh:
            old, self.results, good = self._open_existing()
            try:
                _check(self.dir, old, header.fingerprint)
            except JournalError:
                self.close()
                raise
            self.header = old
            self._fh = os.fdopen(open_nofollow(self.path, os.O_RDWR), "r+b", buffering=0)
            self._fh.truncate(good)
            self._fh.seek(good)
        else:
            self.header = header
            self._fh = os.fdopen(open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb", buffering=0)
            self._write(header.to_dict())
        if rank is None:
            self._fold()

    def _open_existing(self) -> tuple[ScanHeader, dict[str, Result], int]:
        """Read the journal; corrupt lines are moved to the rejected file beside it (one warning), the rest kept."""
        header, rows, good, rejected = _scan(self.path)
        if rejected:
            good = _set_aside(self.path, header, rows, rejected)
            log.warning(
                "%s: %d corrupt line(s) moved to %s; every other record is kept and only those matrices are recomputed",
                self.path,
                len(rejected),
                rejected_path(self.path).name,
            )
        results: dict[str, Result] = {}
        for result in rows:
            _keep(results, result)
        return header, results, good

    def _fold(self) -> None:
        """Append every rank journal's records (all of them: duplicates stay visible) and remove the files."""
        paths = rank_journals(self.dir)
        rows: list[Result] = []
        rejected: list[tuple[int, bytes]] = []
        try:
            for path in paths:
                head, found, _, bad = _scan(path)
                _check(path, head, self.header.fingerprint)
                rows += found
                rejected += bad
        except JournalError:
            self.close()
            raise
        if rejected:  # corrupt lines of a rank journal are kept beside the journal they are folded into
            fd = open_nofollow(rejected_path(self.path), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            with os.fdopen(fd, "wb") as fh:
                fh.write(b"".join(line for _, line in rejected))
                fh.flush()
                os.fsync(fh.fileno())
            log.warning(
                "%s: %d corrupt line(s) of rank journals moved to %s; only those matrices are recomputed",
                self.dir,
                len(rejected),
                rejected_path(self.path).name,
            )
        if rows:
            self._write_many(rows)
        for path in paths:
            path.unlink()
            rank = int(path.name[len("streamscan.journal.rank-") : -len(".jsonl")])
            (self.dir / rank_lock_name(rank)).unlink(missing_ok=True)
        if paths:
            log.info("%s: folded %d rank journal(s) into %s", self.dir, len(paths), self.path.name)

    def _write(self, row: dict) -> None:
        self._append(_line(row))

    def _append(self, data: bytes) -> None:
        """Write DATA at the end of the journal and fsync it. If that fails (a full disk), the file is cut back
        to what it held before, so that the retry at close writes each record once (unbuffered: no earlier
        attempt's bytes are left in a buffer to be written again)."""
        fd = self._fh.fileno()
        start = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
            raise

    def _write_many(self, results: list[Result]) -> None:
        """Append many records with one fsync (folding rank journals)."""
        self._append(b"".join(_line(r.to_dict()) for r in results))
        for result in results:
            _keep(self.results, result)

    def append(self, result: Result) -> None:
        """Queue a finished job's record; it is durable once its batch is committed (see the module doc).
        It counts as done in ``results`` at once: a crash before the commit makes the resume redo it."""
        line = _line(result.to_dict())
        with self._mutex:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(line)
            full = len(self._pending) >= self.commit_records or time.monotonic() - self._oldest >= self.commit_seconds
            if full:
                self._commit()
            elif self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_on_time, name="journal-commit", daemon=True)
                self._flusher.start()
            else:
                self._wake.notify()
        _keep(self.results, result)

    def commit(self) -> None:
        """Write and fsync the pending records now."""
        with self._mutex:
            self._commit()

    def _commit(self) -> None:  # with the mutex held
        if not self._pending or self._fh is None:
            return
        try:
            if self.before_commit is not None:
                self.before_commit()
            self._append(b"".join(self._pending))
        except OSError as err:  # a full disk: the records committed before this batch are durable
            raise os_error(self.path, err) from None
        self._pending.clear()
        self.commits += 1

    def _flush_on_time(self) -> None:
        """Commit a batch whose oldest record waited commit_seconds, even while no job finishes."""
        with self._mutex:
            while self._fh is not None:
                if not self._pending:
                    self._wake.wait()
                    continue
                left = self._oldest + self.commit_seconds - time.monotonic()
                if left > 0:
                    self._wake.wait(left)
                    continue
                try:
                    self._commit()
                except (
                    OSError,
                    StreamscanError,
                ) as err:  # the disk is full or gone: close() raises it in the scan's thread
                    log.error("%s: cannot commit journal records (%s)", self.path, err)
                    return

    def done(self) -> frozenset[str]:
        """Names that need no more work (errors are retried)."""
        return frozenset(n for n, r in self.results.items() if r.status != "error")

    def close(self) -> None:
        """Commit what is pending (also when leaving through an exception), then release the locks (even when
        that commit fails: a full disk must not leave the directory locked)."""
        try:
            if getattr(self, "_fh", None) is not None:
                try:
                    with self._mutex:
                        self._commit()
                finally:
                    with self._mutex:
                        try:
                            self._fh.close()
                        except OSError:  # the data it could not flush is in no committed batch
                            pass
                        self._fh = None
                        self._wake.notify_all()
                    if self._flusher is not None:
                        self._flusher.join()
                        self._flusher = None
        finally:
            while self._locks:
                lock = self._locks.pop()
                fcntl.flock(lock, fcntl.LOCK_UN)
                lock.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # json.dumps with these makes one per call


def _line(row: dict) -> bytes:
    return _ENCODER.encode(row).encode() + b"\n"


def is_locked(out_dir: str | Path) -> bool:
    """True while a scan holds OUT_DIR."""
    path = Path(out_dir) / LOCK_NAME
    try:  # read-only: works on a read-only scan directory, never follows a symlink
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _differs(old: dict, new: dict) -> str:
    for key in ("model", "revision", "shards", "method", "include", "exclude"):
        if old.get(key) != new.get(key):
            if key == "shards":
                return "different checkpoint files"
            return f"a different {key} ({old.get(key)!r}, now {new.get(key)!r})"
    return "a different configuration"
