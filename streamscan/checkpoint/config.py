"""config: a checkpoint's JSON side files read as data: config.json (a dict; anything else counts as no config)
and the weight map of an index (checked: it may only name files in the checkpoint directory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from streamscan.errors import SourceError

CONFIG_NAME = "config.json"


def read_config(root: Path | None) -> dict:
    """ROOT/config.json as a dict ({} when there is none, or it holds no JSON object)."""
    if root is None:
        return {}
    cfg = root / CONFIG_NAME
    if not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text())
    except ValueError as err:
        raise SourceError(f"{cfg}: invalid JSON ({err}); fix or remove config.json") from None
    return data if isinstance(data, dict) else {}


_last_map: tuple[tuple, dict[str, str]] | None = None  # (the index file's identity, its checked weight map)


def read_weight_map(index: Path) -> dict[str, str]:
    """An index's weight map, checked: a JSON object of tensor name -> a plain file name in the checkpoint
    directory (never absolute, never ``..``, never a subdirectory), so no index can point outside it.

    The last one read is kept while its file is unchanged (same inode, size and times): finding the shards
    and checking them against their headers read a 70k-entry index once, not twice. Do not modify it."""
    global _last_map
    try:
        st = os.stat(index)
        identity = (os.fspath(index), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    except OSError:
        identity = None
    if identity is not None and _last_map is not None and _last_map[0] == identity:
        return _last_map[1]
    weight_map = _read_weight_map(index)
    if identity is not None:
        _last_map = (identity, weight_map)
    return weight_map


def _read_weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise SourceError(f"{index}: not a valid index ({err}); re-download it") from None
    except OSError as err:
        raise SourceError(f"{index}: cannot read ({err.strerror or err}); check the file") from None
    if not isinstance(weight_map, dict):
        raise SourceError(
            f"{index}: weight_map is {type(weight_map).__name__ if weight_map is not None else 'null'}, "
            "not an object of tensor name -> shard file; re-download the index"
        )
    plain: dict[str, bool] = {}  # each shard's file name checked once (70k entries name ~60 files)
    for name, file in weight_map.items():
        ok = isinstance(file, str) and plain.get(file)
        if ok is None:
            ok = plain[file] = _plain_file_name(file)
        if not ok:
            raise SourceError(
                f"{index}: weight_map sends {name!r} to {file!r}, not a file name in the checkpoint directory "
                "(absolute paths, '..' and subdirectories are refused); fix or re-download the index"
            )
    return weight_map


def _plain_file_name(file: str) -> bool:
    return (
        file not in ("", ".", "..")
        and "/" not in file
        and "\\" not in file
        and "\0" not in file
        and file.isprintable()
        and not Path(file).is_absolute()
    )
