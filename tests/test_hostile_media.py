"""Hostile media: files that name other files or URLs, playlists that never end, hung ffmpeg.

Each is refused with a clear 400 before any job exists, or ends as a failed job within
seconds, and nothing outside the file itself is opened: the "private" files are FIFOs that
trip the moment any process opens them for reading (tests.media.Tripwire), and the URL is a
listening socket that records any connection. Refusals need no runner: they happen before a
job is queued, so these tests never wait for whisperx.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests import conftest
from tests.conftest import ServiceFactory
from tests.http_helpers import open_stream, post_upload, upload
from tests.media import (
    LONG_SENTENCES,
    Speech,
    fifo_tripwire,
    make_ffconcat,
    make_hls_playlist,
    make_speech,
    word_error_rate,
)
from tests.procs import tool_pids
from vsrt_service.core.config import Settings
from vsrt_service.core.formats import parse_srt
from vsrt_service.jobs.media import MediaError, extract_audio
from vsrt_service.web.keys import SETTINGS
from vsrt_service.web.uploads import display_name

#: How long a refusal may take: probing is a fraction of a second; this is generous.
ANSWER_WITHIN = 30.0
REFUSAL_CODES = {"not_media", "unsupported_media"}


@dataclass(frozen=True)
class Hostile:
    """A file that tries to make ffmpeg read something else.

    `write(folder, outside, url)` creates it in `folder`; `outside` is a private file beyond
    the data directory and the media roots, `url` an HTTP server no one may contact. A file
    that names a sibling (relative paths are all ffconcat's safe mode allows) names
    `sibling`, which the test places next to it.
    """

    id: str
    write: Callable[[Path, Path, str], Path]
    sibling: str = "neighbour.ts"
    upload: bool = True  # also sent as an upload (a 10 GB file is only named by path)


def _text(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(body, encoding="utf-8")
    return folder / name


def _image_pattern(folder: Path, outside: Path, url: str) -> Path:
    """A real PNG whose name is an image2 sequence pattern matching its sibling img001.png."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "img%03d.png"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "color=s=16x16",
            "-frames:v",
            "1",
            "-f",
            "image2",
            "-update",
            "1",
            str(out),
        ],
        check=True,
    )
    return out


def _sparse(folder: Path, outside: Path, url: str) -> Path:
    """10 GB (sparse: no disk used) that starts like an mp4: an `ftyp` box, then zeros."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "huge.mp4"
    with out.open("wb") as fh:
        fh.write(b"\0\0\0\x18ftypisom\0\0\x02\0isomiso2")
        fh.truncate(10 << 30)
    return out


HOSTILE = [
    Hostile("hls", lambda d, o, u: make_hls_playlist(d / "talk.mp4", o)),
    Hostile("hls-live", lambda d, o, u: make_hls_playlist(d / "talk.mp4", o, endlist=False)),
    Hostile("hls-url", lambda d, o, u: make_hls_playlist(d / "talk.mp4", f"{u}/x.ts", endlist=False)),
    Hostile("hls-sibling", lambda d, o, u: make_hls_playlist(d / "talk.mp4", "neighbour.ts")),
    Hostile("ffconcat", lambda d, o, u: make_ffconcat(d / "list.mp4", o)),
    Hostile("ffconcat-sibling", lambda d, o, u: make_ffconcat(d / "list.mp4", "neighbour.ts")),
    Hostile("concat", lambda d, o, u: _text(d, "list.mp4", f"file '{o}'\nfile 'neighbour.ts'\n")),
    Hostile("image2", _image_pattern, sibling="img001.png"),
    Hostile("one-byte", lambda d, o, u: _text(d, "tiny.mp4", "x")),
    Hostile("sparse-10g", _sparse, upload=False),
]


class Listener:
    """An HTTP address that accepts connections (the kernel completes them) but never answers;
    `contacted()` says whether anything connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def contacted(self) -> bool:
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    try:
        yield lst
    finally:
        lst.sock.close()


ClientFactory = Callable[..., Awaitable[tuple[TestClient[Any, Any], Settings]]]


@pytest.fixture
def make_client(make_client: conftest.ClientFactory) -> ClientFactory:
    """conftest's clients, with the settings each was made with."""

    async def make(**overrides: Any) -> tuple[TestClient[Any, Any], Settings]:
        client = await make_client(**overrides)
        return client, client.app[SETTINGS]

    return make


async def _answer(request: Awaitable[Any]) -> Any:
    """The response, or None when the server did not answer in time (a hung probe)."""
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            return await request
    except TimeoutError:
        return None


