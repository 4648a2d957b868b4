"""Job events across nodes on a real PostgreSQL server: each event is a row of the `events` table
(its id the SSE id), NOTIFY wakes every node's broker, replay after a reconnect comes from the
table. Two nodes in one process (two Brokers, two PgEventLogs) for the many cases; real HTTP on
two Services sharing one database for the wiring and the exact bytes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import ClientFactory, until
from tests.http_helpers import open_stream, upload
from tests.media import Speech
from tests.pg import Cluster
from vsrt_service.core.broker import Broker, Event, Subscription, job_channel
from vsrt_service.jobs.pg_events import PgEventLog
from vsrt_service.jobs.pg_store import PgJobStore
from vsrt_service.web.app import SERVICE

JOB_ID = "0123456789abcdef"
CHANNEL = job_channel(JOB_ID)


@contextlib.asynccontextmanager
async def node(
    url: str, queue: int = 1000, retention: float = 3600.0
) -> AsyncIterator[tuple[Broker, PgEventLog]]:
    """One node's broker and its event log on the shared database."""
    broker = Broker(subscriber_queue=queue)
    async with PgEventLog.open(url, broker, retention_seconds=retention) as log:
        yield broker, log
    broker.close()


async def take(sub: Subscription, n: int, within: float = 10.0) -> list[Event]:
    """The next `n` events of a subscription, in the order it hands them out."""
    got: list[Event] = []
    async with asyncio.timeout(within):
        while len(got) < n:
            assert await sub.wait(within), f"only {len(got)} of {n} events came"
            batch = sub.drain()
            assert batch or not sub.closed, "subscription closed early"
            got += batch
    return got


async def table(url: str, channel: str) -> list[tuple[int, str, str]]:
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch("SELECT id, event, data FROM events WHERE channel = $1 ORDER BY id", channel)
    finally:
        await db.close()
    return [(r["id"], r["event"], r["data"]) for r in rows]


async def make_job(url: str) -> None:
    """The job of CHANNEL, for tests of pruning (which drops the channels of jobs that are gone)."""
    async with PgJobStore.open(url) as store:
        await store.create_job(source_name="f", input_path="f", options={}, job_id=JOB_ID)


async def no_events(url: str) -> bool:
    return not await table(url, CHANNEL)


async def test_an_event_published_on_one_node_reaches_the_other_with_the_table_id(pg_url: str) -> None:
    async with node(pg_url) as (a, _), node(pg_url) as (b, _):
        on_b, replayed = await b.open(CHANNEL)
        on_a, _ = await a.open(CHANNEL)
        assert not replayed
        for i in range(20):
            a.publish(CHANNEL, "fragment", {"segment_index": i, "text": "héllo"})
        got_b, got_a = await take(on_b, 20), await take(on_a, 20)
    ids = [e.id for e in got_b]
    assert [e.data["segment_index"] for e in got_b] == list(range(20))
    assert ids == list(range(ids[0], ids[0] + 20))  # consecutive: strictly increasing, none skipped
    assert ids[0] > on_b.opened_at
    assert [(e.id, e.frame) for e in got_a] == [(e.id, e.frame) for e in got_b]
    assert [r[0] for r in await table(pg_url, CHANNEL)] == ids


async def test_an_event_too_big_for_a_notification_is_read_back_from_the_table(pg_url: str) -> None:
    big = {"segments": [{"text": "wörd " * 3000}]}  # well over NOTIFY's 8000 bytes
    async with node(pg_url) as (a, _), node(pg_url) as (b, _):
        sub, _ = await b.open(CHANNEL)
        a.publish(CHANNEL, "fragment", big)
        a.publish(CHANNEL, "fragment", {"i": 1})
        got = await take(sub, 2)
    assert [e.data for e in got] == [big, {"i": 1}] and got[1].id == got[0].id + 1


async def test_unwritten_progress_is_coalesced_but_every_fragment_is_kept(pg_url: str) -> None:
    """Published in one go (the writer cannot run in between): only the newest progress is
    written, after the fragments, as a subscriber's queue would coalesce it."""
    async with node(pg_url) as (a, log), node(pg_url) as (b, _):
        sub, _ = await b.open(CHANNEL)
        for i in range(50):
            a.publish(CHANNEL, "progress", {"percent": i})
            if i % 10 == 0:
                a.publish(CHANNEL, "fragment", {"i": i})
        await log.flush()
        got = await take(sub, 6)
    assert [(e.event, e.data) for e in got] == [
        *(("fragment", {"i": i}) for i in range(0, 50, 10)),
        ("progress", {"percent": 49}),
    ]
    assert len(await table(pg_url, CHANNEL)) == 6


