"""resolve, Hub side: a repo id on the Hugging Face Hub (or ``HF_ENDPOINT``) as shards that appear lazily.

Everything that talks to the Hub goes through huggingface_hub: ``HfApi.model_info`` pins the revision to a
commit and lists file sizes, ``hf_hub_download`` fetches files into the HF cache (auth, retries, resumable
HTTP, locks, the blob + snapshot-symlink layout), its session reads shard headers with HTTP Range, and its
exceptions become one-line SourceErrors. Nothing here reads a tensor: shards are downloaded by shards.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from streamscan.checkpoint.config import read_config, read_weight_map
from streamscan.checkpoint.formats.safetensors_header import MAX_HEADER_SIZE
from streamscan.errors import SourceError
from streamscan.records import HubNetwork

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HEADER_PROBE = 100_000  # first Range read of a shard; most headers fit (huggingface_hub's own choice)
LONG_HEADER = 1_000_000  # a longer header is read after the probes, one at a time (memory stays bounded)
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)  # huggingface_hub's http_backoff retries these
T = TypeVar("T")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def looks_like_repo_id(model: str) -> bool:
    """``org/name`` that is not a local path (no leading ./ or /, not a .safetensors file)."""
    return bool(_REPO_ID.match(model)) and not model.endswith(".safetensors") and ".." not in model


def retrying(network: HubNetwork, what: str, fn: Callable[[], T]) -> T:
    """FN(), retried on transient errors (see ``transient``) as NETWORK says, waiting ``backoff`` seconds, then
    twice as long each time up to ``max_wait`` (huggingface_hub's http_backoff schedule); each retry is
    logged once, naming WHAT."""
    wait = network.backoff
    for attempt in range(1, network.retries + 2):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - re-raised unless transient
            if attempt > network.retries or not transient(err):
                raise
            log.warning(
                "%s: %s: %s; retry %d of %d in %.3g s",
                *(what, type(err).__name__, _first_line(err), attempt, network.retries, wait),
            )
        time.sleep(wait)
        wait = min(network.max_wait, wait * 2)
    raise AssertionError("unreachable")


def transient(err: BaseException) -> bool:
    """A failure worth retrying: HTTP 408/429/5xx, a timeout, a refused, dropped or short connection."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    if isinstance(err, LocalEntryNotFoundError) and err.__cause__ is not None:
        err = err.__cause__  # hf_hub_download could not reach the file
    if isinstance(err, HfHubHTTPError):
        return err.response is not None and err.response.status_code in TRANSIENT_STATUS
    return isinstance(err, (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError))


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
    network: HubNetwork = field(default_factory=HubNetwork)

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

    def headers(self, names: Iterable[str]) -> Iterator[tuple[bytes, int]]:
        """(raw header JSON, file size) of each shard of NAMES, in order, read with HTTP Range: the first
        HEADER_PROBE bytes of up to ``network.workers`` shards at once (with the rest of a header up to
        LONG_HEADER bytes), a longer header's rest afterwards, one at a time."""
        with ThreadPoolExecutor(self.network.workers, thread_name_prefix="streamscan-header") as pool:
            window: deque = deque()
            for name in names:
                window.append((name, pool.submit(self._probe, name)))
                if len(window) > self.network.workers:
                    yield self._finish(*window.popleft())
            while window:
                yield self._finish(*window.popleft())

    def header(self, name: str) -> tuple[bytes, int]:
        return next(self.headers([name]))

    def _probe(self, name: str) -> tuple[int, bytes]:
        """(header length, its bytes read so far): all of them when the header is at most LONG_HEADER bytes."""
        size = self.file(name).size
        data = self._range(name, 0, min(HEADER_PROBE, size))
        if len(data) < 8:
            raise SourceError(f"{self.repo_id}/{name}: not a safetensors file ({size} bytes); report it to the repo")
        (length,) = struct.unpack("<Q", data[:8])
        if length > min(MAX_HEADER_SIZE, size - 8):
            raise SourceError(
                f"{self.repo_id}/{name}: not a safetensors file (its header length {length} does not fit its "
                f"{size} bytes or passes safetensors' {MAX_HEADER_SIZE}-byte limit); report it to the repo"
            )
        raw = data[8 : 8 + length]
        if len(raw) < length <= LONG_HEADER:
            raw += self._range(name, 8 + len(raw), 8 + length)
        return length, raw

    def _finish(self, name: str, probe) -> tuple[bytes, int]:
        try:
            length, raw = probe.result()
        except SourceError:
            raise
        except Exception as err:  # noqa: BLE001 - mapped to one line
            raise hub_error(err, self.repo_id, self.revision, self.endpoint, name) from None
        if len(raw) < length:
            try:
                raw += self._range(name, 8 + len(raw), 8 + length)
            except Exception as err:  # noqa: BLE001 - mapped to one line
                raise hub_error(err, self.repo_id, self.revision, self.endpoint, name) from None
        return raw, self.file(name).size

    def _range(self, name: str, start: int, stop: int) -> bytes:
        """Bytes START..STOP of a shard (one HTTP Range GET through huggingface_hub's session, read as a stream
        and never past STOP, whatever the server sends), retried on transient errors."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

        url = hf_hub_url(self.repo_id, name, revision=self.commit, endpoint=self.endpoint)
        headers = {**build_hf_headers(token=self.token), "Range": f"bytes={start}-{stop - 1}"}

        def get() -> bytes:
            chunks, got = [], 0
            with get_session().stream("GET", url, headers=headers, timeout=self.network.timeout) as response:
                if response.status_code >= 400:
                    response.read()  # an error page: small, and hf_raise_for_status reads its message
                hf_raise_for_status(response)
                for chunk in response.iter_bytes():
                    chunks.append(chunk[: stop - start - got])
                    got += len(chunks[-1])
                    if got >= stop - start:
                        break
            if got < stop - start:  # not a dropped connection (that is retried): the file is shorter than listed
                raise SourceError(
                    f"{self.repo_id}/{name}: the server sent {got} of the {stop - start} bytes asked for (bytes "
                    f"{start}-{stop - 1} of a file listed at {self.file(name).size} bytes); retry later, and "
                    "report it to the repo or the mirror if it persists"
                )
            return b"".join(chunks)

        return retrying(self.network, f"{self.repo_id}/{name}: header", get)

    def download(self, name: str) -> Path:
        """Fetch one shard into the HF cache (huggingface_hub resumes dropped connections with Range)."""
        from huggingface_hub import hf_hub_download

        self._drop_stale_partials(name)

        def fetch() -> Path:
            return Path(
                hf_hub_download(
                    self.repo_id,
                    name,
                    revision=self.commit,
                    cache_dir=self.cache_dir,
                    endpoint=self.endpoint,
                    token=self.token,
                    etag_timeout=self.network.timeout,
                )
            )

        try:
            return retrying(self.network, f"{self.repo_id}/{name}", fetch)
        except Exception as err:  # noqa: BLE001 - mapped to one line
            raise hub_error(err, self.repo_id, self.revision, self.endpoint, name) from None

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


def hub_error(
    err: BaseException, repo_id: str, revision: str | None, endpoint: str | None, name: str | None = None
) -> SourceError:
    """One line for each way the Hub can refuse: gated, missing repo, missing revision or file, offline, a
    body shorter than the server declared, network (after the retries of HubNetwork.call)."""
    import httpx2
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
    what = f"{repo_id}/{name}" if name else repo_id
    if isinstance(err, httpx2.RemoteProtocolError) or "Consistency check failed" in str(err):
        return SourceError(
            f"{what}: the server sent fewer bytes than it declared ({_first_line(err)}); retry later, and report "
            "it to the repo or the mirror if it persists"
        )
    return SourceError(
        f"{repo_id}: cannot reach {where} ({type(err).__name__}: {_first_line(err)}); check the "
        "network or HF_ENDPOINT, or use --offline to scan from the HF cache"
    )


def _first_line(err: BaseException) -> str:
    text = " ".join(str(err).split("\n")[:1]).strip() or type(err).__name__
    return text[:200]


def resolve_hub(
    repo_id: str,
    revision: str | None = None,
    offline: bool | None = None,
    token: str | bool | None = None,
    network: HubNetwork | None = None,
) -> tuple[HubSource, list[Path], Path | None, dict]:
    """Pin REPO_ID@REVISION to a commit. Returns (hub source, shard paths, index path or None, config).

    Online: one ``model_info`` call (commit, file sizes), then the small index and config files through
    ``hf_hub_download`` (cached, and they record the branch -> commit ref for a later offline run).
    Offline (``offline`` or ``HF_HUB_OFFLINE=1``): the cache only; a missing shard is named. Every request
    has NETWORK's timeout and retries.
    """
    from huggingface_hub import constants

    network = network or HubNetwork()

    offline = constants.is_offline_mode() if offline is None else (offline or constants.is_offline_mode())
    cache = Path(constants.HF_HUB_CACHE)
    endpoint = constants.ENDPOINT
    if offline:
        return _resolve_offline(repo_id, revision, cache, token, network)
    from huggingface_hub import HfApi, hf_hub_download

    try:
        info = retrying(
            network,
            f"{repo_id}: model info",
            lambda: HfApi(endpoint=endpoint, token=token).model_info(
                repo_id, revision=revision, files_metadata=True, timeout=network.timeout
            ),
        )
        sizes = {s.rfilename: s for s in info.siblings or []}
        commit = info.sha
        if not commit:
            raise SourceError(f"{repo_id}: the Hub did not say which commit {revision or 'main'} is; retry")
        names = set(sizes)
        small = [n for n in (INDEX_NAME, CONFIG_NAME) if n in names]
        local: dict[str, Path] = {}
        for n in small:  # with the asked revision: the cache records its ref for offline runs
            local[n] = Path(
                retrying(
                    network,
                    f"{repo_id}/{n}",
                    lambda n=n: hf_hub_download(
                        repo_id,
                        n,
                        revision=revision or commit,
                        cache_dir=cache,
                        endpoint=endpoint,
                        token=token,
                        etag_timeout=network.timeout,
                    ),
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
            files.append(_remote_file_by_head(repo_id, commit, n, endpoint, token, revision, network))
            continue
        files.append(RemoteFile(n, int(sib.size), sib.lfs.sha256 if sib.lfs else _etag(sib)))
    _record_ref(cache, repo_id, revision, commit)
    hub = HubSource(
        repo_id, revision or "main", commit, cache, tuple(files), frozenset(), False, endpoint, token, network
    )
    hub = _with_cached(hub)
    return hub, [hub.path(n) for n in shards], local.get(INDEX_NAME), _config(local.get(CONFIG_NAME))


def _remote_file_by_head(
    repo_id: str, commit: str, name: str, endpoint: str, token, revision: str | None, network: HubNetwork
) -> RemoteFile:
    """A shard's size and etag from a HEAD request (get_hf_file_metadata), when model info lacks them."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
    try:
        meta = retrying(
            network, f"{repo_id}/{name}", lambda: get_hf_file_metadata(url, token=token, timeout=network.timeout)
        )
    except Exception as err:  # noqa: BLE001 - mapped to one line
        raise hub_error(err, repo_id, revision, endpoint, name) from None
    if meta.size is None:
        raise SourceError(f"{repo_id}@{commit[:12]}: the Hub gives no size for {name}; retry, or use another endpoint")
    return RemoteFile(name, int(meta.size), meta.etag)


def _etag(sibling) -> str | None:
    return getattr(sibling, "blob_id", None)


def _with_cached(hub: HubSource) -> HubSource:
    cached = frozenset(f.name for f in hub.files if hub.present(f.name))
    return dataclasses.replace(hub, cached=cached)


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
    repo_id: str, revision: str | None, cache: Path, token, network: HubNetwork
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
    hub = HubSource(repo_id, rev, commit, cache, files, frozenset(shards), True, None, token, network)
    config = snap / CONFIG_NAME
    return (
        hub,
        [hub.path(n) for n in shards],
        index if index.exists() else None,
        _config(config if config.exists() else None),
    )


def _config(path: Path | None) -> dict:
    return read_config(path.parent) if path is not None else {}
