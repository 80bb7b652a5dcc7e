"""files: how every output file is written (whole, or not at all), and how the scan directory is opened.

Nothing here follows a symlink planted in the scan directory: the lock and the journal are opened with
``O_NOFOLLOW``, outputs are written to a fresh temporary file in the directory (``O_EXCL``) and renamed
over the name (a rename replaces a symlink, never its target). Every file is created with mode 0o666 less
the process's umask, as any program's files are (the kernel applies the umask; nothing here changes it).
Environment errors become one line naming the path and the fix (OutputError).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from streamscan.errors import OutputError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


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


def open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
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


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty file beside PATH (``.NAME.XXXXXXXX.tmp``, O_EXCL: never an existing file or a symlink),
    mode 0o666 less the umask; its descriptor and path."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def write_atomic(path: Path, data: str | bytes, durable: bool = False) -> Path:
    """Write DATA to PATH through a fresh temporary file beside it and a rename: readers see the old file or
    the new, and a symlink at PATH is replaced, never written through. DURABLE: the file is fsync'd before
    the rename and the directory after it (the rename survives a power loss)."""
    path = Path(path)
    try:
        fd, tmp = _create_temp(path)
    except OSError as err:
        raise os_error(path, err) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            fsync_dir(path.parent)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise os_error(path, err) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_atomic_many(items: list[tuple[Path, str]]) -> list[Path]:
    """Write each (path, text) like ``write_atomic``, but all to temporary files first and then renamed
    together: a failure (a full disk) leaves every old file as it was, never a mix of old and new."""
    temps: list[tuple[Path, Path]] = []
    try:
        for path, text in items:
            path = Path(path)
            try:
                fd, tmp = _create_temp(path)
            except OSError as err:
                raise os_error(path, err) from None
            temps.append((tmp, path))
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(text.encode())
            except OSError as err:
                raise os_error(path, err) from None
        for tmp, path in temps:
            os.replace(tmp, path)
    except BaseException:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
        raise
    return [path for _, path in temps]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
