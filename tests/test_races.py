"""Races between stop requests, claims and cancelled writes, driven with real concurrency.

Each test starts the competing requests as tasks together, many times over, with the real
scheduler, store and runner; none relies on sleeps that happen to order things. After each
round the scheduler's bookkeeping must agree with the database, and a fresh job must still run.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import random
import sqlite3
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceFactory, until
from tests.http_helpers import upload
from tests.media import Speech, make_speech
from vsrt_service.core.errors import VsrtError
from vsrt_service.jobs.scheduler import Scheduler, Stop
from vsrt_service.jobs.sqlite_store import SqliteJobStore
from vsrt_service.jobs.store import Job, JobStatus, JobStore
from vsrt_service.service import Service
from vsrt_service.web.app import create_app
from vsrt_service.web.keys import SERVICE

STOPPED = ("paused", "canceled", "completed", "failed")


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(tmp_path_factory.mktemp("races") / "short.mp4", ["One short sentence."])


@pytest.fixture
def write_failures() -> Iterator[list[str]]:
    """Errors logged by the service while the test ran (a failed final-state write, ...)."""
    records: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Catch(logging.ERROR)
    logger = logging.getLogger("vsrt")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


async def settled(svc: Service, job_id: str, within: float = 60.0) -> Job | None:
    """The job once the scheduler no longer runs it (None if it was deleted)."""

    async def idle() -> bool:
        job = await svc.store.get_job(job_id)
        return job_id not in svc.scheduler.running() and (job is None or job.status != "processing")

    await until(idle, within)
    return await svc.store.get_job(job_id)


async def claimed(svc: Service, job_id: str) -> bool:
    job = await svc.store.get_job(job_id)
    return job is not None and job.status == "processing"


async def check_consistent(svc: Service) -> None:
    await check_consistent_store(svc.store, svc.scheduler)


async def check_consistent_store(store: JobStore, scheduler: Scheduler) -> None:
    """The scheduler runs exactly the jobs the database says it processes."""
    rows = await store.list_jobs(limit=1000)
    processing = {j.id for j in rows if j.status == "processing"}
    assert set(scheduler.running()) == processing
    for job in rows:
        if job.status != "processing":
            assert job.lease_owner is None, job


async def request(call: Awaitable[Any]) -> str:
    """A control request's answer: the status it reports, or the refusal's code."""
    try:
        result = await call
    except VsrtError as exc:
        return f"refused:{exc.code}"
    return result.status if isinstance(result, Job) else "deleted"


async def test_a_cancelled_write_never_poisons_the_store(tmp_path: Path) -> None:
    """A write cancelled at any point (its BEGIN included) leaves the connection usable."""
    async with SqliteJobStore.open(tmp_path / "db") as store:
        job = await store.create_job(source_name="a.mp4", input_path="a.mp4", options={})
        for yields in range(12):
            for _ in range(8):
                task = asyncio.create_task(
                    store.update_progress(job.id, phase="extract", percent=1.0, message="x")
                )
                for _ in range(yields):
                    await asyncio.sleep(0)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                # every later write works: no "cannot start a transaction within a transaction"
                await store.update_progress(job.id, phase="extract", percent=2.0, message="ok")
        assert (await store.transitions(job.id))[-1]["phase"] == "extract"


STOP_PAIRS = [
    ("pause", "cancel"),
    ("pause", "pause"),
    ("pause", "delete"),
    ("cancel", "pause"),
    ("cancel", "delete"),
    ("pause", "resume"),
    ("cancel", "cancel"),
]


@pytest.mark.slow
async def test_stop_requests_close_together_keep_the_scheduler_whole(
    make_service: ServiceFactory, short_speech: Speech, write_failures: list[str]
) -> None:
    """Two control requests at once on a just-claimed job, at varying delays after the claim
    (a pause before the job's first step included): the slot is never lost, a later cancel
    wins over a pause, and no request answers 200 for a state the job is not in."""
    svc = await make_service()
    rnd = random.Random(8)
    ops: dict[str, Callable[[str], Awaitable[Any]]] = {
        "pause": svc.pause,
        "cancel": svc.cancel,
        "delete": svc.delete,
        "resume": svc.resume,
    }
    for round_ in range(3):
        for first, second in STOP_PAIRS:
            job = await svc.submit(short_speech.path)
            await until(functools.partial(claimed, svc, job.id))
            for _ in range(rnd.choice([0, 0, 1, 3, 10, 40])):
                await asyncio.sleep(0)
            one = asyncio.create_task(request(ops[first](job.id)))
            for _ in range(rnd.choice([0, 1, 2])):
                await asyncio.sleep(0)
            two = asyncio.create_task(request(ops[second](job.id)))
            answers = await asyncio.wait_for(asyncio.gather(one, two), 60)
            final = await settled(svc, job.id)
            where = f"round {round_}, {first} then {second}: answers {answers}, job {final}"
            if "delete" in (first, second):
                assert final is None, where
            else:
                assert final is not None, where
                # An answer that names a status names the job's status at that moment; a later
                # stop request wins or is refused, never answered 200 and then ignored.
                assert answers[1] in (final.status, "queued") or answers[1].startswith("refused"), where
                if (first, second) == ("pause", "cancel") and final.status != "completed":
                    assert final.status == "canceled", where
            await check_consistent(svc)
    assert not write_failures
    # The runner slot is intact: a fresh job is claimed and completes.
    fresh = await svc.submit(short_speech.path)
    done = await asyncio.wait_for(svc.wait(fresh.id), 180)
    assert done.status == "completed", done


async def test_a_cancel_while_a_pause_is_being_written_still_wins(
    make_service: ServiceFactory, short_speech: Speech, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel that reaches a running job after its pause was decided, while the paused state
    is still being written, is not lost: the job ends canceled and the cancel answers so.

    The paused write is held at a gate (the real write follows) until the cancel has reached
    the scheduler, which is the window a close pause and cancel fell into on CI."""
    svc = await make_service()
    job = await svc.submit(short_speech.path)
    await until(functools.partial(claimed, svc, job.id))
    writing, release, cancel_arrived = asyncio.Event(), asyncio.Event(), asyncio.Event()
    real_set_status, real_stop = svc.store.set_status, svc.scheduler.stop

    async def gated_set_status(job_id: str, status: JobStatus, *args: Any, **kwargs: Any) -> Job | None:
        if status == JobStatus.PAUSED and kwargs.get("claim") is not None:  # the run's final write
            writing.set()
            await release.wait()
        return await real_set_status(job_id, status, *args, **kwargs)

    async def seen_stop(job_id: str, reason: Stop) -> Stop | None:
        if reason is Stop.CANCELED:
            cancel_arrived.set()  # the real stop runs on, in this step, up to its first wait
        return await real_stop(job_id, reason)

    monkeypatch.setattr(svc.store, "set_status", gated_set_status)
    monkeypatch.setattr(svc.scheduler, "stop", seen_stop)
    pause = asyncio.create_task(request(svc.pause(job.id)))
    await asyncio.wait_for(writing.wait(), 60)
    cancel = asyncio.create_task(request(svc.cancel(job.id)))
    await asyncio.wait_for(cancel_arrived.wait(), 60)
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(pause, cancel), 60)
    final = await settled(svc, job.id)
    assert final is not None and final.status == "canceled", (answers, final)
    assert answers[1] == "canceled", answers
    await check_consistent(svc)


