"""files: how every output file is written (whole, or not at all), and how the scan directory is opened.

Nothing here follows a symlink planted in the scan directory: the lock and the journal are opened with
``O_NOFOLLOW``, outputs are written to a fresh ``mkstemp`` file in the directory and renamed over the
name (a rename replaces a symlink, never its target). Environment errors become one line naming the path
and the fix (OutputError).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from streamscan.errors import OutputError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def os_error(path: str | Path, err: OSError, doing: str = "cannot write") -> OutputError:
    """ERR (raised for PATH) as one line that says what to do."""
    if err.errno in NO_SPACE:
        return OutputError(
            f"{path}: no space left on device; finished results are kept in the journal, "
            "free some space and rerun the same command to resume"
        )
    if err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(
            f"{path}: {doing} ({err.strerror}); the scan directory is read-only or not yours: "
            "choose a writable --out or fix its permissions"
        )
    if err.errno == errno.ELOOP:
        return OutputError(f"{path}: is a symlink; streamscan never writes through one, remove it and rerun")
    return OutputError(f"{path}: {doing} ({err.strerror or err}); check the path and rerun")


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink (and anything but a regular file) at PATH, in one line."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as err:
        raise os_error(path, err, "cannot open") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path}: not a regular file; remove it and rerun")
    return fd


def prepare_dir(out: str | Path) -> Path:
    """The scan directory OUT, created if need be, and checked writable; one line naming it otherwise."""
    if str(out) == "":
        raise OutputError("--out '': an empty path; give the scan directory, e.g. --out scan")
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(f"{path}: is a file, not a directory; choose another --out") from None
    except NotADirectoryError:
        raise OutputError(f"{path}: a parent of it is a file, not a directory; choose another --out") from None
    except OSError as err:
        raise os_error(path, err, "cannot create the directory") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(
            f"{path}: not writable; the scan directory is read-only or not yours: "
            "choose a writable --out or fix its permissions"
        )
    return path


def write_atomic(path: Path, text: str) -> Path:
    """Write TEXT to PATH through a fresh temporary file beside it and a rename: readers see the old file or
    the new, and a symlink at PATH is replaced, never written through."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise os_error(path, err) from None
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(text)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(path, err) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_atomic_many(items: list[tuple[Path, str]]) -> list[Path]:
    """Write each (path, text) like ``write_atomic``, but all to temporary files first and then renamed
    together: a failure (a full disk) leaves every old file as it was, never a mix of old and new."""
    temps: list[tuple[str, Path]] = []
    try:
        for path, text in items:
            path = Path(path)
            try:
                fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            except OSError as err:
                raise os_error(path, err) from None
            temps.append((tmp, path))
            try:
                with os.fdopen(fd, "w") as fh:
                    os.fchmod(fh.fileno(), 0o666 & ~_umask())
                    fh.write(text)
            except OSError as err:
                raise os_error(path, err) from None
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            Path(tmp).unlink(missing_ok=True)
        raise
    return [path for _, path in temps]
