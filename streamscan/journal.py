"""journal: the durable record of finished jobs, one JSON line each, fsync'd before it counts.

Line 1 is a header with the scan's fingerprint (model files, method, options) and its plan totals.
Every later line is one Result. A torn last line (a kill mid-write) is cut off on open; a name seen
twice keeps its last record, so nothing is counted twice. A lock file keeps a second scan out.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path

from .errors import JournalError
from .plan import Result

log = logging.getLogger(__name__)

JOURNAL_NAME = "streamscan.journal.jsonl"
LOCK_NAME = ".streamscan.lock"
FORMAT = 1


def _result_from(row: dict) -> Result:
    fields = {f.name for f in dataclasses.fields(Result)}
    row = {k: v for k, v in row.items() if k in fields}
    row["shape"] = tuple(row.get("shape", ()))
    return Result(**row)


def read_journal(out_dir: Path) -> tuple[dict, dict[str, Result], int]:
    """(header, results by name, byte length of the valid prefix). Raises JournalError if unreadable."""
    path = Path(out_dir) / JOURNAL_NAME
    data = path.read_bytes()
    header: dict | None = None
    results: dict[str, Result] = {}
    good = 0
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        if end < 0:
            log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - pos)
            break
        try:
            row = json.loads(data[pos:end])
        except ValueError:
            if end + 1 >= len(data):
                log.warning("%s: dropping a torn last line", path)
                break
            raise JournalError(f"{path}: corrupt line at byte {pos}; rerun with --fresh to start over") from None
        if header is None:
            if not isinstance(row, dict) or row.get("streamscan_journal") != FORMAT:
                raise JournalError(f"{path}: not a streamscan journal; choose another --out or rerun with --fresh")
            header = row
        else:
            result = _result_from(row)
            results.pop(result.name, None)
            results[result.name] = result
        pos = good = end + 1
    if header is None:
        raise JournalError(f"{path}: empty journal; rerun with --fresh")
    return header, results, good


class Journal:
    """An open, locked journal in OUT_DIR. Use as a context manager."""

    def __init__(self, out_dir: str | Path, header: dict, fresh: bool = False):
        self.dir = Path(out_dir)
        self.path = self.dir / JOURNAL_NAME
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise JournalError(f"{self.dir}: another scan ({holder}) is writing here; wait for it or use another --out")
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}")
        self._lock.flush()
        self.results: dict[str, Result] = {}
        if self.path.exists() and not fresh:
            old, self.results, good = read_journal(self.dir)
            if old.get("fingerprint") != header["fingerprint"]:
                self.close()
                raise JournalError(
                    f"{self.dir}: holds a scan of {_differs(old.get('fingerprint', {}), header['fingerprint'])}; "
                    "rerun with --fresh to replace it, or choose another --out"
                )
            self.header = old
            self._fh = open(self.path, "r+b")
            self._fh.truncate(good)
            self._fh.seek(good)
        else:
            self.header = header
            self._fh = open(self.path, "wb")
            self._write(header)

    def _write(self, row: dict) -> None:
        self._fh.write(json.dumps(row, allow_nan=False, separators=(",", ":")).encode() + b"\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, result: Result) -> None:
        """Record a finished job durably; only then does it count as done."""
        self._write(dataclasses.asdict(result))
        self.results.pop(result.name, None)
        self.results[result.name] = result

    def done(self) -> frozenset[str]:
        """Names that need no more work (errors are retried)."""
        return frozenset(n for n, r in self.results.items() if r.status != "error")

    def close(self) -> None:
        if getattr(self, "_fh", None) is not None:
            self._fh.close()
            self._fh = None
        if not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def is_locked(out_dir: str | Path) -> bool:
    """True while a scan holds OUT_DIR."""
    path = Path(out_dir) / LOCK_NAME
    if not path.exists():
        return False
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _differs(old: dict, new: dict) -> str:
    for key in ("model", "shards", "method", "include", "exclude"):
        if old.get(key) != new.get(key):
            if key == "shards":
                return "different checkpoint files"
            return f"a different {key} ({old.get(key)!r}, now {new.get(key)!r})"
    return "a different configuration"
