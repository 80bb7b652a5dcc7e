"""resolve, Hub side: a repo id on the Hugging Face Hub (or ``HF_ENDPOINT``) as shards that appear lazily.

Everything that talks to the Hub goes through huggingface_hub: ``HfApi.model_info`` pins the revision to a
commit and lists file sizes, ``hf_hub_download`` fetches files into the HF cache (auth, retries, resumable
HTTP, locks, the blob + snapshot-symlink layout), its session reads shard headers with HTTP Range, and its
exceptions become one-line SourceErrors. Nothing here reads a tensor: shards are downloaded by shards.py.
"""

from __future__ import annotations

import logging
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from streamscan.checkpoint.config import read_config, read_weight_map
from streamscan.checkpoint.formats.safetensors_header import MAX_HEADER_SIZE
from streamscan.errors import SourceError

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HEADER_PROBE = 100_000  # first Range read of a shard; most headers fit (huggingface_hub's own choice)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def looks_like_repo_id(model: str) -> bool:
    """``org/name`` that is not a local path (no leading ./ or /, not a .safetensors file)."""
    return bool(_REPO_ID.match(model)) and not model.endswith(".safetensors") and ".." not in model


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int
    blob: str | None  # the cache blob name (LFS sha256 / ETag) when known


@dataclass(frozen=True)
class HubSource:
    """A Hub checkpoint pinned to one commit; ``files`` are the weight shards in repo order."""

    repo_id: str
    revision: str  # as the user asked (branch, tag or commit)
    commit: str  # the commit it resolved to; every request below uses it
    cache_dir: Path
    files: tuple[RemoteFile, ...]
    cached: frozenset[str]  # shards in the HF cache before this run
    offline: bool
    endpoint: str | None = None
    token: str | bool | None = None

    @property
    def storage(self) -> Path:
        from huggingface_hub.file_download import repo_folder_name

        return self.cache_dir / repo_folder_name(repo_id=self.repo_id, repo_type="model")

    @property
    def snapshot(self) -> Path:
        return self.storage / "snapshots" / self.commit

    def path(self, name: str) -> Path:
        return self.snapshot / name

    def file(self, name: str) -> RemoteFile:
        return next(f for f in self.files if f.name == name)

    def present(self, name: str) -> bool:
        return self.path(name).exists()

    def header(self, name: str) -> tuple[bytes, int]:
        """(raw header JSON, file size) of a shard, read with HTTP Range through huggingface_hub's session."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, name, revision=self.commit, endpoint=self.endpoint)
        headers = build_hf_headers(token=self.token)
        try:
            response = get_session().get(url, headers={**headers, "Range": f"bytes=0-{HEADER_PROBE - 1}"})
            hf_raise_for_status(response)
            data = response.content
            if len(data) < 8:
                raise SourceError(f"{self.repo_id}/{name}: not a safetensors file ({len(data)} bytes)")
            (length,) = struct.unpack("<Q", data[:8])
            if length > MAX_HEADER_SIZE:
                raise SourceError(f"{self.repo_id}/{name}: corrupt safetensors header (length {length})")
            if 8 + length > len(data):
                response = get_session().get(url, headers={**headers, "Range": f"bytes=8-{length + 7}"})
                hf_raise_for_status(response)
                raw = response.content
            else:
                raw = data[8 : 8 + length]
            if len(raw) != length:
                raise SourceError(f"{self.repo_id}/{name}: the server sent {len(raw)} of {length} header bytes; retry")
        except SourceError:
            raise
        except Exception as err:  # noqa: BLE001 - mapped to one line
            raise hub_error(err, self.repo_id, self.revision, self.endpoint) from None
        return raw, self.file(name).size

    def download(self, name: str) -> Path:
        """Fetch one shard into the HF cache (huggingface_hub resumes dropped connections with Range)."""
        from huggingface_hub import hf_hub_download

        self._drop_stale_partials(name)
        try:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    name,
                    revision=self.commit,
                    cache_dir=self.cache_dir,
                    endpoint=self.endpoint,
                    token=self.token,
                )
            )
        except Exception as err:  # noqa: BLE001 - mapped to one line
            raise hub_error(err, self.repo_id, self.revision, self.endpoint) from None

    def _lock(self, blob: str):
        from filelock import FileLock
        from huggingface_hub.file_download import repo_folder_name

        lock = self.cache_dir / ".locks" / repo_folder_name(repo_id=self.repo_id, repo_type="model") / f"{blob}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock), timeout=0)

    def _drop_stale_partials(self, name: str) -> None:
        """Remove temp files a killed download of this blob left behind (nobody holds its download lock)."""
        blob = self.file(name).blob
        if blob is None:
            return
        partials = list((self.storage / "blobs").glob(f"{blob}.*incomplete"))
        if not partials:
            return
        from filelock import Timeout

        try:
            with self._lock(blob):
                for p in partials:
                    log.info("removing %s left by an interrupted download", p)
                    p.unlink(missing_ok=True)
        except Timeout:
            log.info("%s is being downloaded by another process", name)

    def delete(self, name: str) -> int:
        """Remove a shard from the HF cache: its snapshot link, and its blob unless another snapshot links it.

        Returns the bytes freed. The cache stays consistent for huggingface_hub (``scan_cache_dir``).
        """
        pointer = self.path(name)
        if not pointer.is_symlink():  # a copy (no symlink support): the pointer is the file
            size = pointer.stat().st_size if pointer.exists() else 0
            pointer.unlink(missing_ok=True)
            return size
        blob = Path(os.path.realpath(pointer))
        with self._lock(blob.name).acquire(timeout=60):
            pointer.unlink()
            others = [
                p
                for p in (self.storage / "snapshots").rglob("*")
                if p.is_symlink() and Path(os.path.realpath(p)) == blob
            ]
            if others or not blob.exists():
                return 0
            size = blob.stat().st_size
            blob.unlink()
        return size


def hub_error(err: BaseException, repo_id: str, revision: str | None, endpoint: str | None) -> SourceError:
    """One line for each way the Hub can refuse: gated, missing repo, missing revision or file, offline, network."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = endpoint or constants.ENDPOINT
    rev = revision or "main"
    if isinstance(err, SourceError):
        return err
    if isinstance(err, GatedRepoError):
        return SourceError(
            f"{repo_id}: gated repo; accept its terms on {where}/{repo_id} and log in "
            "(`hf auth login` or HF_TOKEN) with that account"
        )
    if isinstance(err, RepositoryNotFoundError):
        return SourceError(
            f"{repo_id}: no such model on {where}, or it is private (log in with `hf auth login` "
            "or set HF_TOKEN); check the id or give a local path"
        )
    if isinstance(err, RevisionNotFoundError):
        return SourceError(f"{repo_id}: no revision {rev!r}; give an existing branch, tag or commit with --revision")
    if isinstance(err, RemoteEntryNotFoundError):
        return SourceError(f"{repo_id}@{rev}: a file the checkpoint needs is missing on the Hub ({_first_line(err)})")
    if isinstance(err, OfflineModeIsEnabled) or (
        isinstance(err, LocalEntryNotFoundError) and constants.is_offline_mode()
    ):
        return SourceError(
            f"{repo_id}@{rev}: offline and not in the HF cache; run once online "
            "(without --offline / HF_HUB_OFFLINE=1) to download it"
        )
    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # online: huggingface_hub could not reach the file (network, Hub down, refused)
    return SourceError(
        f"{repo_id}: cannot reach {where} ({type(err).__name__}: {_first_line(err)}); check the "
        "network or HF_ENDPOINT, or use --offline to scan from the HF cache"
    )


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[:1]).strip() or type(err).__name__
    return text[:200]