async def test_deleting_a_channel_on_one_node_ends_its_streams_on_the_others(pg_url: str) -> None:
    async with node(pg_url) as (a, _), node(pg_url) as (b, _):
        sub, _ = await a.open(CHANNEL)
        b.publish(CHANNEL, "fragment", {"i": 0})
        await take(sub, 1)
        await b.delete_channel(CHANNEL)
        async with asyncio.timeout(5):
            while not sub.closed:
                await sub.wait(5)
        assert await table(pg_url, CHANNEL) == []
        assert not (await b.open(CHANNEL, 1))[1]


async def test_concurrent_publishers_on_two_nodes_never_skip_or_reorder_for_a_reader(pg_url: str) -> None:
    """Both nodes publish on one channel at once; a reader on each sees exactly the table, in id
    order, each publisher's events in its own order."""
    n = 150
    async with node(pg_url) as (a, _), node(pg_url) as (b, _):
        readers = [(await a.open(CHANNEL))[0], (await b.open(CHANNEL))[0]]

        async def publish(broker: Broker, name: str) -> None:
            for i in range(n):
                broker.publish(CHANNEL, "fragment", {"by": name, "i": i})
                if i % 7 == 0:
                    await asyncio.sleep(0)  # let the writer take batches of different sizes

        await asyncio.gather(publish(a, "a"), publish(b, "b"))
        seen = [await take(r, 2 * n) for r in readers]
    rows = await table(pg_url, CHANNEL)
    assert len(rows) == 2 * n
    for got in seen:
        assert [e.id for e in got] == [r[0] for r in rows]
        for name in "ab":
            assert [e.data["i"] for e in got if e.data["by"] == name] == list(range(n))
    assert [r[0] for r in rows] == list(range(rows[0][0], rows[0][0] + 2 * n))


async def test_a_reconnect_with_last_event_id_replays_exactly_the_missed_events_from_the_table(
    pg_url: str,
) -> None:
    async with node(pg_url) as (a, _), node(pg_url) as (b, _):
        sub, _ = await b.open(CHANNEL)
        for i in range(5):
            a.publish(CHANNEL, "fragment", {"i": i})
        seen = await take(sub, 5)
        sub.close()
        watch, _ = await a.open(CHANNEL)
        for i in range(5, 12):
            a.publish(CHANNEL, "fragment", {"i": i})
        missed = await take(watch, 7)  # written: on the table now

        again, replayed = await b.open(CHANNEL, seen[-1].id)
        assert replayed
        replay = await take(again, 7)
        assert [(e.id, e.data) for e in replay] == [(e.id, e.data) for e in missed]
        later = b.publish(CHANNEL, "signal", {"code": "paused"})
        nxt = await take(again, 1)
        assert nxt[0].event == later.event and nxt[0].id == missed[-1].id + 1  # live after, no dup
        # A new subscriber's snapshot position is the channel's last id on the table.
        fresh, replayed = await a.open(CHANNEL)
        assert not replayed and fresh.opened_at == nxt[0].id
        # Ids this channel never issued (the future, or before its life) get a snapshot.
        assert not (await b.open(CHANNEL, nxt[0].id + 1000))[1]
        assert not (await b.open(CHANNEL, 5))[1]


async def test_an_id_older_than_retention_kept_gets_a_snapshot_not_a_partial_replay(pg_url: str) -> None:
    await make_job(pg_url)
    async with node(pg_url) as (a, log), node(pg_url) as (b, _):
        watch, _ = await b.open(CHANNEL)
        for i in range(6):
            a.publish(CHANNEL, "fragment", {"i": i})
        old = await take(watch, 6)
        assert await log.prune(older_than=0.0) == 6
        a.publish(CHANNEL, "fragment", {"i": 6})
        new = (await take(watch, 1))[0]
        assert [r[0] for r in await table(pg_url, CHANNEL)] == [new.id]

        sub, replayed = await b.open(CHANNEL, old[2].id)
        assert not replayed and sub.opened_at == new.id and not sub.drain()
        # From the newest one kept, a replay is whole again.
        assert (await b.open(CHANNEL, old[-1].id))[1]


async def test_each_node_deletes_events_past_the_retention_by_itself(pg_url: str) -> None:
    await make_job(pg_url)
    async with node(pg_url, retention=0.4) as (a, _):
        sub, _ = await a.open(CHANNEL)
        a.publish(CHANNEL, "fragment", {"i": 0})
        [first] = await take(sub, 1)
        await until(lambda: no_events(pg_url), within=5, every=0.1)  # the node's own task deletes it
        assert not (await a.open(CHANNEL, first.id - 1))[1]