@pytest.mark.slow
async def test_a_job_started_twice_at_once_is_claimed_once(
    make_service: ServiceFactory, short_speech: Speech, write_failures: list[str]
) -> None:
    """`start` twice within the same instant on a paused job, with two runners: it runs once
    at a time (every claim of the job is followed by a final state before the next claim)."""
    svc = await make_service(runners={"devices": ["cpu", "cpu"]})
    rnd = random.Random(3)
    for _ in range(16):
        job = await svc.submit(short_speech.path, start=False)
        starts = []
        for _ in range(3):
            starts.append(asyncio.create_task(request(svc.resume(job.id))))
            for _ in range(rnd.randrange(12)):
                await asyncio.sleep(0)
        await asyncio.gather(*starts)
        await until(functools.partial(claimed, svc, job.id))
        for _ in range(rnd.choice([0, 2, 8, 30])):
            await asyncio.sleep(0)
        third = await request(svc.resume(job.id))  # while it runs: refused, never re-queued
        assert third in ("refused:running", "completed", "failed"), third
        final = await asyncio.wait_for(svc.wait(job.id), 180)
        assert final.status == "completed", final
        history = await svc.store.transitions(job.id)
        states = [t["status"] for t in history]
        claims = [i for i, t in enumerate(history) if t["phase"] == "claimed"]
        for a, b in itertools.pairwise(claims):
            assert any(s in STOPPED for s in states[a:b]), history
        assert states.count("completed") == 1, history
        await check_consistent(svc)
    assert not write_failures