async def _check_refused(
    resp: Any, field: str, name: str, client: TestClient[Any, Any], tmp_path: Path
) -> None:
    assert resp is not None, f"no answer within {ANSWER_WITHIN:.0f} s: the probe hung"
    body = await resp.json()
    assert resp.status == 400, body
    error = body["error"]
    assert error["code"] in REFUSAL_CODES and error["field"] == field, error
    assert name in error["message"], error
    assert str(tmp_path) not in error["message"] and "/" not in error["message"], error
    jobs = await (await client.get("/api/jobs")).json()
    assert jobs["total"] == 0, jobs


async def _refuse_one(
    client: TestClient[Any, Any],
    settings: Settings,
    case: Hostile,
    way: str,
    listener: Listener,
    tmp_path: Path,
) -> None:
    """Send one hostile file as an upload or name it as a `path` job; it must be refused
    without anything else being read."""
    folder = tmp_path / ("media" if way == "path" else "client") / case.id
    outside = tmp_path / "private" / f"{case.id}-{way}.ts"
    next_to = folder if way == "path" else settings.uploads_dir
    with fifo_tripwire(outside) as private, fifo_tripwire(next_to / case.sibling) as neighbour:
        hostile = await asyncio.to_thread(case.write, folder, outside, listener.url)
        if way == "path":
            field, shown = "path", hostile.name
            resp = await _answer(client.post("/api/jobs", json={"path": f"{case.id}/{hostile.name}"}))
        else:  # the name as the server shows it: the client percent-encodes it, `%` is folded
            field, shown = "file", display_name(hostile.name.replace("%", "%25"))
            resp = await _answer(post_upload(client, hostile))
    assert not private.opened.is_set(), "ffmpeg opened a file outside the one sent"
    assert not neighbour.opened.is_set(), "ffmpeg opened a file next to the one sent"
    assert not listener.contacted(), "ffmpeg connected to a URL named in the file"
    await _check_refused(resp, field, shown, client, tmp_path)
    if way == "upload":  # the stored upload is gone too
        assert not await asyncio.to_thread(lambda: list(settings.uploads_dir.iterdir()))


