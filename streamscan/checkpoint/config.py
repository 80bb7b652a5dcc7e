"""config: a checkpoint's JSON side files read as data: config.json (a dict; anything else counts as no config)
and the weight map of an index (checked: it may only name files in the checkpoint directory)."""

from __future__ import annotations

import json
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


def read_weight_map(index: Path) -> dict[str, str]:
    """An index's weight map, checked: a JSON object of tensor name -> a plain file name in the checkpoint
    directory (never absolute, never ``..``, never a subdirectory), so no index can point outside it."""
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