def resolve_hub(
    repo_id: str, revision: str | None = None, offline: bool | None = None, token: str | bool | None = None
) -> tuple[HubSource, list[Path], Path | None, dict]:
    """Pin REPO_ID@REVISION to a commit. Returns (hub source, shard paths, index path or None, config).

    Online: one ``model_info`` call (commit, file sizes), then the small index and config files through
    ``hf_hub_download`` (cached, and they record the branch -> commit ref for a later offline run).
    Offline (``offline`` or ``HF_HUB_OFFLINE=1``): the cache only; a missing shard is named.
    """
    from huggingface_hub import constants

    offline = constants.is_offline_mode() if offline is None else (offline or constants.is_offline_mode())
    cache = Path(constants.HF_HUB_CACHE)
    endpoint = constants.ENDPOINT
    if offline:
        return _resolve_offline(repo_id, revision, cache, token)
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
        sizes = {s.rfilename: s for s in info.siblings or []}
        commit = info.sha
        if not commit:
            raise SourceError(f"{repo_id}: the Hub did not say which commit {revision or 'main'} is; retry")
        names = set(sizes)
        small = [n for n in (INDEX_NAME, CONFIG_NAME) if n in names]
        local: dict[str, Path] = {}
        for n in small:  # with the asked revision: the cache records its ref for offline runs
            local[n] = Path(
                hf_hub_download(
                    repo_id, n, revision=revision or commit, cache_dir=cache, endpoint=endpoint, token=token
                )
            )
            if local[n].parent.name != commit:
                raise SourceError(f"{repo_id}: revision {revision or 'main'} moved while resolving it; rerun")
    except SourceError:
        raise
    except Exception as err:  # noqa: BLE001 - mapped to one line
        raise hub_error(err, repo_id, revision, endpoint) from None
    shards = _shard_names(repo_id, local.get(INDEX_NAME), names)
    files = []
    for n in shards:
        sib = sizes.get(n)
        if sib is None:
            raise SourceError(
                f"{repo_id}@{commit[:12]}: {n} is listed by the index but not in the repo; "
                "the repo is inconsistent, pick another --revision"
            )
        if sib.size is None:  # mirrors and proxies may list files without sizes: ask for each (HEAD)
            files.append(_remote_file_by_head(repo_id, commit, n, endpoint, token, revision))
            continue
        files.append(RemoteFile(n, int(sib.size), sib.lfs.sha256 if sib.lfs else _etag(sib)))
    _record_ref(cache, repo_id, revision, commit)
    hub = HubSource(repo_id, revision or "main", commit, cache, tuple(files), frozenset(), False, endpoint, token)
    hub = _with_cached(hub)
    return hub, [hub.path(n) for n in shards], local.get(INDEX_NAME), _config(local.get(CONFIG_NAME))


