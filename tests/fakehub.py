"""A local fake of the Hugging Face Hub, close enough for huggingface_hub's own download code.

Serves what `huggingface_hub` 0.x needs to run unmodified against `endpoint=<base_url>`:

- `GET /api/models/{repo_id}` and `/api/models/{repo_id}/revision/{revision}` (model_info /
  repo_info; `?blobs=true` adds sizes, blob ids and LFS metadata to `siblings`, as the real hub
  does only when asked), and `/api/models/{repo_id}/tree/{revision}` (list_repo_tree).
- `HEAD`/`GET /{repo_id}/resolve/{revision}/{filename}` with `X-Repo-Commit`, `ETag`,
  `X-Linked-Etag`/`X-Linked-Size` (LFS files), `Content-Length`, `Accept-Ranges` and
  `Range: bytes=N-` resumption (206 + `Content-Range`).
- Errors carry the hub's `X-Error-Code` header (`RepoNotFound`, `RevisionNotFound`,
  `EntryNotFound`, `GatedRepo`), which huggingface_hub maps to its exception classes.
- Gated repos (`gated_tokens=`): their metadata is public, as on the real hub, but a file
  needs `Authorization: Bearer <token>` with a token whose licence is accepted: 401 without
  one, 403 with any other.

Faults and observations are plain attributes a test can change while the hub runs.
Files given as a `Path` are streamed from disk and hashed lazily (in a worker thread), so a
75 MB model costs no memory and never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pytest
from aiohttp import web

#: Body chunk size (unthrottled).
CHUNK = 64 * 1024
#: Files at least this big are stored with LFS (as are files with an LFS-typical suffix).
LFS_THRESHOLD = 1024 * 1024
LFS_SUFFIXES = frozenset(
    {".bin", ".safetensors", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".msgpack", ".model"}
)

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with this content."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file committed in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class FakeFile:
    """One file of a repo: in memory (`data`) or on disk (`path`). Hashes are computed once."""

    name: str
    data: bytes | None = None
    path: Path | None = None
    lfs: bool | None = None  # None: decided by size and suffix
    _sha256: str | None = field(default=None, repr=False)
    _git_sha1: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.data is None) == (self.path is None):
            raise ValueError("FakeFile needs exactly one of data or path")
        if self.lfs is None:
            self.lfs = self.size >= LFS_THRESHOLD or Path(self.name).suffix in LFS_SUFFIXES

    @property
    def size(self) -> int:
        if self.data is not None:
            return len(self.data)
        assert self.path is not None
        return self.path.stat().st_size

    def _hash(self) -> None:
        if self._sha256 is not None:
            return
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1(b"blob %d\0" % self.size)
        if self.data is not None:
            sha256.update(self.data)
            sha1.update(self.data)
        else:
            assert self.path is not None
            with self.path.open("rb") as f:
                while chunk := f.read(1024 * 1024):
                    sha256.update(chunk)
                    sha1.update(chunk)
        self._git_sha1 = sha1.hexdigest()
        self._sha256 = sha256.hexdigest()

    @property
    def sha256(self) -> str:
        self._hash()
        assert self._sha256 is not None
        return self._sha256

    @property
    def git_sha1(self) -> str:
        """Git object id of the content itself (what a non-LFS file's ETag is)."""
        self._hash()
        assert self._git_sha1 is not None
        return self._git_sha1

    @property
    def pointer(self) -> bytes:
        return lfs_pointer(self.sha256, self.size)

    @property
    def blob_id(self) -> str:
        """What the hub reports as `blobId`: the git id of the committed blob (the pointer for LFS)."""
        return git_blob_sha1(self.pointer) if self.lfs else self.git_sha1

    @property
    def etag(self) -> str:
        """Unquoted ETag huggingface_hub ends up with: sha256 for LFS files, git sha1 otherwise."""
        return self.sha256 if self.lfs else self.git_sha1

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()

    def open(self) -> BinaryIO:
        assert self.path is not None
        return self.path.open("rb")


@dataclass
class FakeRepo:
    repo_id: str
    sha: str
    files: dict[str, FakeFile]
    last_modified: str = "2024-01-01T00:00:00.000Z"
    #: Gated: the tokens whose users accepted the licence (None: a public repo).
    gated_tokens: frozenset[str] | None = None

    def hashed(self) -> None:
        for f in self.files.values():
            f._hash()


class FakeHub:
    """Model repos served over HTTP, with observation and fault injection for tests."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        # observation
        self.requests: list[tuple[str, str]] = []
        self.ranges: list[tuple[str, str]] = []
        self.denied: list[int] = []  # statuses of refused requests for gated files, in order
        self.authorized: list[tuple[str, str]] = []  # gated-file requests let through (method, path)
        self._downloads: dict[tuple[str, str], int] = {}
        self._sent: dict[tuple[str, str], int] = {}
        # faults
        self.throttle_bytes_per_s: float | None = None
        self.down: bool = False
        self.fail_files: dict[str, int] = {}  # filename -> status, for HEAD and GET
        self.fail_downloads: dict[str, int] = {}  # filename -> status, for GET only (HEAD succeeds)
        self.corrupt_files: set[str] = set()
        self.cut_files: dict[str, int] = {}  # filename -> drop the connection after this many body bytes
        self.redirect_lfs: bool = False  # LFS resolve -> 302 to an absolute same-host "CDN" URL
        self.base_url: str = ""  # set by start_fake_hub (needed for absolute redirects)
        self.app = web.Application()
        self.app.router.add_route("GET", "/api/models/{tail:.+}", self._api)
        self.app.router.add_route("HEAD", "/_cdn/{repo_sha}/{filename:.+}", self._cdn)
        self.app.router.add_route("GET", "/_cdn/{repo_sha}/{filename:.+}", self._cdn)
        self.app.router.add_route("HEAD", "/{tail:.+}", self._resolve)
        self.app.router.add_route("GET", "/{tail:.+}", self._resolve)
        self.app.middlewares.append(self._observe)

    # -- repos ---------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | Path],
        *,
        revision_sha: str | None = None,
        lfs: Iterable[str] | None = None,
        gated_tokens: Iterable[str] | None = None,
    ) -> FakeRepo:
        """Publish a repo. `lfs` names the LFS files (default: ≥ 1 MiB or a weights suffix);
        `gated_tokens` makes it gated, readable with those tokens only.

        Path files are neither read nor hashed here; that happens on first request, in a thread.
        """
        lfs_names = set(lfs) if lfs is not None else None
        fake_files: dict[str, FakeFile] = {}
        for name, content in files.items():
            is_lfs = None if lfs_names is None else name in lfs_names
            if isinstance(content, Path):
                fake_files[name] = FakeFile(name, path=content, lfs=is_lfs)
            else:
                fake_files[name] = FakeFile(name, data=bytes(content), lfs=is_lfs)
        if revision_sha is None:
            listing = "\n".join(f"{n}:{f.size}" for n, f in sorted(fake_files.items()))
            revision_sha = hashlib.sha1(f"{repo_id}\n{listing}\n{len(self.repos)}".encode()).hexdigest()
        if not _SHA_RE.match(revision_sha):
            raise ValueError(f"revision_sha must be 40 lowercase hex digits: {revision_sha!r}")
        gate = frozenset(gated_tokens) if gated_tokens is not None else None
        repo = FakeRepo(repo_id, revision_sha, fake_files, gated_tokens=gate)
        self.repos[repo_id] = repo
        return repo

    def add_repo_from_dir(
        self,
        repo_id: str,
        directory: Path,
        *,
        revision_sha: str | None = None,
        gated_tokens: Iterable[str] | None = None,
    ) -> FakeRepo:
        """Publish every file under `directory` (recursively; dot-files and dot-dirs skipped)."""
        files: dict[str, bytes | Path] = {}
        for p in sorted(directory.rglob("*")):
            rel = p.relative_to(directory)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                files[rel.as_posix()] = p
        return self.add_repo(repo_id, files, revision_sha=revision_sha, gated_tokens=gated_tokens)

    def file(self, repo_id: str, filename: str) -> FakeFile:
        return self.repos[repo_id].files[filename]

    # -- observation ---------------------------------------------------------------------------

    def downloads(self, repo_id: str, filename: str) -> int:
        """How many GET bodies of this file were started (ranged GETs included)."""
        return self._downloads.get((repo_id, filename), 0)

    def bytes_sent(self, repo_id: str, filename: str) -> int:
        """Body bytes of this file written to clients so far, over all GETs."""
        return self._sent.get((repo_id, filename), 0)

    def reset_counters(self) -> None:
        self.requests.clear()
        self.ranges.clear()
        self.denied.clear()
        self.authorized.clear()
        self._downloads.clear()
        self._sent.clear()

    # -- HTTP ----------------------------------------------------------------------------------

    @web.middleware
    async def _observe(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        if self.down:
            return _error(503, None, "Service Unavailable")
        return await handler(request)

    def _find(self, repo_id: str, revision: str) -> FakeRepo | web.Response:
        repo = self.repos.get(repo_id)
        if repo is None:
            return _error(404, "RepoNotFound", "Repository not found")
        if revision not in ("main", repo.sha):
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo

    async def _api(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        revision = "main"
        tree = False
        if "/revision/" in tail:
            tail, revision = tail.split("/revision/", 1)
        elif "/tree/" in tail:
            tail, rest = tail.split("/tree/", 1)
            revision, _, path = rest.partition("/")
            tree = True
        found = self._find(tail, revision)
        if isinstance(found, web.Response):
            return found
        repo = found
        await asyncio.to_thread(repo.hashed)
        if tree:
            return web.json_response([_tree_entry(f) for f in repo.files.values() if f.name.startswith(path)])
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        siblings = [_sibling(f) if blobs else {"rfilename": f.name} for f in repo.files.values()]
        body = {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0] if "/" in repo.repo_id else None,
            "sha": repo.sha,
            "lastModified": repo.last_modified,
            "createdAt": repo.last_modified,
            "private": False,
            "gated": "manual" if repo.gated_tokens is not None else False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["ctranslate2", "audio", "automatic-speech-recognition"],
            "pipeline_tag": "automatic-speech-recognition",
            "library_name": "ctranslate2",
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(f.size for f in repo.files.values()),
        }
        return web.json_response(body, headers={"X-Repo-Commit": repo.sha})

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        tail = request.match_info["tail"]
        if "/resolve/" not in tail:
            return _error(404, None, "Not found")
        repo_id, rest = tail.split("/resolve/", 1)
        revision, _, filename = rest.partition("/")
        found = self._find(repo_id, revision)
        if isinstance(found, web.Response):
            return found
        repo = found
        fake = repo.files.get(filename)
        if fake is None:
            return _error(404, "EntryNotFound", f'{filename} does not exist on "{revision}"', repo.sha)
        refused = self._gate(request, repo)
        if refused is not None:
            return refused
        if filename in self.fail_files:
            return _error(self.fail_files[filename], None, f"injected failure for {filename}", repo.sha)
        await asyncio.to_thread(fake._hash)
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{fake.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'inline; filename="{Path(filename).name}";',
        }
        if fake.lfs:
            headers["X-Linked-Etag"] = f'"{fake.sha256}"'
            headers["X-Linked-Size"] = str(fake.size)
            if self.redirect_lfs:
                location = f"{self.base_url}/_cdn/{repo.sha}/{filename}"
                headers["Location"] = location
                return web.Response(status=302, headers=headers)
        return await self._body(request, repo, fake, headers)

    def _gate(self, request: web.Request, repo: FakeRepo) -> web.Response | None:
        """The real hub's answers for a gated repo's file: 401 anonymous, 403 not accepted."""
        if repo.gated_tokens is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            self.denied.append(401)
            message = (
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            return _error(401, "GatedRepo", message, repo.sha)
        if token not in repo.gated_tokens:
            self.denied.append(403)
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized "
                f"list. Visit https://huggingface.co/{repo.repo_id} to ask for access."
            )
            return _error(403, "GatedRepo", message, repo.sha)
        self.authorized.append((request.method, request.path))
        return None

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        """Where LFS files redirect to when `redirect_lfs` is set (the real hub's CDN)."""
        repo = next((r for r in self.repos.values() if r.sha == request.match_info["repo_sha"]), None)
        fake = repo.files.get(request.match_info["filename"]) if repo else None
        if repo is None or fake is None:
            return _error(404, None, "NoSuchKey")
        headers = {
            "ETag": f'"{fake.sha256}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        return await self._body(request, repo, fake, headers)

    async def _body(
        self, request: web.Request, repo: FakeRepo, fake: FakeFile, headers: dict[str, str]
    ) -> web.StreamResponse:
        size = fake.size
        start, end = 0, size - 1
        status = 200
        range_header = request.headers.get("Range")
        if request.method == "GET":
            key = (repo.repo_id, fake.name)
            if fake.name in self.fail_downloads:
                return _error(
                    self.fail_downloads[fake.name], None, f"injected failure for {fake.name}", repo.sha
                )
            self._downloads[key] = self._downloads.get(key, 0) + 1
            if range_header is not None:
                self.ranges.append((fake.name, range_header))
        if range_header is not None:
            m = _RANGE_RE.match(range_header.strip())
            if m is None or (not m.group(1) and not m.group(2)):
                return _error(416, None, "Invalid range", headers={"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                if m.group(2):
                    end = min(int(m.group(2)), size - 1)
            else:  # suffix range: last N bytes
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return _error(
                    416, None, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"}
                )
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = end - start + 1
        await resp.prepare(request)
        if request.method == "HEAD":
            await resp.write_eof()
            return resp
        if await self._stream(request, resp, repo, fake, start, end + 1):
            await resp.write_eof()
        return resp

    async def _stream(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        repo: FakeRepo,
        fake: FakeFile,
        start: int,
        stop: int,
    ) -> bool:
        """Write bytes [start, stop) of the file; False if the connection was cut on purpose."""
        key = (repo.repo_id, fake.name)
        reader: BinaryIO | None = None
        if fake.path is not None:
            reader = await asyncio.to_thread(fake.open)
            await asyncio.to_thread(reader.seek, start)
        try:
            pos = start
            sent = 0
            while pos < stop:
                rate = self.throttle_bytes_per_s
                n = min(CHUNK if not rate else max(1024, min(CHUNK, int(rate / 20))), stop - pos)
                cut = self.cut_files.get(fake.name)
                if cut is not None:
                    if sent >= cut:
                        if request.transport is not None:
                            request.transport.close()
                        return False
                    n = min(n, cut - sent)
                if reader is not None:
                    chunk = await asyncio.to_thread(reader.read, n)
                else:
                    assert fake.data is not None
                    chunk = fake.data[pos : pos + n]
                if fake.name in self.corrupt_files:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                try:
                    await resp.write(chunk)
                except ConnectionResetError:  # the client went away (killed, or gave up)
                    return False
                pos += n
                sent += n
                self._sent[key] = self._sent.get(key, 0) + n
                if rate:
                    await asyncio.sleep(n / rate)
            return True
        finally:
            if reader is not None:
                await asyncio.to_thread(reader.close)


def _sibling(f: FakeFile) -> dict[str, object]:
    entry: dict[str, object] = {"rfilename": f.name, "size": f.size, "blobId": f.blob_id}
    if f.lfs:
        entry["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
    return entry


def _tree_entry(f: FakeFile) -> dict[str, object]:
    entry: dict[str, object] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.name}
    if f.lfs:
        entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.pointer)}
    return entry


def _error(
    status: int,
    code: str | None,
    message: str,
    repo_sha: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    h = dict(headers or {})
    if code is not None:
        h["X-Error-Code"] = code
    h["X-Error-Message"] = message
    if repo_sha is not None:
        h["X-Repo-Commit"] = repo_sha
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json", headers=h
    )


async def start_fake_hub(hub: FakeHub) -> tuple[str, Callable[[], Awaitable[None]]]:
    """Serve `hub` on 127.0.0.1 at a free port; returns (base_url, stop)."""
    runner = web.AppRunner(hub.app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    hub.base_url = f"http://{host}:{port}"

    async def stop() -> None:
        await runner.cleanup()

    return hub.base_url, stop


@contextlib.asynccontextmanager
async def serving_as_endpoint(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    """Serve `hub` as huggingface_hub's official endpoint (HF_ENDPOINT) for one test."""
    url, stop = await start_fake_hub(hub)
    monkeypatch.setenv("HF_ENDPOINT", url)
    try:
        yield hub
    finally:
        await stop()
