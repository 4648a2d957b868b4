"""The runner pool's supervision: restarts after a kill or a hang, and no orphans; replies
that are large (decoded off the event loop) or over the line limit (their call fails)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import SettingsFactory, loop_lag
from tests.long_media import aligned_result
from tests.procs import runner_option, runner_pids
from vsrt_service.core import protocol as p
from vsrt_service.runners.pool import RunnerError, RunnerLost, RunnerPool, RunnerSlot, cpu_threads, new_id

REPO = Path(__file__).resolve().parent.parent


async def started_pool(make_settings: SettingsFactory, **runners: float) -> RunnerPool:
    settings = make_settings(runners={"restart_backoff_initial": 0.1, **runners})
    pool = RunnerPool(settings)
    await pool.start()
    await pool.wait_ready(120)
    return pool


async def test_killed_runner_is_restarted_and_callers_told(make_settings: SettingsFactory) -> None:
    pool = await started_pool(make_settings)
    try:
        slot = pool.slots[0]
        first = slot.pid
        assert first is not None and slot.health()["state"] == "ready"
        # A request in flight when the runner dies ends with RunnerLost, not a hang. (It is
        # queued behind the runner's whisperx import, so no answer can come first.)
        call = asyncio.create_task(slot.call(p.Split(id=new_id(), audio_path="/nonexistent.wav")))
        await asyncio.sleep(0.05)
        os.kill(first, signal.SIGKILL)
        with pytest.raises(RunnerLost, match="exited with status -9"):
            await asyncio.wait_for(call, 30)
        await asyncio.wait_for(slot.ready.wait(), 120)
        assert slot.pid not in (None, first)
        assert slot.restarts == 1
        assert "exited with status -9" in (slot.health()["last_error"] or "")
        # Ready (it answered its handshake) before warm (whisperx imported), which a
        # heartbeat then reports.
        assert slot.health()["warm"] is False
        async with asyncio.timeout(120):
            while not slot.health()["warm"]:  # noqa: ASYNC110 - as a health check polls
                await asyncio.sleep(0.2)
        pong = await slot.call(p.Ping(id=new_id()))
        assert pong["warm"] is True and "ts" in pong
    finally:
        await pool.close()


async def test_hung_runner_is_killed_after_missed_heartbeats(make_settings: SettingsFactory) -> None:
    pool = await started_pool(make_settings, heartbeat_interval=0.3, heartbeat_timeout=1.5)
    try:
        slot = pool.slots[0]
        hung = slot.pid
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)  # alive but silent
        while slot.pid == hung:  # noqa: ASYNC110 - polling the supervisor's view of a process
            await asyncio.sleep(0.1)
        await asyncio.wait_for(slot.ready.wait(), 120)
        assert slot.restarts == 1
        assert "missed its heartbeat" in (slot.last_error or ""), slot.last_error
        assert hung not in runner_pids()
    finally:
        await pool.close()


async def test_close_leaves_no_runner_processes(make_settings: SettingsFactory) -> None:
    settings = make_settings(runners={"devices": ["cpu", "cpu"]})
    pool = RunnerPool(settings)
    await pool.start()
    await pool.wait_ready(180)
    pids = [s.pid for s in pool.slots]
    assert all(pids) and len(set(pids)) == 2
    # The two CPU runners share the cores rather than each taking them all.
    shared = str(max(1, min(4, len(os.sched_getaffinity(0)) // 2)))
    assert [runner_option(pid, "--cpu-threads") for pid in pids if pid] == [shared, shared]
    await pool.close()
    assert all(s.pid is None for s in pool.slots)
    alive = set(runner_pids()) & set(pids)
    assert not alive


async def test_a_runner_still_importing_whisperx_stops_at_once(make_settings: SettingsFactory) -> None:
    """Shutdown while the runner still imports whisperx (seconds) is answered at once, even with
    work waiting behind the import (the service's preload): a service stopped right after it
    started does not wait for the import; the waiting call fails as the runner is lost."""
    pool = RunnerPool(make_settings())
    await pool.start()
    try:
        await pool.wait_ready(180)
        slot = pool.slots[0]
        proc = slot._proc
        assert proc is not None and slot.health()["warm"] is False
        waiting = asyncio.create_task(slot.call(p.Split(id=new_id(), audio_path="/nonexistent.wav")))
        await asyncio.sleep(0.1)  # the Split line goes out first
        reply = await asyncio.wait_for(slot.call(p.Shutdown(id=new_id())), 2.0)
        assert reply == {"bye": True}
        assert await asyncio.wait_for(proc.wait(), 2.0) == 0
        with pytest.raises(RunnerLost):
            await waiting
    finally:
        await pool.close()


async def test_lease_is_exclusive(make_settings: SettingsFactory) -> None:
    pool = await started_pool(make_settings)
    try:
        order: list[str] = []

        async def use(name: str) -> None:
            async with pool.lease() as slot:
                order.append(f"{name}+")
                await slot.call(p.Ping(id=new_id()))
                await asyncio.sleep(0.2)
                order.append(f"{name}-")

        await asyncio.gather(use("a"), use("b"))
        assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])
    finally:
        await pool.close()


def test_cpu_threads_as_configured_or_shared(make_settings: SettingsFactory) -> None:
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(make_settings(runners={"cpu_threads": 3}).runners) == 3
    assert cpu_threads(make_settings().runners) == min(4, cores)
    many = make_settings(runners={"devices": ["cpu"] * (cores + 1)}).runners
    assert cpu_threads(many) == 1
    assert cpu_threads(make_settings(runners={"devices": ["cuda:0", "cpu"]}).runners) == min(4, cores)


@contextlib.asynccontextmanager
async def peer_slot(make_settings: SettingsFactory) -> AsyncIterator[RunnerSlot]:
    """A supervised slot whose runner is tests/protocol_peer.py (answers on demand what a real
    runner cannot be made to: three hours of alignment, lines over the limit)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    slot = RunnerSlot(
        0,
        "cpu",
        make_settings(),
        dict(os.environ, PYTHONPATH=path),
        asyncio.Event(),
        program=(sys.executable, "-m", "tests.protocol_peer"),
    )
    slot.start()
    try:
        await asyncio.wait_for(slot.ready.wait(), 30)
        yield slot
    finally:
        await slot.close()


@pytest.mark.serial
async def test_a_three_hour_alignment_reply_is_decoded_off_the_event_loop(
    make_settings: SettingsFactory,
) -> None:
    expected = await asyncio.to_thread(aligned_result, 3.0)
    async with peer_slot(make_settings) as slot:
        async with loop_lag() as lags:
            data = await asyncio.wait_for(slot.call(p.Align(id=new_id(), audio_path="a.wav")), 60)
        assert data["alignment"] == "wav2vec2"
        assert data["segments"] == expected  # 31k words, decoded exactly as json.loads would
        assert len(lags) > 10 and max(lags) < 0.1, f"loop lag up to {max(lags) * 1000:.0f} ms"


async def test_a_reply_over_the_line_limit_fails_its_call_and_the_slot_carries_on(
    make_settings: SettingsFactory,
) -> None:
    async with peer_slot(make_settings) as slot:
        pid = slot.pid
        # The runner's last word on a request, cut for length: its call fails at once.
        with pytest.raises(RunnerError) as cut:
            await asyncio.wait_for(slot.call(p.Split(id=new_id(), audio_path="a.wav")), 15)
        assert cut.value.code == "reply_too_large"
        assert f"{p.MAX_LINE_BYTES >> 20} MiB" in str(cut.value)
        await asyncio.wait_for(slot.idle.wait(), 10)
        # An interim reply cut for length: the call fails, and the runner is told to stop it.
        with pytest.raises(RunnerError) as cut:
            await asyncio.wait_for(slot.call(p.Transcribe(id=new_id(), audio_path="a.wav")), 15)
        assert cut.value.code == "reply_too_large"
        await asyncio.wait_for(slot.idle.wait(), 10)
        # The reader resynchronised at the newline: the next replies are read whole.
        data = await asyncio.wait_for(slot.call(p.Align(id=new_id(), audio_path="a.wav")), 60)
        assert len(data["segments"]) > 1000
        assert "ts" in await slot.call(p.Ping(id=new_id()))
        assert slot.pid == pid and slot.restarts == 0


async def test_the_runner_sends_an_error_instead_of_a_line_over_the_limit(
    make_settings: SettingsFactory,
) -> None:
    pool = await started_pool(make_settings)
    try:
        slot = pool.slots[0]
        pid = slot.pid
        # The runner's error names the audio path twice ("cannot read audio PATH: [Errno 36]
        # File name too long: 'PATH'"): a request of 8 MiB gets an error of over 16 MiB.
        path = "/" + "x" * (p.MAX_LINE_BYTES // 2 + (64 << 10))
        request = p.Align(
            id=new_id(),
            audio_path=path,
            language="en",
            segments=[p.TextSegment(index=0, start=0.0, end=1.0, text="hello")],
        )
        with pytest.raises(RunnerError) as refused:
            await asyncio.wait_for(slot.call(request), 90)
        assert refused.value.code == "reply_too_large"
        assert "audio" in str(refused.value)  # the error it could not send, by its code
        assert len(str(refused.value)) < 1000
        assert "ts" in await slot.call(p.Ping(id=new_id()))
        assert slot.pid == pid and slot.restarts == 0
    finally:
        await pool.close()
