"""index: every shard's header and the weight map, without touching tensor data."""

from __future__ import annotations

import os
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from streamscan.checkpoint.config import read_weight_map
from streamscan.checkpoint.formats import format_for
from streamscan.checkpoint.formats.safetensors import parse_header
from streamscan.checkpoint.source import ModelSource
from streamscan.errors import CheckpointError
from streamscan.records import ShardInfo, TensorInfo


@dataclass(frozen=True)
class CheckpointIndex:
    source: ModelSource
    tensors: tuple[TensorInfo, ...]
    shards: tuple[ShardInfo, ...]

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self.shards)


def _shard_headers(source: ModelSource) -> Iterator[tuple[Path, list[TensorInfo], ShardInfo]]:
    """Each shard's tensors, in order: local shards read from disk; Hub shards not downloaded yet read
    remotely, headers only, several at once (HubSource.headers)."""
    hub = source.hub
    remote = [path for path in source.files if hub is not None and not path.exists()]
    fetched = hub.headers(p.name for p in remote) if remote else iter(())
    wanted = set(remote)
    for path in source.files:
        if path in wanted:
            raw, size = next(fetched)
            yield path, *parse_header(path, raw, size)
        else:
            yield path, *read_any_header(path)


def read_any_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """A local shard's tensors whatever its format: safetensors, GGUF or PyTorch zip (formats/).
    Only regular files (through symlinks, as in the HF cache): a FIFO or device would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise CheckpointError(f"{path}: cannot open the shard ({err.strerror or err}); fix or re-download it") from None
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path}: not a regular file; a shard must be a file (or a symlink to one)")
    return format_for(path).read_header(path)


_BAD_NAME_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


def check_name(path: Path, name: str) -> None:
    """Tensor names end up in YAML, reports and terminals: refuse control and format characters, whatever
    the format (the safetensors validator already does this; GGUF and PyTorch names are checked here)."""
    if name.isprintable():
        return
    for ch in name:
        if unicodedata.category(ch) in _BAD_NAME_CATEGORIES:
            raise CheckpointError(
                f"{path}: tensor {ascii(name)} has the control character U+{ord(ch):04X} in its name; "
                "tensor names must be printable, rename it"
            )


def build_index(source: ModelSource) -> CheckpointIndex:
    """Read every shard header; check that the index's weight map agrees with them."""
    tensors: list[TensorInfo] = []
    shards: list[ShardInfo] = []
    seen: dict[str, Path] = {}
    for path, found, shard in _shard_headers(source):
        shards.append(shard)
        for t in found:
            check_name(path, t.name)
            if t.name in seen:
                raise CheckpointError(
                    f"{path}: tensor {t.name!r} also appears in {seen[t.name]}; remove the stray shard"
                )
            seen[t.name] = path
            tensors.append(t)
    if source.index_file is not None:
        weight_map = source.weight_map if source.weight_map is not None else read_weight_map(source.index_file)
        where = {f: source.root / f for f in set(weight_map.values())}  # a Path per file, not per tensor
        absent = [n for n, f in weight_map.items() if seen.get(n) != where[f]]
        if absent:
            raise CheckpointError(
                f"{source.index_file}: {absent[0]!r} is not in {weight_map[absent[0]]} "
                f"({len(absent)} such); the index and shards disagree, re-download them"
            )
    return CheckpointIndex(source, tuple(tensors), tuple(shards))