def _remote_file_by_head(
    repo_id: str, commit: str, name: str, endpoint: str, token, revision: str | None
) -> RemoteFile:
    """A shard's size and etag from a HEAD request (get_hf_file_metadata), when model info lacks them."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    try:
        meta = get_hf_file_metadata(hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint), token=token)
    except Exception as err:  # noqa: BLE001 - mapped to one line
        raise hub_error(err, repo_id, revision, endpoint) from None
    if meta.size is None:
        raise SourceError(f"{repo_id}@{commit[:12]}: the Hub gives no size for {name}; retry, or use another endpoint")
    return RemoteFile(name, int(meta.size), meta.etag)


def _etag(sibling) -> str | None:
    return getattr(sibling, "blob_id", None)


def _with_cached(hub: HubSource) -> HubSource:
    cached = frozenset(f.name for f in hub.files if hub.present(f.name))
    return HubSource(
        hub.repo_id, hub.revision, hub.commit, hub.cache_dir, hub.files, cached, hub.offline, hub.endpoint, hub.token
    )


def _record_ref(cache: Path, repo_id: str, revision: str | None, commit: str) -> None:
    """The cache's refs/<revision> file, as huggingface_hub writes it, when no download wrote it yet."""
    if revision and _COMMIT.match(revision):
        return
    from huggingface_hub.file_download import repo_folder_name

    ref = cache / repo_folder_name(repo_id=repo_id, repo_type="model") / "refs" / (revision or "main")
    if not ref.exists() or ref.read_text() != commit:
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit)


def _shard_names(repo_id: str, index: Path | None, names: set[str]) -> list[str]:
    if index is not None:
        weight_map = read_weight_map(index)
        return sorted(set(weight_map.values()))  # model-00001-of-… first: download order
    if SINGLE_NAME in names:
        return [SINGLE_NAME]
    found = sorted(n for n in names if n.endswith(".safetensors") and "/" not in n)
    if not found:
        raise SourceError(
            f"{repo_id}: no {INDEX_NAME}, {SINGLE_NAME} or *.safetensors in the repo; "
            "streamscan reads safetensors checkpoints"
        )
    return found


def _resolve_offline(
    repo_id: str, revision: str | None, cache: Path, token
) -> tuple[HubSource, list[Path], Path | None, dict]:
    from huggingface_hub.file_download import repo_folder_name

    storage = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    rev = revision or "main"
    if _COMMIT.match(rev):
        commit = rev
    else:
        ref = storage / "refs" / rev
        if not ref.is_file():
            raise SourceError(
                f"{repo_id}@{rev}: offline and not in the HF cache ({cache}); run once online "
                "(without --offline / HF_HUB_OFFLINE=1) to download it"
            )
        commit = ref.read_text().strip()
    snap = storage / "snapshots" / commit
    index = snap / INDEX_NAME
    if index.exists():
        shards = _shard_names(repo_id, index, set())
    elif (snap / SINGLE_NAME).exists():
        shards = [SINGLE_NAME]
    else:
        shards = sorted(p.name for p in snap.glob("*.safetensors"))
        if not shards:
            raise SourceError(
                f"{repo_id}@{rev}: offline and no weights of commit {commit[:12]} in the HF cache "
                f"({cache}); run once online to download them"
            )
    missing = [n for n in shards if not (snap / n).exists()]
    if missing:
        raise SourceError(
            f"{repo_id}@{commit[:12]}: offline, and {len(missing)} of {len(shards)} shards are not in "
            f"the HF cache: {', '.join(missing)}; rerun online (without --offline / HF_HUB_OFFLINE=1) "
            "to download them"
        )
    files = tuple(RemoteFile(n, (snap / n).stat().st_size, Path(os.path.realpath(snap / n)).name) for n in shards)
    hub = HubSource(repo_id, rev, commit, cache, files, frozenset(shards), True, None, token)
    config = snap / CONFIG_NAME
    return (
        hub,
        [hub.path(n) for n in shards],
        index if index.exists() else None,
        _config(config if config.exists() else None),
    )


def _config(path: Path | None) -> dict:
    return read_config(path.parent) if path is not None else {}
