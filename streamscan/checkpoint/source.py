"""source: turn MODEL (a local directory or a single .safetensors file) into a ModelSource."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from streamscan.checkpoint.config import read_config, read_weight_map
from streamscan.errors import SourceError, UsageError

if TYPE_CHECKING:
    from streamscan.checkpoint.hub import HubSource
    from streamscan.records import HubNetwork

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


@dataclass(frozen=True)
class ModelSource:
    """Where a checkpoint's files are. ``index_file`` is set for sharded checkpoints."""

    model_id: str
    root: Path
    files: tuple[Path, ...]
    index_file: Path | None = None
    config: dict = field(default_factory=dict, compare=False)
    hub: HubSource | None = field(default=None, compare=False)  # a Hub repo: files appear as they are downloaded
    weight_map: dict[str, str] | None = field(default=None, compare=False, repr=False)  # index_file's, as read

    @property
    def slug(self) -> str:
        return slugify(self.model_id)


def slugify(model_id: str) -> str:
    """The reference's slug: the model id with '/' and '_' replaced by '-'."""
    return re.sub(r"[/_]", "-", model_id.strip("/"))


def resolve(
    model: str | Path,
    *,
    revision: str | None = None,
    offline: bool | None = None,
    network: HubNetwork | None = None,
) -> ModelSource:
    """Find the checkpoint files of MODEL without reading any tensor data.

    MODEL is a local directory or .safetensors file, or else a Hub repo id (``org/name``) at REVISION,
    pinned to a commit; its shards need not be downloaded yet (see hub.py, shards.py). NETWORK: the Hub
    requests' timeout and retries (records.HubNetwork; its defaults when None).
    """
    path = Path(model).expanduser()
    if not path.exists():
        from streamscan.checkpoint.hub import looks_like_repo_id, resolve_hub

        if looks_like_repo_id(str(model)):
            try:
                hub, files, index, config = resolve_hub(str(model), revision, offline, network=network)
            except SourceError as err:
                raise _not_a_path_either(model, path, err) from None
            return ModelSource(hub.repo_id, hub.snapshot, tuple(files), index, config, hub)
        raise SourceError(
            f"{model}: no such file or directory; give a checkpoint directory, a .safetensors, .gguf or .bin "
            "file, or a Hub id (org/name)"
        )
    if revision is not None:
        raise UsageError(f"--revision {revision}: only for Hub ids, and {model} is a local path")
    if path.is_file():
        if path.suffix != ".safetensors":
            other = _other_format(path)
            if other is not None:
                return other
            raise SourceError(
                f"{path}: not a .safetensors, .gguf or .bin file; give a checkpoint directory or one of those files"
            )
        root = path.parent
        model_id = path.stem if path.stem != "model" else root.resolve().name
        return ModelSource(model_id, root, (path,), None, read_config(root))
    model_id = path.resolve().name
    index = path / INDEX_NAME
    if index.is_file():
        return _indexed(model_id, path, index)
    single = path / SINGLE_NAME
    if single.is_file():
        return ModelSource(model_id, path, (single,), None, read_config(path))
    found = sorted(path.glob("*.safetensors"))
    if found:
        return ModelSource(model_id, path, tuple(found), None, read_config(path))
    other = _other_format(path)
    if other is not None:
        return other
    raise SourceError(
        f"{path}: no {INDEX_NAME}, {SINGLE_NAME}, *.safetensors, *.gguf or pytorch_model*.bin here; "
        "point MODEL at the checkpoint directory"
    )


def _not_a_path_either(model, path: Path, err: SourceError) -> SourceError:
    """MODEL looked like a Hub id but the Hub refused it: a mistyped local path (``a/b`` where ``a`` is a
    directory here) is named as one, not reported as a network or Hub error."""
    reason = str(err).split(": ", 1)[-1]
    if "no such model" not in reason and "cannot reach" not in reason:
        return err  # the Hub knows the id (gated, revision, offline cache): it is one
    if path.parent != Path(".") and path.parent.is_dir():
        return SourceError(
            f"{model}: no such file or directory ({path.parent} has no {path.name!r}), and not a Hub id "
            f"that exists ({reason.split(';')[0]}); check the path"
        )
    return SourceError(f"{err}; if {model} is a local path: no such file or directory")


TORCH_INDEX_NAME = "pytorch_model.bin.index.json"


def _other_format(path: Path) -> ModelSource | None:
    """A GGUF file, a PyTorch .bin/.pt/.pth file, or a directory of either (checkpoint/formats/ reads them)."""
    if path.is_file():
        if path.suffix == ".gguf":
            from streamscan.checkpoint.formats.gguf import gguf_config

            return ModelSource(path.stem, path.parent, (path,), None, gguf_config(path))
        if path.suffix in (".bin", ".pt", ".pth"):
            root = path.parent
            model_id = path.stem if path.stem != "pytorch_model" else root.resolve().name
            return ModelSource(model_id, root, (path,), None, read_config(root))
        return None
    model_id = path.resolve().name
    index = path / TORCH_INDEX_NAME
    if index.is_file():
        return _indexed(model_id, path, index)
    bins = sorted(path.glob("pytorch_model*.bin"))
    if bins:
        return ModelSource(model_id, path, tuple(bins), None, read_config(path))
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return _other_format(ggufs[0])
    if ggufs:
        raise SourceError(f"{path}: holds {len(ggufs)} GGUF files ({ggufs[0].name}, ...); give the one to scan")
    return None


def _indexed(model_id: str, path: Path, index: Path) -> ModelSource:
    """A sharded checkpoint: its shards from INDEX, whose weight map it keeps (build_index checks the shards'
    headers against it without reading a 70k-entry index again)."""
    weight_map = read_weight_map(index)
    return ModelSource(model_id, path, tuple(_shards_of(index, weight_map)), index, read_config(path), None, weight_map)


def _shards_of(index: Path, weight_map: dict[str, str]) -> list[Path]:
    shards, missing = [], []
    for name in dict.fromkeys(weight_map.values()):
        shard = index.parent / name
        (shards if shard.is_file() else missing).append(shard)
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise SourceError(f"{missing[0]}: shard listed by {index.name} is missing{more}; download the missing shards")
    return shards