async def test_events_still_arrive_after_the_listen_connection_is_killed(
    pg_cluster: Cluster, pg_url: str
) -> None:
    async with node(pg_url) as (a, a_log), node(pg_url) as (b, b_log):
        sub, _ = await b.open(CHANNEL)
        a.publish(CHANNEL, "fragment", {"i": 0})
        assert [e.data["i"] for e in await take(sub, 1)] == [0]
        db = await asyncpg.connect(pg_cluster.url())
        name = pg_url.rsplit("/", 1)[-1]
        try:
            # No new connections until the events are written, so B cannot be listening then:
            # they can only reach it through the catch-up read after it reconnects.
            await db.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
            killed_pid = b_log.listener_pid
            assert await db.fetchval("SELECT pg_terminate_backend($1)", killed_pid)
            for i in range(1, 30):
                a.publish(CHANNEL, "fragment", {"i": i})
            await a_log.flush()
            assert not sub.drain()
        finally:
            await db.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            await db.close()
        got = await take(sub, 29)
        assert b_log.listener_pid not in (None, killed_pid)
        a.publish(CHANNEL, "fragment", {"i": 30})
        got += await take(sub, 1)
    assert [e.data["i"] for e in got] == list(range(1, 31))
    assert [e.id for e in got] == list(range(got[0].id, got[0].id + 30))


async def test_a_client_on_one_node_follows_a_job_of_another_over_http(
    pg_url: str, make_client: ClientFactory, speech: Speech, tmp_path: Path
) -> None:
    """Two services on one database: a job made on A is streamed from B with the table's ids in
    the exact SSE bytes, pings repeat the last id, a reconnect gets exactly what it missed, and
    deleting the job deletes its events."""
    common: dict[str, Any] = {"store": {"url": pg_url}, "runners": {"enabled": False}}  # no job runs here
    node_a = await make_client(data_dir=tmp_path / "a", **common)
    node_b = await make_client(data_dir=tmp_path / "b", sse={"heartbeat_interval": 0.3}, **common)
    job = await upload(node_a, speech.path, start=False)
    channel = job_channel(job["job_id"])
    stream = await open_stream(node_b, job["job_id"])
    assert (await stream.next()).event == "connected"

    broker_a = node_a.app[SERVICE].broker
    broker_a.publish(channel, "fragment", {"segment_index": 0, "segments": [{"text": "héllo\nworld"}]})
    got = await stream.next()
    [(event_id, _, _)] = await table(pg_url, channel)
    data = '{"segment_index":0,"segments":[{"text":"héllo\\nworld"}]}'
    assert got.raw == f"id: {event_id}\nevent: fragment\ndata: {data}\n\n".encode()
    ping = await stream.next()
    assert ping.event == "ping" and int(ping.id or 0) == event_id  # no new id: it would collide
    stream.resp.close()

    for i in range(1, 5):
        broker_a.publish(channel, "fragment", {"segment_index": i})
    again = await open_stream(node_b, job["job_id"], **{"Last-Event-ID": str(event_id)})
    replay = [await again.next() for _ in range(4)]
    assert [e.data["segment_index"] for e in replay] == [1, 2, 3, 4]
    assert [int(e.id or 0) for e in replay] == [r[0] for r in (await table(pg_url, channel))[1:]]
    again.resp.close()
    from_service: list[Event] = []  # the same replay for the service's own followers (wait, CLI)
    async for ev in node_b.app[SERVICE].events(job["job_id"], event_id):
        from_service.append(ev)
        if len(from_service) == 4:
            break
    assert [e.id for e in from_service] == [int(e.id or 0) for e in replay]

    resp = await node_b.delete(f"/api/jobs/{job['job_id']}")
    assert resp.status in (200, 204), await resp.text()
    db = await asyncpg.connect(pg_url)
    try:
        left = await db.fetchval("SELECT count(*) FROM event_channels WHERE channel = $1", channel)
    finally:
        await db.close()
    assert left == 0 and await table(pg_url, channel) == []


async def test_a_deleted_jobs_late_events_go_at_the_next_prune(pg_url: str) -> None:
    """A job deleted while its node still had events to write (its final signal, usually):
    they arrive after the delete and make its channel again. The next prune removes the
    channel and its events; those of a job that exists stay until they are old."""
    async with PgJobStore.open(pg_url) as store, node(pg_url) as (a, ev_log):
        job = await store.create_job(source_name="f", input_path="f", options={})
        alive = job_channel(job.id)
        a.publish(CHANNEL, "signal", {"code": "canceled", "message": "job canceled"})  # no such job
        a.publish(alive, "progress", {"percent": 1})
        await ev_log.flush()
        assert await table(pg_url, CHANNEL) and await table(pg_url, alive)
        assert await ev_log.prune(3600) == 1
        assert not await table(pg_url, CHANNEL) and await table(pg_url, alive)
        async with store.pool.acquire() as db:
            channels = {r["channel"] for r in await db.fetch("SELECT channel FROM event_channels")}
        assert channels == {alive}
