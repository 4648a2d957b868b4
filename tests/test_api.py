"""The HTTP API and job event streams over real sockets, with a real runner behind them."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, SettingsFactory, loop_lag
from tests.http_helpers import is_complete, open_stream, upload
from tests.media import Speech, word_error_rate
from tests.sse_client import SseReader
from vsrt_service.core.broker import job_channel
from vsrt_service.core.formats import parse_srt
from vsrt_service.web.app import create_app
from vsrt_service.web.keys import SERVICE, STREAMS


@pytest.mark.serial
@pytest.mark.slow
async def test_real_job_over_http_and_sse(make_client: ClientFactory, speech: Speech, tmp_path: Path) -> None:
    client = await make_client()
    status_times: list[float] = []

    async def poll_status(job_id: str) -> None:
        while True:
            started = time.perf_counter()
            resp = await client.get(f"/api/status/{job_id}")
            assert resp.status == 200
            status_times.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)

    async with loop_lag() as lags:
        job = await upload(client, speech.path)
        stream = await open_stream(client, job["job_id"])
        poller = asyncio.create_task(poll_status(job["job_id"]))
        try:
            events = await stream.until(is_complete, wait=180)
        finally:
            poller.cancel()

    assert events[0].event == "connected"
    assert events[0].data["job_id"] == job["job_id"]
    progress = [e.data for e in events if e.event == "progress"]
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents) and percents[-1] == 100
    phases = [p["phase"] for p in progress]
    assert [ph for i, ph in enumerate(phases) if i == 0 or phases[i - 1] != ph] == [
        "extract",
        "split",
        "transcribe",
        "align",
        "srt",
    ]
    fragments = [e.data for e in events if e.event == "fragment"]
    status = await (await client.get(f"/api/status/{job['job_id']}")).json()
    assert status["status"] == "completed"
    assert sorted(f["segment_index"] for f in fragments) == list(range(status["total"]))
    signals = [e.data["code"] for e in events if e.event == "signal"]
    assert signals == ["alignment_ready", "job_complete"]
    ids = [int(e.id or 0) for e in events]
    assert ids[1:] == sorted(ids[1:]) and len(set(ids[1:])) == len(ids) - 1

    text = await (await client.get(f"/api/transcription-text/{job['job_id']}")).json()
    assert text["source"] == "aligned"
    fragment_text = " ".join(s["text"] for f in fragments for s in f["segments"])
    assert word_error_rate(text["text"], fragment_text) == 0
    assert word_error_rate(speech.text, text["text"]) < 0.25

    resp = await client.get(f"/api/jobs/{job['job_id']}/subtitles?format=srt")
    assert resp.status == 200
    assert 'filename="speech.srt"' in resp.headers["Content-Disposition"]
    srt = await resp.text()
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vsrt_service.cli",
        "transcribe",
        str(speech.path),
        "-o",
        str(tmp_path / "cli"),
        "--data-dir",
        str(tmp_path / "cli-data"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(cli.communicate(), 300)
    assert cli.returncode == 0, err.decode()
    assert srt == (tmp_path / "cli" / "speech.srt").read_text()

    assert max(lags) < 0.1, f"event loop lag up to {max(lags) * 1000:.0f} ms"
    assert status_times and max(status_times) < 0.5


async def test_sse_bytes_on_the_wire(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client()
    job = await upload(client, speech.path, start=False)
    stream = await open_stream(client, job["job_id"])
    first = await stream.next()
    assert first.event == "connected" and first.data["status"] == "paused"
    # Before it, a block that only sets the browser's reconnection time, jittered per stream.
    assert stream.retry is not None and 2000 <= stream.retry <= 4000
    assert stream.quiet_blocks == [f"retry: {stream.retry}\n\n".encode()]
    others = [await open_stream(client, job["job_id"]) for _ in range(5)]
    for other in others:
        await other.next()
        other.resp.close()
    assert len({stream.retry, *(o.retry for o in others)}) > 1
    broker = client.app[SERVICE].broker
    ev = broker.publish(
        job_channel(job["job_id"]),
        "fragment",
        {
            "segment_index": 0,
            "language": "en",
            "segments": [{"id": 0, "start": 1.5, "end": 2.0, "text": "héllo\nworld"}],
        },
    )
    got = await stream.next()
    assert (
        got.raw
        == (
            f"id: {ev.id}\nevent: fragment\n"
            'data: {"segment_index":0,"language":"en","segments":[{"id":0,"start":1.5,"end":2.0,'
            '"text":"héllo\\nworld"}]}\n\n'
        ).encode()
    )


async def watched_paused_job(
    client: TestClient[Any, Any], speech: Speech
) -> tuple[dict[str, Any], str, SseReader]:
    """A job that is not started, its channel, and a stream past its `connected` snapshot;
    tests publish on the channel themselves."""
    job = await upload(client, speech.path, start=False)
    stream = await open_stream(client, job["job_id"])
    assert (await stream.next()).event == "connected"
    return job, job_channel(job["job_id"]), stream


async def test_reconnect_gets_exactly_the_missed_events(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client(sse={"replay_buffer": 50})
    job, channel, stream = await watched_paused_job(client, speech)
    broker = client.app[SERVICE].broker
    sent = [broker.publish(channel, "fragment", {"segment_index": i}) for i in range(10)]
    seen = [await stream.next() for _ in range(4)]
    assert [e.data["segment_index"] for e in seen] == [0, 1, 2, 3]
    stream.resp.close()

    missed_from = seen[-1].id
    assert missed_from is not None
    again = await open_stream(client, job["job_id"], **{"Last-Event-ID": missed_from})
    replay = [await again.next() for _ in range(6)]
    assert [e.data["segment_index"] for e in replay] == [4, 5, 6, 7, 8, 9]
    assert [int(e.id or 0) for e in replay] == [e.id for e in sent[4:]]
    later = broker.publish(channel, "signal", {"code": "paused", "message": "x"})
    nxt = await again.next()
    assert nxt.event == "signal" and int(nxt.id or 0) == later.id  # live after the replay, no dup
    again.resp.close()

    # An id older than the buffer keeps gets a fresh snapshot instead.
    for i in range(60):
        broker.publish(channel, "fragment", {"segment_index": 100 + i})
    stale = await open_stream(client, job["job_id"], **{"Last-Event-ID": sent[0].id.__str__()})
    snap = await stale.next()
    assert snap.event == "connected"


async def test_heartbeats_have_their_own_ids(make_client: ClientFactory, speech: Speech) -> None:
    """A ping moves the client's Last-Event-ID forward without repeating an event's id."""
    client = await make_client(sse={"heartbeat_interval": 0.2})
    job, channel, stream = await watched_paused_job(client, speech)
    broker = client.app[SERVICE].broker
    first = broker.publish(channel, "fragment", {"segment_index": 0})
    assert int((await stream.next()).id or 0) == first.id
    pings = [await stream.next() for _ in range(2)]
    assert [p.event for p in pings] == ["ping", "ping"]
    ping_ids = [int(p.id or 0) for p in pings]
    assert first.id < ping_ids[0] < ping_ids[1]
    stream.resp.close()

    after = broker.publish(channel, "fragment", {"segment_index": 1})
    again = await open_stream(client, job["job_id"], **{"Last-Event-ID": str(ping_ids[1])})
    got = await again.next()
    assert got.event == "fragment" and int(got.id or 0) == after.id  # no snapshot, no repeat
    again.resp.close()


@pytest.mark.serial
async def test_stalled_subscriber_does_not_slow_others_and_is_told_to_resync(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client(sse={"subscriber_queue": 64})
    job = await upload(client, speech.path, start=False)
    channel = job_channel(job["job_id"])
    broker = client.app[SERVICE].broker
    # A raw socket that asks for the stream and then never reads.
    host, port = client.server.host, client.server.port
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: small window
    stalled.connect((host, port))
    stalled.sendall(f"GET /api/stream/{job['job_id']} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    fast = await open_stream(client, job["job_id"])
    await fast.next()
    while broker.subscribers(channel) < 2:  # noqa: ASYNC110 - waiting on the server's view
        await asyncio.sleep(0.01)

    payload = "x" * 8000
    publish_times = []
    received = 0
    started = time.perf_counter()
    for i in range(1200):  # ~10 MB: more than the kernel buffers between us and the stalled peer
        t0 = time.perf_counter()
        broker.publish(channel, "fragment", {"segment_index": i, "pad": payload})
        publish_times.append(time.perf_counter() - t0)
        if i % 20 == 19:
            for _ in range(20):
                ev = await fast.next(wait=5)
                assert ev.data["segment_index"] == received
                received += 1
    elapsed = time.perf_counter() - started
    assert received == 1200
    # A publish that waited on the stalled subscriber would take seconds (its send timeout);
    # one preemption of this process on a loaded machine takes tens of milliseconds at most.
    assert max(publish_times) < 0.2, "publish waited on a subscriber"
    assert sorted(publish_times)[len(publish_times) * 99 // 100] < 0.005
    assert elapsed < 10
    # The stalled subscriber overflowed: it was dropped from the channel, told to resync.
    assert broker.subscribers(channel) == 1
    stalled.setblocking(False)
    loop = asyncio.get_running_loop()
    chunks = b""
    while b"event: resync" not in chunks:
        data = await asyncio.wait_for(loop.sock_recv(stalled, 1 << 16), 10)
        if not data:
            break
        chunks = chunks[-64:] + data
    stalled.close()
    assert b"event: resync" in chunks


async def test_disconnect_is_noticed_and_cleaned_up(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client()
    job = await upload(client, speech.path, start=False)
    broker = client.app[SERVICE].broker
    streams = client.app[STREAMS]
    stream = await open_stream(client, job["job_id"])
    await stream.next()
    assert broker.subscribers(job_channel(job["job_id"])) == 1
    connection = stream.resp.connection
    assert connection is not None and connection.transport is not None
    connection.transport.close()
    deadline = time.monotonic() + 2
    while broker.subscribers(job_channel(job["job_id"])) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    assert broker.subscribers(job_channel(job["job_id"])) == 0
    assert streams.open_streams() == 0


async def test_stream_limits_answer_429(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client(sse={"max_connections_per_job": 2, "max_connections_per_client": 3})
    job = await upload(client, speech.path, start=False)
    other = await upload(client, speech.path, start=False)
    a = await open_stream(client, job["job_id"])
    b = await open_stream(client, job["job_id"])
    resp = await client.get(f"/api/stream/{job['job_id']}")
    assert resp.status == 429
    assert (await resp.json())["error"]["code"] == "too_many_streams"
    c = await open_stream(client, other["job_id"])
    resp = await client.get(f"/api/stream/{other['job_id']}")
    assert resp.status == 429 and "address" in (await resp.json())["error"]["message"]
    for s in (a, b, c):
        s.resp.close()


async def test_upload_over_the_limit_is_413_and_leaves_nothing(
    make_client: ClientFactory, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    client = await make_client(server={"max_upload_mb": 1})
    uploads = make_settings().uploads_dir
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * (3 << 20))
    resp = await client.post("/api/jobs", data={"file": big.open("rb")})
    assert resp.status == 413
    assert (await resp.json())["error"]["code"] == "too_large"
    # Chunked (no Content-Length): the limit is enforced while streaming.

    async def chunks():
        for _ in range(3):
            yield b"\0" * (1 << 20)

    writer = aiohttp.MultipartWriter("form-data")
    part = writer.append(chunks())
    part.set_content_disposition("form-data", name="file", filename="big.mp4")
    resp = await client.post("/api/jobs", data=writer, chunked=True)
    assert resp.status == 413
    assert not any(uploads.iterdir()), list(uploads.iterdir())
    jobs = await (await client.get("/api/jobs")).json()
    assert jobs["total"] == 0


async def test_hostile_names_and_paths_are_refused(
    make_client: ClientFactory, speech: Speech, make_settings: SettingsFactory, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    (media / "clip.mp4").write_bytes(speech.path.read_bytes())
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (media / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    client = await make_client(server={"media_roots": [str(media)]})
    uploads = make_settings().uploads_dir

    job = await upload(client, speech.path, name="../../etc/passwd", start=False)
    assert job["source_name"] == "passwd"
    stored = list(uploads.iterdir())
    assert len(stored) == 1 and stored[0].parent == uploads and "passwd" not in stored[0].name
    assert "/" not in json.dumps(job["settings"])  # no server paths in answers
    assert str(uploads) not in json.dumps(job)

    job = await upload(client, speech.path, name="..\\..\\évil\u202ename<>|.mp4", start=False)
    assert job["source_name"] == "évilname_.mp4"  # bidi override dropped, <>| folded

    ok = await client.post("/api/jobs", json={"path": "clip.mp4", "start": False})
    assert ok.status == 201
    for bad in ("../secret.mp4", str(tmp_path / "secret.mp4"), "link.mp4", "/etc/passwd"):
        resp = await client.post("/api/jobs", json={"path": bad})
        assert resp.status == 403, bad
        assert (await resp.json())["error"]["field"] == "path"


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"model": "gigantic"}, "model"),
        ({"language": "xx-invalid-code"}, "language"),
        ({"task": "summarise"}, "task"),
        ({"max_line_chars": 3}, "max_line_chars"),
        ({"max_lines": "two"}, "max_lines"),
        ({"align": "yes"}, "align"),
        ({"colour": "red"}, "colour"),
        ({"model": "tiny.en", "task": "translate"}, "task"),
        ({"vad_method": "webrtc"}, "vad_method"),
        ({"initial_prompt": 42}, "initial_prompt"),
        ({"hotwords": ["Kubernetes", 7]}, "hotwords"),
        ({"audio_track": "second"}, "audio_track"),
        ({"min_silence_for_new_cue": 0}, "min_silence_for_new_cue"),
        ({"diarize": "on"}, "diarize"),
        ({"diarize": True, "num_speakers": 2, "max_speakers": 4}, "num_speakers"),
    ],
)
async def test_bad_settings_are_400_naming_the_field(
    make_client: ClientFactory, speech: Speech, settings: dict[str, Any], field: str
) -> None:
    client = await make_client()
    form = aiohttp.FormData()
    form.add_field("settings", json.dumps(settings))
    form.add_field("file", b"data", filename="a.mp4")
    resp = await client.post("/api/jobs", data=form)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == field and error["message"]


async def test_unknown_jobs_are_404_everywhere(make_client: ClientFactory) -> None:
    client = await make_client()
    for method, path in [
        ("GET", "/api/status/nope"),
        ("GET", "/api/jobs/nope"),
        ("POST", "/api/pause/nope"),
        ("POST", "/api/cancel/nope"),
        ("DELETE", "/api/jobs/nope"),
        ("GET", "/api/stream/nope"),
        ("GET", "/api/transcription-text/nope"),
        ("GET", "/api/checkpoint-settings/nope"),
        ("GET", "/api/jobs/nope/subtitles"),
    ]:
        resp = await client.request(method, path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"
    resp = await client.post("/api/start", json={"job_id": "nope"})
    assert resp.status == 404
    resp = await client.get("/api/no-such-route")
    assert resp.status == 404 and "error" in await resp.json()


@pytest.mark.slow
async def test_pause_conflicts_and_resume_with_original_settings(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client(transcription={"batch_size": 1}, sse={"heartbeat_interval": 0.5})
    # One segment per sentence (six): room to pause between them, and no more Whisper windows.
    job = await upload(client, speech.path, {"chunk_size": 5})
    stream = await open_stream(client, job["job_id"])
    await stream.until(lambda e: e.event == "fragment")
    resp = await client.post(f"/api/pause/{job['job_id']}")
    assert resp.status == 200
    await stream.until(lambda e: e.event == "signal" and e.data["code"] == "paused")
    status = await (await client.get(f"/api/status/{job['job_id']}")).json()
    assert status["status"] == "paused" and 0 < status["processed"] < status["total"]
    text = await (await client.get(f"/api/transcription-text/{job['job_id']}")).json()
    # Sentence lines, with the ids of the `fragment` events: "{chunk}.{line}".
    assert text["source"] == "checkpoint"
    assert len({line["id"].split(".")[0] for line in text["segments"]}) == status["processed"]

    cp = await (await client.get(f"/api/checkpoint-settings/{job['job_id']}")).json()
    assert cp["settings"]["model"] == "tiny.en" and "model" in cp["locked"]
    check = await client.post(
        "/api/validate-resume-settings", json={"job_id": job["job_id"], "settings": {"model": "base.en"}}
    )
    body = await check.json()
    assert body["valid"] is False
    assert body["conflicts"] == [{"field": "model", "checkpoint": "tiny.en", "requested": "base.en"}]

    resp = await client.post("/api/start", json={"job_id": job["job_id"], "settings": {"model": "base.en"}})
    assert resp.status == 200
    started = await resp.json()
    assert started["settings"]["model"] == "tiny.en"
    assert [c["field"] for c in started["forced_settings"]] == ["model"]
    await stream.until(is_complete, wait=180)
    final = await (await client.get(f"/api/jobs/{job['job_id']}")).json()
    assert final["status"] == "completed" and final["settings"]["model"] == "tiny.en"


async def test_edited_cues_are_kept_apart_and_served(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client()
    job = await upload(client, speech.path, start=False)
    resp = await client.put(
        f"/api/jobs/{job['job_id']}/subtitles", json={"cues": [{"start": 0.5, "end": 0.2, "text": "x"}]}
    )
    assert resp.status == 400 and "end" in (await resp.json())["error"]["message"]
    cues = [{"start": 0.5, "end": 2.0, "text": "Edited line"}, {"start": 2.5, "end": 4.0, "text": "Two"}]
    resp = await client.put(f"/api/jobs/{job['job_id']}/subtitles", json={"cues": cues})
    assert resp.status == 200
    srt = await (await client.get(f"/api/jobs/{job['job_id']}/subtitles?format=srt")).text()
    assert [c.text for c in parse_srt(srt)] == ["Edited line", "Two"]
    vtt = await client.get(f"/api/jobs/{job['job_id']}/subtitles?format=vtt")
    assert vtt.headers["Content-Type"].startswith("text/vtt")
    bad = await client.get(f"/api/jobs/{job['job_id']}/subtitles?format=docx")
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "format"


async def test_delete_removes_job_files_and_upload(
    make_client: ClientFactory, speech: Speech, make_settings: SettingsFactory
) -> None:
    client = await make_client()
    uploads = make_settings().uploads_dir
    job = await upload(client, speech.path, start=False)
    assert len(list(uploads.iterdir())) == 1
    resp = await client.delete(f"/api/jobs/{job['job_id']}")
    assert resp.status == 200
    assert not list(uploads.iterdir())
    assert (await client.get(f"/api/status/{job['job_id']}")).status == 404


async def test_auth_token_and_stream_tickets(make_client: ClientFactory, speech: Speech) -> None:
    token = "s3cret-token-0123456789"
    client = await make_client(server={"auth_token": token, "ticket_seconds": 0.5})
    assert (await client.get("/api/jobs")).status == 401
    assert (await client.get("/api/jobs", headers={"Authorization": "Bearer wrong"})).status == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/jobs", headers=auth)).status == 200

    form = aiohttp.FormData()
    form.add_field("file", speech.path.read_bytes(), filename="s.mp4")
    job = await (await client.post("/api/jobs?start=false", data=form, headers=auth)).json()
    assert (await client.get(f"/api/stream/{job['job_id']}")).status == 401
    ticket = (await (await client.post("/api/auth/ticket", headers=auth)).json())["ticket"]
    assert (await client.get(f"/api/jobs?ticket={ticket}")).status == 401  # only for streams
    resp = await client.get(f"/api/stream/{job['job_id']}?ticket={ticket}")
    assert resp.status == 200
    assert (await SseReader(resp).next()).event == "connected"
    resp.close()
    reused = await client.get(f"/api/stream/{job['job_id']}?ticket={ticket}")
    assert reused.status == 401
    late = (await (await client.post("/api/auth/ticket", headers=auth)).json())["ticket"]
    await asyncio.sleep(0.6)
    assert (await client.get(f"/api/stream/{job['job_id']}?ticket={late}")).status == 401


async def test_cors_echoes_configured_origins(make_client: ClientFactory) -> None:
    client = await make_client(server={"cors_origins": ["https://app.example"]})
    resp = await client.get("/api/jobs", headers={"Origin": "https://app.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert resp.headers["Access-Control-Allow-Credentials"] == "true"
    assert "Origin" in resp.headers.getall("Vary")
    pre = await client.options(
        "/api/jobs", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    )
    assert pre.status == 204 and "POST" in pre.headers["Access-Control-Allow-Methods"]
    other = await client.get("/api/jobs", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_app_works_mounted_as_a_sub_application(
    aiohttp_client: Any, make_settings: SettingsFactory, speech: Speech
) -> None:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="host app")

    parent = web.Application()
    parent.router.add_get("/", hello)
    parent.add_subapp("/subtitles/", create_app(make_settings()))
    client = await aiohttp_client(parent)
    assert await (await client.get("/")).text() == "host app"
    health = await client.get("/subtitles/api/health")
    assert health.status == 200 and (await health.json())["status"] == "ok"
    form = aiohttp.FormData()
    form.add_field("file", speech.path.read_bytes(), filename="s.mp4")
    resp = await client.post("/subtitles/api/jobs?start=false", data=form)
    assert resp.status == 201
    job = await resp.json()
    stream = await client.get(f"/subtitles/api/stream/{job['job_id']}")
    assert (await SseReader(stream).next()).event == "connected"
    stream.close()
    assert (await client.get("/subtitles/api/status/nope")).status == 404
