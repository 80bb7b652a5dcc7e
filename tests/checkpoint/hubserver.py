"""A local HTTP server that speaks the parts of the Hugging Face Hub protocol huggingface_hub uses.

Not a mock of huggingface_hub: the real client talks HTTP to it (``HF_ENDPOINT=http://127.0.0.1:PORT``).
Served: ``GET /api/models/{repo}[/revision/{rev}]`` (sha, siblings with sizes and LFS info),
``HEAD|GET /{repo}/resolve/{rev}/{file}`` with ``X-Repo-Commit``, ``ETag`` and for LFS files
``X-Linked-Etag``/``X-Linked-Size``, ``Range`` -> 206, ``401 GatedRepo`` without a valid token for a gated
repo, ``404`` with the Hub's ``X-Error-Code`` for a missing repo, revision or file. Switches: ``drop``
(cut the connection after N bytes of a file, a given number of times), ``rate`` (bytes/s per response),
``fail`` (an HTTP status for a file's downloads, header Range reads still served), and faults for a request
kind (``"info"``: model info; ``"head:F"``, ``"get:F"``, ``"range:F"``: HEAD, GET, Range GET of file F), each
used once per request, in order: ``errors`` (an HTTP status, e.g. one 500), ``stall`` (send N bytes of the body,
then nothing until the server stops), ``short`` (declare the whole body, send N bytes, close); ``truncate``
serves only a file's first N bytes to GETs, model info and HEAD still listing its full size.
``latency`` delays every answer (a network's round trip); ``max_in_flight`` is the most Range GETs answered at
once. Every request is logged in ``requests`` as (method, path, Range header).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

CHUNK = 64 * 1024


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {filename: content}
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> sha
    gated: bool = False

    def commit_of(self, rev: str) -> str | None:
        return rev if rev in self.commits else self.refs.get(rev)


def _is_lfs(name: str) -> bool:
    return name.endswith(".safetensors")


def _etag(name: str, content: bytes) -> str:
    if _is_lfs(name):
        return hashlib.sha256(content).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()  # a git blob id, as the Hub


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.drop: dict[str, list[int]] = {}  # filename -> byte offsets (in the file) at which to cut, one per drop
        self.rate: float | None = None
        self.latency = 0.0  # seconds each request waits before its answer (a network's round trip)
        self.in_flight = self.max_in_flight = 0  # Range GETs (header probes) being answered at once
        self.fail: dict[str, int] = {}  # filename -> HTTP status for its downloads (HEAD, GET without Range)
        # file sizes (and LFS info) in model info: "always"; "blobs": only with ?blobs=true, as the real Hub;
        # "never": as some mirrors and proxies (clients must HEAD each file)
        self.sizes = "always"
        self.errors: dict[str, list[int]] = {}  # request kind -> HTTP statuses to answer, one per request
        self.stall: dict[str, list[int]] = {}  # request kind -> body bytes sent before it stalls, one per request
        self.short: dict[str, list[int]] = {}  # request kind -> body bytes sent before it closes, one per request
        self.truncate: dict[str, int] = {}  # filename -> bytes its GETs serve (model info and HEAD: the full size)
        self.stopped = threading.Event()
        self.token = "hf_streamscan_test_token"
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()  # stalled responses end
        self.server.shutdown()
        self.server.server_close()

    def add_commit(self, repo_id: str, folder: Path, branch: str = "main", gated: bool = False) -> str:
        """Publish every file of FOLDER as a new commit of REPO_ID on BRANCH; returns the commit sha."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        repo = self.repos.setdefault(repo_id, Repo(gated=gated))
        digest = hashlib.sha1(
            repo_id.encode()
            + b"".join(n.encode() + hashlib.sha256(c).digest() for n, c in files.items())
            + str(len(repo.commits)).encode()
        )
        sha = digest.hexdigest()
        repo.commits[sha] = files
        repo.refs[branch] = sha
        return sha

    def fault(self, kind: str, faults: dict[str, list[int]]) -> int | None:
        """The next fault of FAULTS for a request of KIND, used up; None when there is none."""
        with self.lock:
            queue = faults.get(kind)
            return queue.pop(0) if queue else None

    def gets(self, suffix: str) -> list[tuple[str, str, str | None]]:
        """GET requests of files whose path ends with SUFFIX."""
        with self.lock:
            return [r for r in self.requests if r[0] == "GET" and "/resolve/" in r[1] and r[1].endswith(suffix)]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._route(body=False)

        def do_GET(self) -> None:
            probe = bool(self.headers.get("Range"))
            with hub.lock:
                hub.in_flight += probe
                hub.max_in_flight = max(hub.max_in_flight, hub.in_flight)
            try:
                self._route(body=True)
            finally:
                with hub.lock:
                    hub.in_flight -= probe

        # routing ------------------------------------------------------------------------------------
        def _route(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with hub.lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
            if hub.latency:
                time.sleep(hub.latency)
            m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/(.+))?", path)
            if m:
                status = hub.fault("info", hub.errors)
                if status:
                    return self._error(status, None, "Injected error")
                blobs = "blobs=true" in (urlsplit(self.path).query or "")
                return self._info(m.group(1), m.group(2) or "main", blobs)
            m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
            if m:
                return self._resolve(m.group(1), m.group(2), m.group(3), body)
            self._error(404, None, "Not Found")

        def _error(self, status: int, code: str | None, message: str, commit: str | None = None) -> None:
            data = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _find(self, repo_id: str, rev: str) -> tuple[Repo, str] | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", "Repository not found")
                return None
            sha = repo.commit_of(rev)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return None
            return repo, sha

        def _info(self, repo_id: str, rev: str, blobs: bool = False) -> None:
            found = self._find(repo_id, rev)
            if found is None:
                return
            repo, sha = found
            siblings = []
            for name, content in repo.commits[sha].items():
                sib = {"rfilename": name}
                if hub.sizes == "never" or (hub.sizes == "blobs" and not blobs):
                    siblings.append(sib)
                    continue
                sib.update(size=len(content), blobId=_etag(name, content))
                if _is_lfs(name):
                    sib["lfs"] = {"size": len(content), "sha256": _etag(name, content), "pointerSize": 134}
                siblings.append(sib)
            data = json.dumps(
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": False,
                    "gated": "auto" if repo.gated else False,
                    "siblings": siblings,
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _resolve(self, repo_id: str, rev: str, name: str, body: bool) -> None:
            found = self._find(repo_id, rev)
            if found is None:
                return
            repo, sha = found
            if repo.gated and self.headers.get("Authorization") != f"Bearer {hub.token}":
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted.")
            status = hub.fail.get(name)
            if status and (self.command == "HEAD" or not self.headers.get("Range")):
                return self._error(status, None, "Forbidden")
            kind = f"{'head' if self.command == 'HEAD' else 'range' if self.headers.get('Range') else 'get'}:{name}"
            status = hub.fault(kind, hub.errors)
            if status:
                return self._error(status, None, "Injected error")
            content = repo.commits[sha].get(name)
            if content is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist on {rev}", commit=sha)
            if self.command == "GET" and name in hub.truncate:  # a body shorter than model info and HEAD say
                content = content[: hub.truncate[name]]
            start, end = 0, len(content) - 1
            rng = self.headers.get("Range")
            if rng:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
                start = int(m.group(1))
                end = min(int(m.group(2)) if m.group(2) else end, len(content) - 1)
            self.send_response(206 if rng else 200)
            etag = _etag(name, content)
            self.send_header("X-Repo-Commit", sha)
            self.send_header("ETag", f'"{etag}"')
            if _is_lfs(name):
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(content)))
            self.send_header("Accept-Ranges", "bytes")
            if rng:
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(content)}")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not body:
                return
            cut = None
            with hub.lock:
                offsets = hub.drop.get(name)
                if offsets and start < offsets[0] <= end:
                    cut = offsets.pop(0)
            stall, short = hub.fault(kind, hub.stall), hub.fault(kind, hub.short)
            if stall is not None:
                self._send(content, start, min(end + 1, start + stall))
                self.wfile.flush()
                hub.stopped.wait(120)  # the client's timeout must end this
                self.close_connection = True
                return
            if short is not None:
                cut = start + short
            self._send(content, start, end + 1 if cut is None else cut)
            if cut is not None:  # the connection drops mid-file
                self.close_connection = True
                self.wfile.flush()
                self.connection.shutdown(2)

        def _send(self, content: bytes, start: int, stop: int) -> None:
            began = time.monotonic()
            pos = start
            try:
                while pos < stop:
                    chunk = content[pos : min(stop, pos + CHUNK)]
                    self.wfile.write(chunk)
                    pos += len(chunk)
                    if hub.rate:
                        lag = (pos - start) / hub.rate - (time.monotonic() - began)
                        if lag > 0:
                            time.sleep(lag)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    return Handler
