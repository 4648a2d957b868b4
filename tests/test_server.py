"""`vsrt serve` as a real process: killed mid-job and restarted, and stopped gracefully."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.media import Speech
from tests.procs import Server, free_port, runner_pids
from tests.sse_client import SseReader

pytestmark = pytest.mark.slow


@pytest.fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[Server] = []
    port = free_port()

    async def make(**env: str) -> Server:
        server = Server(tmp_path / "data", port, {**os.environ, **env})
        servers.append(server)
        await server.start()
        return server

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()


async def test_sigkill_mid_job_then_restart_resumes_from_checkpoint(
    make_server: Callable[..., Awaitable[Server]], long_speech: Speech
) -> None:
    env = {"VSRT_TRANSCRIPTION_BATCH_SIZE": "1"}
    server = await make_server(**env)
    async with aiohttp.ClientSession(server.url) as http:
        form = aiohttp.FormData()
        form.add_field("settings", '{"chunk_size": 10}')
        form.add_field("file", await asyncio.to_thread(long_speech.path.read_bytes), filename="talk.mp4")
        async with http.post("/api/jobs", data=form) as resp:
            job_id = (await resp.json())["job_id"]
        resp = await http.get(f"/api/stream/{job_id}")
        stream = SseReader(resp)
        first_run = await stream.until(lambda e: e.event == "fragment" and e.data["segment_index"] >= 1)
        last_seen = first_run[-1].id
        assert server.proc is not None
        killed = server.proc.pid
        orphans = runner_pids(killed)
        assert orphans
        server.proc.kill()
        await server.proc.wait()
        resp.close()
    for _ in range(100):  # the runner dies with its service (PR_SET_PDEATHSIG)
        if not runner_pids(killed):
            break
        await asyncio.sleep(0.1)
    assert not runner_pids(killed), "the killed server's runner was orphaned"

    server = await make_server(**env)
    async with aiohttp.ClientSession(server.url) as http:
        resp = await http.get(f"/api/stream/{job_id}", headers={"Last-Event-ID": str(last_seen)})
        stream = SseReader(resp)
        events = await stream.until(
            lambda e: e.event == "signal" and e.data["code"] == "job_complete", wait=240
        )
        assert events[0].event == "connected"  # a new process: the old ids are gone, snapshot
        text = await (await http.get(f"/api/transcription-text/{job_id}")).json()
        status = await (await http.get(f"/api/status/{job_id}")).json()
        resp.close()
    assert status["status"] == "completed"
    with sqlite3.connect(server.data_dir / "vsrt.sqlite3") as db:
        rows = db.execute(
            "SELECT idx, transcribe_count FROM segments WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()
    assert [idx for idx, _ in rows] == list(range(status["total"]))
    assert all(count == 1 for _, count in rows), rows
    before = {e.data["segment_index"] for e in first_run if e.event == "fragment"}
    after = [e.data["segment_index"] for e in events if e.event == "fragment"]
    assert not before & set(after), "a segment was transcribed again after the restart"
    assert before | set(after) == set(range(status["total"]))
    assert text["source"] == "aligned" and text["text"]


async def test_sigterm_shuts_down_gracefully(
    make_server: Callable[..., Awaitable[Server]], speech: Speech
) -> None:
    server = await make_server()
    assert server.proc is not None
    async with aiohttp.ClientSession(server.url) as http:
        health = await (await http.get("/api/health")).json()
        stream = await http.get("/api/stream/none")
        assert stream.status == 404
        form = aiohttp.FormData()
        form.add_field("file", await asyncio.to_thread(speech.path.read_bytes), filename="s.mp4")
        job_id = (await (await http.post("/api/jobs?start=false", data=form)).json())["job_id"]
        open_stream = await http.get(f"/api/stream/{job_id}")
        await SseReader(open_stream).next()
        pid = server.proc.pid
        runners = runner_pids(pid)
        server.proc.send_signal(signal.SIGTERM)
        # The open event stream is ended by the shutdown, not left hanging.
        rest = await asyncio.wait_for(open_stream.content.read(), 10)
        assert isinstance(rest, bytes)
        assert await asyncio.wait_for(server.proc.wait(), 20) == 0
    assert health["runners"][0]["state"] in ("starting", "ready")
    assert runners and not runner_pids(pid)
