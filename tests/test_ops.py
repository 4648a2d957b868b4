"""Operations: one process per data directory, durable writes, leftovers cleaned, limits."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ServiceFactory, SettingsFactory
from tests.http_helpers import is_complete, open_stream, upload
from tests.media import Speech, make_text_file
from tests.test_pipeline import segment_rows
from vsrt_service.core.files import write_atomic
from vsrt_service.jobs.datadir import LOCK_NAME, DataDirLocked, expire_audio
from vsrt_service.jobs.store import JobStatus
from vsrt_service.service import Service, open_store
from vsrt_service.web.app import create_app

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client: Any, make_settings: SettingsFactory) -> ClientFactory:
    async def make(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides)))

    return make


# --- malformed cues ------------------------------------------------------------------------


#: A cue start as JSON text, and words the 400's message must hold.
BAD_STARTS = [
    ("1" + "0" * 400, "too large"),  # an integer no float can hold
    ("1e400", "finite"),  # json reads it as Infinity
    ("NaN", "finite"),
    ("-Infinity", "finite"),
    ("-0.5", "negative"),
    ("true", "number"),
    ('"1.5"', "number"),
    ("null", "number"),
    ("360001", "at most"),
]


async def test_malformed_cue_times_are_400_naming_the_field(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client()
    job = await upload(client, speech.path, start=False)
    url = f"/api/jobs/{job['job_id']}/subtitles"
    kept = {"cues": [{"start": 0.5, "end": 2.0, "text": "kept"}]}
    assert (await client.put(url, json=kept)).status == 200
    for start, words in BAD_STARTS:
        body = '{"cues": [{"start": ' + start + ', "end": 2.0, "text": "x"}]}'
        resp = await client.put(url, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, (start[:20], await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "bad_cues" and error["field"] == "cues"
        assert "cues[0].start" in error["message"] and words in error["message"], error
    # The refused edits lost nothing: the earlier edit is still what is served.
    text = await (await client.get(f"{url}?format=txt")).text()
    assert text == "kept\n"


# --- one process per data directory ----------------------------------------------------------


async def test_a_second_service_on_the_same_data_dir_is_refused(
    make_settings: SettingsFactory, make_service: ServiceFactory, aiohttp_client: Any
) -> None:
    settings = make_settings()
    first = await make_service(settings)
    with pytest.raises(DataDirLocked) as refused:
        async with Service(settings):
            pass
    lock_file = settings.data_dir / LOCK_NAME
    assert lock_file.read_text().split("\n")[0] == str(os.getpid())
    assert refused.value.pid == os.getpid()
    assert f"in use by process {os.getpid()}" in str(refused.value)
    # The app's resources open the data directory the same way: its start-up fails.
    with pytest.raises(DataDirLocked):
        await aiohttp_client(create_app(settings))
    assert first.pool.slots, "the first service kept running"
    await first.__aexit__(None, None, None)
    # Released on close: the same process opens the directory again at once.
    async with open_store(settings) as store:
        assert await store.count_jobs() == 0
    assert lock_file.read_text() == ""


# --- durable writes ----------------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "subtitles.srt"
    write_atomic(target, "première\n")
    assert target.read_bytes() == "première\n".encode()
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # the mode an ordinary new file gets under this umask
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    write_atomic(target, b"\x00second")
    assert target.read_bytes() == b"\x00second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "subtitles.srt"]

    blocked = tmp_path / "blocked.srt"
    blocked.mkdir()  # a directory in the way: the rename fails
    with pytest.raises(IsADirectoryError):
        write_atomic(blocked, "text")
    assert blocked.is_dir() and not any(blocked.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.srt", "plain", "subtitles.srt"]


# --- leftovers ---------------------------------------------------------------------------------


async def test_leftovers_are_removed_at_start_and_nothing_else(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    uploads, jobs, data = settings.uploads_dir, settings.jobs_dir, settings.data_dir
    async with open_store(settings) as store:
        used = uploads / f"{'a' * 32}.mp4"
        used.write_bytes(b"media")
        job = await store.create_job(
            source_name="a.mp4", input_path=str(used.relative_to(data)), options={}, status="paused"
        )
    job_dir = jobs / job.id
    job_dir.mkdir()
    keep = [used, job_dir / "audio.wav", uploads / "notes.txt", jobs / "mine" / "x.part"]
    parts = [
        uploads / f"{'c' * 32}.mp4.part",
        job_dir / "audio.wav.part",
        job_dir / ".subtitles.srt.0badf00d.part",
    ]
    orphans = [uploads / f"{'b' * 32}.mkv", jobs / ("d" * 32) / "audio.wav"]
    for path in keep + parts + orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")

    async with open_store(settings) as store:
        # Temporaries are gone before anyone can use the store (a resumed job reuses the names).
        assert [p for p in parts if p.exists()] == []
        assert await store.get_job(job.id) is not None
    # Orphans go in the background; the first pass is over once the store is closed.
    assert [p for p in orphans if p.exists()] == []
    assert not (jobs / ("d" * 32)).exists()
    assert [p for p in keep if not p.exists()] == []


async def test_audio_is_kept_only_while_a_job_can_need_it(make_settings: SettingsFactory) -> None:
    settings = make_settings(jobs={"keep_audio_hours": 1, "keep_resumable_audio_hours": 2})
    async with open_store(settings) as store:
        ids = {}
        for status in ("queued", "processing", "paused", "failed", "completed", "canceled"):
            job = await store.create_job(source_name="a.mp4", input_path="a.mp4", options={})
            if status != "queued":
                await store.set_status(job.id, JobStatus(status), status, expect=[JobStatus.QUEUED])
            ids[status] = job.id
            (settings.jobs_dir / job.id).mkdir()
            (settings.jobs_dir / job.id / "audio.wav").write_bytes(b"RIFF")

        def audio_left() -> set[str]:
            return {s for s, i in ids.items() if (settings.jobs_dir / i / "audio.wav").exists()}

        now = time.time()
        assert await expire_audio(settings, store, now) == []
        finished = sorted([ids["completed"], ids["canceled"]])
        assert sorted(await expire_audio(settings, store, now + 3600)) == finished
        assert audio_left() == {"queued", "processing", "paused", "failed"}
        resumable = sorted([ids["paused"], ids["failed"]])
        assert sorted(await expire_audio(settings, store, now + 7200)) == resumable
        assert audio_left() == {"queued", "processing"}

    # With no retention (the default for finished jobs), the sweep at start removes it.
    for status in ("completed", "failed"):
        (settings.jobs_dir / ids[status] / "audio.wav").write_bytes(b"RIFF")
    async with open_store(make_settings(jobs={"keep_resumable_audio_hours": 0})):
        pass
    assert audio_left() == {"queued", "processing"}


@pytest.mark.slow
async def test_a_finished_job_drops_its_audio_and_a_restart_extracts_it_again(
    make_client: ClientFactory, make_settings: SettingsFactory, speech: Speech
) -> None:
    client = await make_client()  # jobs.keep_audio_hours = 0, the default
    job = await upload(client, speech.path)
    folder = make_settings().jobs_dir / job["job_id"]
    stream = await open_stream(client, job["job_id"])
    await stream.until(is_complete, wait=180)
    # The waveform's peaks stay for the editor; no audio.wav, no .part.
    outputs = ["peaks.dat", "subtitles.json", "subtitles.srt", "subtitles.txt", "subtitles.vtt"]
    assert sorted(p.name for p in folder.iterdir()) == outputs
    url = f"/api/jobs/{job['job_id']}/subtitles?format=srt"
    first = await (await client.get(url)).text()

    resp = await client.post("/api/start", json={"job_id": job["job_id"], "restart": True})
    assert resp.status == 200, await resp.text()
    events = await stream.until(is_complete, wait=180)
    phases = [e.data["phase"] for e in events if e.event == "progress"]
    assert phases[0] == "extract" and "transcribe" in phases
    status = await (await client.get(f"/api/status/{job['job_id']}")).json()
    assert status["status"] == "completed"
    assert await (await client.get(url)).text() == first
    assert sorted(p.name for p in folder.iterdir()) == outputs


@pytest.mark.slow
async def test_a_paused_job_resumes_after_its_audio_expired(
    make_settings: SettingsFactory, speech: Speech
) -> None:
    settings = make_settings(transcription={"batch_size": 1})
    async with Service(settings) as svc:
        # One segment per sentence (six): room to pause between them, and no more Whisper windows.
        job = await svc.submit(speech.path, {"chunk_size": 5})
        async for ev in svc.events(job.id):
            if ev.event == "fragment":
                await svc.pause(job.id)
        paused = await svc.get(job.id)
    assert paused.status == "paused" and 0 < paused.processed < paused.total
    audio = settings.jobs_dir / job.id / "audio.wav"
    assert audio.is_file()
    expired = make_settings(transcription={"batch_size": 1}, jobs={"keep_resumable_audio_hours": 0})
    async with open_store(expired):
        pass
    assert not audio.exists(), "the start-up sweep kept the audio of a paused job past its retention"

    async with Service(expired) as svc:
        await svc.resume(job.id)
        done = await svc.wait(job.id)
        assert done.status == "completed", done.error
        assert await svc.subtitles(job.id, "srt")
    rows = segment_rows(settings.database_path, job.id)
    assert rows and all(text is not None and count == 1 for _, text, count in rows), rows


# --- refused uploads -----------------------------------------------------------------------------


async def test_refused_uploads_leave_nothing_behind(
    make_client: ClientFactory, make_settings: SettingsFactory, speech: Speech, tmp_path: Path
) -> None:
    client = await make_client()
    uploads = make_settings().uploads_dir
    text = await asyncio.to_thread(make_text_file, tmp_path / "notes.mp4")
    media = await asyncio.to_thread(speech.path.read_bytes)

    form = aiohttp.FormData()
    form.add_field("file", await asyncio.to_thread(text.read_bytes), filename="notes.mp4")
    resp = await client.post("/api/jobs", data=form)
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "not_media"
    form = aiohttp.FormData()
    form.add_field("file", media, filename="speech.mp4")
    form.add_field("settings", json.dumps({"max_lines": 0}))  # a bad setting after the file
    resp = await client.post("/api/jobs", data=form)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "max_lines"
    assert not list(uploads.iterdir())

    # A client that goes away while its upload is being probed.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="s.mp4"\r\n\r\n'
        + media
        + b"\r\n--b--\r\n"
    )
    head = (
        f"POST /api/jobs HTTP/1.1\r\nHost: {client.host}:{client.port}\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\n\r\n"
    ).encode()
    _, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(head + body)
    deadline = time.monotonic() + 30
    while not [p for p in uploads.iterdir() if not p.name.endswith(".part")]:
        assert time.monotonic() < deadline, "the upload was never stored"
        await asyncio.sleep(0.005)
    writer.transport.abort()
    # Then the upload is removed with no job made, or (gone too late to stop it) it is a job's.
    while True:
        left = list(uploads.iterdir())
        jobs = (await (await client.get("/api/jobs")).json())["total"]
        if (not left and jobs == 0) or (len(left) == 1 and jobs == 1):
            break
        assert time.monotonic() < deadline, f"an upload with no job stayed: {left}"
        await asyncio.sleep(0.05)
