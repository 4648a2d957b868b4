"""Control across nodes on one PostgreSQL database: two real `Service`s in this process, each
with its own data directory, share the job store. A stop asked of one node for a job that runs
on the other goes through the database (no 409 "not here"), a job queued on one wakes the
other's idle scheduler at once, and a stop asked of a job whose owner died is carried out by
whoever takes the job over after its lease."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import SettingsFactory, until
from tests.http_helpers import open_stream
from tests.media import Speech
from vsrt_service.core.errors import Unavailable
from vsrt_service.core.options import parse_options
from vsrt_service.jobs.pg_store import PgJobStore
from vsrt_service.jobs.store import JobStatus
from vsrt_service.service import Service
from vsrt_service.web.app import create_app
from vsrt_service.web.keys import SERVICE

#: A lease long enough that only a NOTIFY, never a lease renewal (every lease / 3), can
#: explain how fast a stop or a new job reaches the other node.
LEASE = 30.0


@contextlib.asynccontextmanager
async def node(
    make_settings: SettingsFactory, pg_url: str, data_dir: Path, poll: float = 30.0, **service: Any
) -> AsyncIterator[Service]:
    """A started Service on the shared database with a data directory of its own; its
    scheduler looks at the queue unprompted only every `poll` s (capped at a third of the lease)."""
    settings = make_settings(
        data_dir=data_dir,
        store={"url": pg_url},
        jobs={"lease_seconds": LEASE, "poll_seconds": poll},
        models={"preload_on_start": False},
    )
    async with Service(settings, **service) as svc:
        yield svc


async def running_on(svc: Service, job_id: str) -> bool:
    job = await svc.store.get_job(job_id)
    return job is not None and job.status == "processing" and job_id in svc.scheduler.running()


async def stopped_on(svc: Service, job_id: str) -> bool:
    """The run is over on that node (its bookkeeping is dropped once its final state is written)."""
    return job_id not in svc.scheduler.running()


async def claim_delay(store: Any, job_id: str) -> float:
    """Seconds from the job's creation to its (first) claim, both on the database's clock."""
    job = await store.get_job(job_id)
    claimed = next(t for t in await store.transitions(job_id) if t["phase"] == "claimed")
    return float(claimed["at"] - job.created_at)


async def test_the_store_announces_stop_requests_and_queued_jobs(pg_url: str) -> None:
    """`watch` on one client hears what another client of the database did, as it commits."""
    stops: asyncio.Queue[str] = asyncio.Queue()
    queued: asyncio.Queue[None] = asyncio.Queue()
    async with PgJobStore.open(pg_url) as a, PgJobStore.open(pg_url) as b:
        async with a.watch(stops.put_nowait, lambda: queued.put_nowait(None)):
            job = await b.create_job(source_name="f", input_path="f", options={})
            await asyncio.wait_for(queued.get(), 5)
            claimed = await b.claim_next("b", 60)
            assert claimed is not None and claimed.id == job.id
            await b.request_stop(job.id, "paused")
            assert await asyncio.wait_for(stops.get(), 5) == job.id
            # Back to the queue (a shutdown) wakes the schedulers too.
            back = [JobStatus.PROCESSING]
            await b.set_status(job.id, JobStatus.QUEUED, "q", expect=back, claim=claimed.claim)
            await asyncio.wait_for(queued.get(), 5)
        await b.create_job(source_name="g", input_path="g", options={})
        await b.requeue(job.id, {}, restart=False)
    assert queued.empty()  # nothing after the watch ended


@pytest.mark.slow
async def test_pause_cancel_and_delete_on_one_node_stop_the_run_on_another(
    make_settings: SettingsFactory, pg_url: str, tmp_path: Path, speech: Speech
) -> None:
    async with (
        node(make_settings, pg_url, tmp_path / "a") as a,
        node(make_settings, pg_url, tmp_path / "b", work_runners=False) as b,
    ):
        # A job submitted on B wakes idle A at once, well inside A's 10 s poll.
        job = await b.submit(speech.path)
        await until(lambda: running_on(a, job.id), 30)
        assert await claim_delay(b.store, job.id) < 0.5
        claim = (await b.get(job.id)).claim

        # A third service of this process on the same database starts while A runs the job:
        # A's lease is live, so it is not taken for an orphan of a dead service.
        async with node(make_settings, pg_url, tmp_path / "c", work_runners=False):
            pass
        assert (await b.get(job.id)).claim == claim and await running_on(a, job.id)

        loop = asyncio.get_running_loop()
        started = loop.time()
        paused = await b.pause(job.id)
        assert paused.status == "paused" and loop.time() - started < 5.0  # not at a renewal
        await until(lambda: stopped_on(a, job.id), 5)
        assert [t["status"] for t in await b.store.transitions(job.id)][-1] == "paused"

        resumed = await b.resume(job.id)
        assert resumed.status == "queued"
        await until(lambda: running_on(a, job.id), 30)
        canceled = await b.cancel(job.id)
        assert canceled.status == "canceled" and canceled.error is None
        await until(lambda: stopped_on(a, job.id), 5)

        await b.resume(job.id)
        await until(lambda: running_on(a, job.id), 30)
        await b.delete(job.id)
        assert await a.store.get_job(job.id) is None
        await until(lambda: stopped_on(a, job.id), 5)


@pytest.mark.slow
async def test_a_stop_asked_of_a_dead_nodes_job_is_carried_out_by_its_heir(
    make_settings: SettingsFactory, pg_url: str, tmp_path: Path, speech: Speech
) -> None:
    """A node died holding a job (a claim nobody renews); a cancel asked meanwhile (as B's
    request writes it) waits for the lease to run out, then A takes the job over and cancels it
    instead of running it."""
    async with (
        node(make_settings, pg_url, tmp_path / "a", poll=0.2) as a,
        node(make_settings, pg_url, tmp_path / "b", work_runners=False, run_jobs=False) as b,
    ):
        options = parse_options(None, b.settings).to_dict()
        job = await b.store.create_job(
            source_name="s.mp4", input_path=str(speech.path), options=options, status="paused"
        )
        # What the dead node left: its claim, and no renewal ever again. Made straight on the
        # database from a paused job, so that A's scheduler never finds it queued first.
        db = await asyncpg.connect(pg_url)
        try:
            await db.execute(
                "UPDATE jobs SET status = 'processing', lease_owner = 'gone-host:1:dead', claim = 'dead',"
                " lease_expires = extract(epoch from now()) + 2, attempts = 1 WHERE id = $1",
                job.id,
            )
        finally:
            await db.close()
        assert await b.store.request_stop(job.id, "canceled") is not None

        async def canceled() -> bool:
            return (await b.get(job.id)).status == "canceled"

        await until(canceled, 30)
        history = await b.store.transitions(job.id)
        claims = [t["message"] for t in history if t["phase"] == "claimed"]
        assert claims == [f"claimed by {a.scheduler.owner}"]
        assert history[-1]["status"] == "canceled"
        assert (await b.store.segments(job.id)) == []  # canceled before any work


async def test_a_node_that_may_not_download_claims_only_the_models_on_its_disk(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    offline = make_settings(
        data_dir=tmp_path / "a", models={"allow_downloads": False, "preload_on_start": False}
    )
    async with Service(offline, work_runners=False, run_jobs=False) as svc:
        assert svc.models.claimable_models() == {"tiny.en"}  # the bundled model, nothing to fetch
        with pytest.raises(Unavailable, match="allow_downloads is false"):
            await svc.models.request("whisper", "base.en")
    online = make_settings(data_dir=tmp_path / "b", models={"preload_on_start": False})
    async with Service(online, work_runners=False, run_jobs=False) as svc:
        assert svc.models.claimable_models() == set(svc.models.catalog.ids("whisper"))


async def test_a_stop_asked_of_a_dead_nodes_job_no_node_takes_over_still_takes_effect(
    make_settings: SettingsFactory, pg_url: str, tmp_path: Path, speech: Speech
) -> None:
    """A node died holding a job and no node takes the job over (all busy, or none can run
    its model): once the lease ran out, the node asked to stop it stops it itself."""
    settings = make_settings(
        data_dir=tmp_path / "b",
        store={"url": pg_url},
        jobs={"lease_seconds": 3.0},
        runners={"enabled": False},
    )
    async with Service(settings, run_jobs=False) as b:
        options = parse_options(None, b.settings).to_dict()
        for target in ("paused", "canceled"):
            job = await b.store.create_job(
                source_name="s.mp4", input_path=str(speech.path), options=options, status="paused"
            )
            db = await asyncpg.connect(pg_url)
            try:  # what the dead node left: its claim, never renewed again
                await db.execute(
                    "UPDATE jobs SET status = 'processing', lease_owner = 'gone-host:1:dead',"
                    " claim = 'dead', lease_expires = extract(epoch from now()) + 1, attempts = 1"
                    " WHERE id = $1",
                    job.id,
                )
            finally:
                await db.close()
            stop = b.pause if target == "paused" else b.cancel
            stopped = await stop(job.id)
            assert stopped.status == target and stopped.lease_owner is None
            assert (await b.store.transitions(job.id))[-1]["status"] == target


@pytest.mark.slow
async def test_a_node_that_may_not_download_runs_jobs_without_the_aligner_it_lacks(
    make_service: Any, speech: Speech
) -> None:
    """With downloads off, a job whose Whisper model is here but whose aligner is not runs
    without word alignment, as when the aligner cannot be fetched; it does not fail."""
    svc = await make_service(models={"allow_downloads": False, "preload_on_start": False})
    job = await svc.submit(speech.path, {"language": "en"})
    done = await asyncio.wait_for(svc.finished(job.id), 120)
    assert done.status == "completed" and done.alignment != "wav2vec2", done


@pytest.mark.slow
async def test_a_node_that_cannot_renew_its_lease_in_time_stops_the_run(
    make_settings: SettingsFactory, pg_url: str, tmp_path: Path, long_speech: Speech
) -> None:
    """The database stops answering the node about its jobs (here: another client holds the
    jobs table locked, so every write of the node waits) for longer than the lease. Once the
    lease has run out another node may own the job, so the run stops by itself rather than work
    on (and write results) beside the new owner; when the database answers again the job is
    claimed anew and completes from its checkpoint."""
    lease = 3.0
    settings = make_settings(
        data_dir=tmp_path / "a",
        store={"url": pg_url},
        jobs={"lease_seconds": lease, "poll_seconds": 0.2},
        models={"preload_on_start": False},
    )
    async with Service(settings) as a:
        job = await a.submit(long_speech.path)
        await until(lambda: running_on(a, job.id), 60)
        blocker = await asyncpg.connect(pg_url)
        try:
            locked = blocker.transaction()
            await locked.start()
            await blocker.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            loop = asyncio.get_running_loop()
            started = loop.time()
            await until(lambda: stopped_on(a, job.id), 3 * lease)
            assert loop.time() - started < lease + 1.5
            await locked.rollback()
        finally:
            await blocker.close()
        done = await asyncio.wait_for(a.finished(job.id), 120)
        assert done.status == "completed" and done.attempts == 2
        segments = await a.store.segments(job.id)
        assert segments and all(s.transcribe_count == 1 for s in segments)


async def test_a_waiter_learns_of_a_final_state_whose_event_was_lost(
    aiohttp_client: Any, make_settings: SettingsFactory, pg_url: str, tmp_path: Path, speech: Speech
) -> None:
    """A node that commits a job's final state and dies before its event is written leaves a
    final job and no event. Whoever follows the job on another node (a synchronous /v1 request
    or the CLI through `Service.wait`, a page through its event stream) looks at the job when
    its events go quiet, and learns that it ended, instead of waiting forever."""
    settings = make_settings(
        data_dir=tmp_path / "b",
        store={"url": pg_url},
        runners={"enabled": False},
        sse={"heartbeat_interval": 0.5},
    )
    client = await aiohttp_client(create_app(settings))
    b = client.app[SERVICE]
    async with PgJobStore.open(pg_url) as dead_node:
        job = await b.submit(speech.path)
        waiter = asyncio.create_task(b.wait(job.id))
        stream = await open_stream(client, job.id)
        assert (await stream.next()).event == "connected"
        # What the dead node committed (a cancel of a queued job stands in for any final state).
        assert await dead_node.set_status(job.id, JobStatus.CANCELED, "canceled", expect=[JobStatus.QUEUED])
        ended = await asyncio.wait_for(waiter, 5)
        assert ended.status == "canceled"
        told = await asyncio.wait_for(stream.until(lambda ev: ev.event == "signal"), 5)
        assert told[-1].data == {"code": "canceled", "message": "job canceled"}
        events = [ev async for ev in b.events(job.id)]  # a later follower ends at once, too
        assert [ev.event for ev in events] == ["connected"]
