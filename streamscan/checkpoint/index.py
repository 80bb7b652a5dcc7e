"""index: every shard's header and the weight map, without touching tensor data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

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


def _shard_header(source: ModelSource, path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """Local shards are read from disk; a Hub shard not downloaded yet is read remotely (headers only)."""
    if source.hub is not None and not path.exists():
        raw, size = source.hub.header(path.name)
        return parse_header(path, raw, size)
    return read_any_header(path)


def read_any_header(path: Path) -> tuple[list[TensorInfo], ShardInfo]:
    """A local shard's tensors whatever its format: safetensors, GGUF or PyTorch zip (formats/)."""
    return format_for(path).read_header(path)


def build_index(source: ModelSource) -> CheckpointIndex:
    """Read every shard header; check that the index's weight map agrees with them."""
    tensors: list[TensorInfo] = []
    shards: list[ShardInfo] = []
    seen: dict[str, Path] = {}
    for path in source.files:
        found, shard = _shard_header(source, path)
        shards.append(shard)
        for t in found:
            if t.name in seen:
                raise CheckpointError(
                    f"{path}: tensor {t.name!r} also appears in {seen[t.name]}; remove the stray shard"
                )
            seen[t.name] = path
            tensors.append(t)
    if source.index_file is not None:
        weight_map = json.loads(source.index_file.read_text())["weight_map"]
        absent = [n for n, f in weight_map.items() if seen.get(n) != source.root / f]
        if absent:
            raise CheckpointError(
                f"{source.index_file}: {absent[0]!r} is not in {weight_map[absent[0]]} "
                f"({len(absent)} such); the index and shards disagree, re-download them"
            )
    return CheckpointIndex(source, tuple(tensors), tuple(shards))