async def test_hostile_media_is_refused_and_nothing_else_is_read(
    make_client: ClientFactory, listener: Listener, tmp_path: Path
) -> None:
    # One app for every case (an app's start and stop cost seconds); each case reports alone.
    client, settings = await make_client(server={"media_roots": [str(tmp_path / "media")]})
    problems = []
    for case in HOSTILE:
        for way in ("upload", "path") if case.upload else ("path",):
            try:
                await _refuse_one(client, settings, case, way, listener, tmp_path)
            except AssertionError as exc:
                problems.append(f"{case.id} ({way}): {exc}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def private_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """Speech no job may ever transcribe, as an MPEG-TS segment (what HLS playlists name)."""
    return make_speech(tmp_path_factory.mktemp("private") / "interview.ts", LONG_SENTENCES[6:8], video=False)


async def test_playlist_naming_real_private_speech_never_yields_its_words(
    make_client: ClientFactory, private_speech: Speech, tmp_path: Path
) -> None:
    client, _ = await make_client()
    hostile = await asyncio.to_thread(make_hls_playlist, tmp_path / "talk.mp4", private_speech.path)
    resp = await _answer(post_upload(client, hostile))
    assert resp is not None
    # Whatever the answer, no job may end with the private speech's words.
    for job in (await (await client.get("/api/jobs")).json())["jobs"]:
        stream = await open_stream(client, job["job_id"])
        async with asyncio.timeout(300):
            await stream.until(
                lambda e: (
                    e.event == "error"
                    or (e.event == "signal" and e.data["code"] in ("job_complete", "paused", "canceled"))
                )
            )
        text = (await (await client.get(f"/api/transcription-text/{job['job_id']}")).json())["text"]
        assert word_error_rate(private_speech.text, text) > 0.9, f"private speech leaked: {text!r}"
    await _check_refused(resp, "file", "talk.mp4", client, tmp_path)


# --- hung ffmpeg ---------------------------------------------------------------------------


def _hang_extraction(settings: Settings, job_id: str) -> None:
    """Make the job's ffmpeg hang for real: its output file is a FIFO that no one reads, so
    ffmpeg blocks in open() after a successful probe, as on a stalled disk or mount."""
    job_dir = settings.jobs_dir / job_id
    job_dir.mkdir(parents=True, exist_ok=True)
    os.mkfifo(job_dir / "audio.wav.part")


async def _alive(pid: int) -> bool:
    """Whether the process exists at all (a zombie not yet reaped counts)."""
    return await asyncio.to_thread(os.path.exists, f"/proc/{pid}")


async def _ffmpeg_of(job_id: str, within: float = 20.0) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pids = await asyncio.to_thread(tool_pids, "ffmpeg", job_id)
        if pids:
            return pids[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no ffmpeg for job {job_id} within {within} s")


async def test_hung_extraction_fails_the_job_within_its_timeout(
    make_client: ClientFactory, speech: Speech
) -> None:
    client, settings = await make_client(media={"extract_timeout": 1.0, "extract_timeout_factor": 0.0})
    job = await upload(client, speech.path, start=False)
    await asyncio.to_thread(_hang_extraction, settings, job["job_id"])
    stream = await open_stream(client, job["job_id"])
    started = time.monotonic()
    resp = await client.post("/api/start", json={"job_id": job["job_id"]})
    assert resp.status == 200
    pid = await _ffmpeg_of(job["job_id"])
    try:
        async with asyncio.timeout(20):
            events = await stream.until(lambda e: e.event == "error")
    except TimeoutError:
        status = await (await client.get(f"/api/status/{job['job_id']}")).json()
        raise AssertionError(f"the hung job never ended: {status}") from None
    assert time.monotonic() - started < 10
    error = events[-1].data
    assert error["code"] == "media_timeout", error
    assert "speech.mp4" in error["message"] and "/" not in error["message"], error
    status = await (await client.get(f"/api/status/{job['job_id']}")).json()
    assert status["status"] == "failed" and status["error"]["code"] == "media_timeout", status
    assert not await _alive(pid), "the hung ffmpeg was not killed and reaped"


async def test_canceling_a_hung_extraction_kills_ffmpeg(make_client: ClientFactory, speech: Speech) -> None:
    client, settings = await make_client()
    job = await upload(client, speech.path, start=False)
    await asyncio.to_thread(_hang_extraction, settings, job["job_id"])
    await client.post("/api/start", json={"job_id": job["job_id"]})
    pid = await _ffmpeg_of(job["job_id"])
    resp = await client.post(f"/api/cancel/{job['job_id']}")
    assert resp.status == 200 and (await resp.json())["status"] == "canceled"
    assert not await _alive(pid), "ffmpeg outlived its canceled job"


async def test_a_hung_probe_is_killed_at_its_timeout(tmp_path: Path) -> None:
    """The helper every ffprobe and ffmpeg goes through, on an ffprobe that really hangs."""
    from vsrt_service.jobs.media import run_tool

    fifo = tmp_path / "stalled.mp4"
    os.mkfifo(fifo)  # opened for reading, it blocks until a writer comes: none will
    ffprobe = shutil.which("ffprobe")
    assert ffprobe is not None
    started = time.monotonic()
    with pytest.raises(MediaError) as info:
        await run_tool(
            [ffprobe, "-v", "error", "-show_format", f"file:{fifo}"],
            seconds=0.5,
            what="probing",
            name="stalled.mp4",
        )
    assert time.monotonic() - started < 5
    assert info.value.code == "media_timeout"
    assert "stalled.mp4" in str(info.value) and str(tmp_path) not in str(info.value)
    assert not await asyncio.to_thread(tool_pids, "ffprobe", str(fifo))


# --- item 10b: a truncated audio.wav is not trusted on resume -------------------------------


@pytest.mark.slow
async def test_truncated_audio_is_extracted_again_on_resume(
    make_service: ServiceFactory, speech: Speech, tmp_path: Path
) -> None:
    svc = await make_service()
    job = await svc.submit(speech.path, start=False)
    # The job folder as an interrupted extraction or a full disk leaves it: an audio.wav whose
    # header promises the whole file, with only its first third on disk.
    whole = tmp_path / "whole.wav"
    await extract_audio(speech.path, whole)
    job_dir = svc.ctx.job_dir(job.id)
    await asyncio.to_thread(job_dir.mkdir, parents=True)
    data = await asyncio.to_thread(whole.read_bytes)
    await asyncio.to_thread((job_dir / "audio.wav").write_bytes, data[: len(data) // 3])

    await svc.resume(job.id)
    done = await svc.wait(job.id)
    assert done.status == "completed", done.error
    srt = await svc.subtitles(job.id, "srt")
    text = " ".join(c.text.replace("\n", " ") for c in parse_srt(srt))
    assert word_error_rate(speech.text, text) < 0.25, text
    cues = parse_srt(srt)
    assert cues[-1].end >= speech.sentences[-1].start, "the end of the speech is missing"