@pytest.mark.slow
async def test_random_control_sequences_over_http_leave_a_consistent_service(
    aiohttp_client: Any, make_settings: Any, short_speech: Speech, write_failures: list[str]
) -> None:
    """200 random start/pause/resume/cancel/delete/upload requests in bursts against a live
    server with two real runners. No request fails with a 500, and once the queue drains every
    job is in a final or paused state that the scheduler, the database and the disk agree on;
    a fresh job still completes."""
    settings = make_settings(runners={"devices": ["cpu", "cpu"]})
    app = create_app(settings)
    client = await aiohttp_client(app)
    rnd = random.Random(20261124)
    jobs: list[str] = []
    deleted: set[str] = set()
    answers: Counter[str] = Counter()

    async def act(op: str, job_id: str | None) -> None:
        if op == "upload":
            job = await upload(client, short_speech.path, start=rnd.random() < 0.7)
            jobs.append(job["job_id"])
            answers["upload 201"] += 1
            return
        assert job_id is not None
        if op == "start":
            resp = await client.post("/api/start", json={"job_id": job_id, "restart": rnd.random() < 0.2})
        elif op == "delete":
            resp = await client.delete(f"/api/jobs/{job_id}")
        else:
            resp = await client.post(f"/api/{op}/{job_id}")
        body = await resp.json()
        answers[f"{op} {resp.status}"] += 1
        assert resp.status in (200, 404, 409), (op, resp.status, body)
        if op == "delete" and resp.status == 200:
            deleted.add(job_id)

    sent = 0
    weights = {"upload": 2, "start": 5, "pause": 5, "cancel": 3, "delete": 2}
    while sent < 200:
        burst = []
        focus = rnd.choice(jobs[-4:]) if jobs else None  # most requests of a burst hit one job
        for _ in range(min(rnd.randint(1, 4), 200 - sent)):
            op = "upload" if not jobs else rnd.choices(list(weights), list(weights.values()))[0]
            target = focus if rnd.random() < 0.8 else (rnd.choice(jobs) if jobs else None)
            burst.append(asyncio.create_task(act(op, target)))
            sent += 1
            for _ in range(rnd.choice([0, 0, 1, 2, 5])):
                await asyncio.sleep(0)
        await asyncio.wait_for(asyncio.gather(*burst), 120)
        await asyncio.sleep(rnd.choice([0, 0, 0.01, 0.05, 0.2]))

    store, scheduler = app[SERVICE].store, app[SERVICE].scheduler

    async def drained() -> bool:
        rows = await store.list_jobs(limit=1000)
        return not scheduler.running() and all(j.status not in ("queued", "processing") for j in rows)

    await until(drained, within=600, every=0.05)
    rows = {j.id: j for j in await store.list_jobs(limit=1000)}
    assert set(rows) == set(jobs) - deleted
    for job in rows.values():
        assert job.status in ("completed", "canceled", "paused"), job  # nothing failed
        assert job.lease_owner is None, job
        if job.status == "completed":
            srt = await client.get(f"/api/jobs/{job.id}/subtitles?format=srt")
            assert srt.status == 200
    for job_id in deleted:
        assert not (settings.jobs_dir / job_id).exists()
    await check_consistent_store(store, scheduler)
    assert not write_failures, write_failures
    # Both runner slots are still usable: two fresh jobs run side by side and complete.
    fresh = [(await upload(client, short_speech.path))["job_id"] for _ in range(2)]

    async def fresh_completed() -> bool:
        statuses = [(await (await client.get(f"/api/status/{j}")).json())["status"] for j in fresh]
        assert "failed" not in statuses
        return statuses == ["completed", "completed"]

    await until(fresh_completed, within=300, every=0.2)
    assert len(scheduler.ctx.pool.slots) == 2 and all(s.ready.is_set() for s in scheduler.ctx.pool.slots)
    print(dict(sorted(answers.items())))


async def test_control_answers_on_jobs_that_do_not_run(make_client: Any, short_speech: Speech) -> None:
    """Pausing a finished job is refused as `not_running`, canceling it as `finished`; asking
    again for the state a job is already in answers it."""
    client = await make_client(models={"preload_on_start": False})
    job_id = (await upload(client, short_speech.path, start=False))["job_id"]

    async def control(op: str) -> tuple[int, str]:
        resp = await client.post(f"/api/{op}/{job_id}")
        body = await resp.json()
        return resp.status, body["status"] if resp.status == 200 else body["error"]["code"]

    assert await control("pause") == (200, "paused")  # created paused: already so
    assert await control("cancel") == (200, "canceled")
    assert await control("cancel") == (200, "canceled")
    assert await control("pause") == (409, "not_running")
    resp = await client.post("/api/start", json={"job_id": job_id})
    assert resp.status == 200 and (await resp.json())["status"] == "queued"


async def test_a_store_error_does_not_stop_the_scheduler(
    make_service: ServiceFactory, short_speech: Speech
) -> None:
    """Another process holds the database past the store's busy timeout, so claiming fails
    with 'database is locked' for a while; once it lets go, a new job is claimed as usual."""
    svc = await make_service(models={"preload_on_start": False})
    blocker = sqlite3.connect(svc.settings.database_path, isolation_level=None, check_same_thread=False)
    try:
        await asyncio.to_thread(blocker.execute, "BEGIN EXCLUSIVE")
        await asyncio.sleep(11)  # past the 10 s busy timeout: the scheduler's claim has raised
        await asyncio.to_thread(blocker.execute, "ROLLBACK")
    finally:
        blocker.close()
    job = await svc.submit(short_speech.path)
    await until(functools.partial(claimed, svc, job.id), within=30, every=0.1)
