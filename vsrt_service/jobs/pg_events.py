"""Job events shared by every node through PostgreSQL: a row per event, NOTIFY as the wake-up.

A node's broker hands each job event to `PgEventLog.append` (sync, never blocks). One writer
task numbers queued events and writes them in batches, one transaction each: the channel's
row in `event_channels` is locked to allocate ids (`last_id + n`), so per channel the id order
is the commit order, which is also the order NOTIFY delivers in, and a reader never sees a
later id before an earlier one. The same transaction sends each event with `pg_notify`
(the event itself when it fits, else only its channel and id; "<channel> deleted" when a job
is deleted). One LISTEN connection per node
feeds what arrives, from any node including this one, into the local broker (`deliver`), in
arrival order; after a lost connection it reconnects and reads what it missed from the table.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import asyncpg

from vsrt_service.core.broker import COALESCE, Broker, Event, LogRead
from vsrt_service.jobs.pg_store import CONNECT_TIMEOUT, NOW, _migrate, redact_url
from vsrt_service.jobs.store import StoreUnavailable

log = logging.getLogger(__name__)

#: The NOTIFY channel every node listens on.
NOTIFY_CHANNEL = "vsrt_events"

#: Payload bytes sent inline (PostgreSQL refuses more than 8000); a bigger event is read back.
NOTIFY_INLINE = 7000

#: The notification (in place of an id) that a channel was deleted with its job.
DELETED = "deleted"

#: The advisory lock whose holder prunes (any constant: "vsrp" in ASCII).
PRUNE_LOCK = 0x76737270

#: Seconds between checks that the LISTEN connection is alive, and before a retry after an error.
KEEPALIVE = 5.0
RETRY = 1.0

#: Errors of a lost or refusing server: retried, never raised into the broker's callers.
DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

#: A channel's first id when it is created: the database clock's milliseconds (as the broker
#: does), so ids keep growing across restarts and a deleted job's channel does not reuse them.
_START = "(extract(epoch from clock_timestamp()) * 1000)::bigint - 1"


def _encode(data: dict[str, Any]) -> str:
    """As `sse_frame` writes it, so decoding and re-encoding gives the same bytes."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


#: A catch-up request among the notifications: read what the followed channels missed.
_CATCH_UP = None


class PgEventLog:
    """The `EventLog` of a broker on PostgreSQL. Open with `async with PgEventLog.open(url,
    broker):` (or pass the store's pool); while open, the broker's job channels go through it."""

    def __init__(self, pool: asyncpg.Pool, url: str, broker: Broker, retention_seconds: float) -> None:
        self._pool = pool
        self._url = url
        self._broker = broker
        self._retention = retention_seconds
        #: Events waiting for the writer, per channel in publish order.
        self._pending: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self._queued = asyncio.Event()
        self._writing = False
        self._written = asyncio.Event()
        #: NOTIFY payloads (and catch-up requests) in arrival order.
        self._incoming: deque[str | None] = deque()
        self._arrived = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        #: Set once the newest LISTEN connection listens: its catch-up may read the table.
        self._listening = asyncio.Event()
        #: The server process of the LISTEN connection (None while reconnecting).
        self.listener_pid: int | None = None

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        broker: Broker,
        *,
        pool: asyncpg.Pool | None = None,
        retention_seconds: float = 86400.0,
    ) -> AsyncIterator[PgEventLog]:
        """Attach a log to `broker`; with no `pool`, one of its own (the schema brought up to
        date). Pending events are written before it closes."""
        async with contextlib_pool(url, pool) as db_pool:
            ev_log = cls(db_pool, url, broker, retention_seconds)
            try:
                await ev_log._connect()
            except DB_ERRORS as exc:
                raise StoreUnavailable(f"cannot listen for events at {redact_url(url)}: {exc}") from None
            tasks = [
                asyncio.create_task(ev_log._write_loop(), name="pg-events-writer"),
                asyncio.create_task(ev_log._listen_loop(), name="pg-events-listener"),
                asyncio.create_task(ev_log._deliver_loop(), name="pg-events-delivery"),
                asyncio.create_task(ev_log._prune_loop(), name="pg-events-retention"),
            ]
            broker.log = ev_log
            try:
                yield ev_log
            finally:
                broker.log = None
                with suppress(TimeoutError):
                    async with asyncio.timeout(5):
                        await ev_log.flush()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if ev_log._listener is not None:
                    with suppress(*DB_ERRORS):
                        await ev_log._listener.close(timeout=2)

    # --- writing -------------------------------------------------------------------------

    def append(self, channel: str, event: str, data: dict[str, Any]) -> None:
        """Queue an event; an unwritten older one of a coalescible kind (progress) on the same
        channel is replaced, as subscriber queues do, so a fast pipeline does not flood the table."""
        items = self._pending.setdefault(channel, [])
        if event in COALESCE:
            for i in range(len(items) - 1, -1, -1):
                if items[i][0] == event:
                    del items[i]
                    break
        items.append((event, data))
        self._queued.set()

    async def flush(self) -> None:
        """Until everything appended so far is written (tests, shutdown)."""
        while self._pending or self._writing:
            self._written.clear()
            await self._written.wait()

    async def _write_loop(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._pending:
                batch, self._pending = self._pending, {}
                self._writing = True
                try:
                    await self._write(batch)
                except DB_ERRORS as exc:
                    log.warning("could not write job events of %d channels, retrying: %s", len(batch), exc)
                    for channel, items in self._pending.items():  # newer ones after the batch's
                        batch.setdefault(channel, []).extend(items)
                    self._pending = batch
                    await asyncio.sleep(RETRY)
                except Exception:  # a bug, not the server: lose this batch, never the writer
                    log.exception("dropped job events of %d channels", len(batch))
                finally:
                    self._writing = False
                    self._written.set()

    async def _write(self, batch: dict[str, list[tuple[str, dict[str, Any]]]]) -> None:
        """One transaction: ids per channel (rows locked in name order, so two writers never
        deadlock), the rows, then a NOTIFY per event in id order."""
        channels = sorted(batch)
        async with self._pool.acquire() as db, db.transaction():
            rows = await db.fetch(
                "INSERT INTO event_channels AS c (channel, last_id, kept_after)"
                " SELECT t.channel, s.start + t.n, s.start"
                f" FROM unnest($1::text[], $2::bigint[]) AS t (channel, n), (SELECT {_START} AS start) AS s"
                " ORDER BY t.channel"
                " ON CONFLICT (channel) DO UPDATE"
                " SET last_id = c.last_id + (excluded.last_id - excluded.kept_after)"
                " RETURNING channel, last_id",
                channels,
                [len(batch[c]) for c in channels],
            )
            last = {r["channel"]: r["last_id"] for r in rows}
            names: list[str] = []
            ids: list[int] = []
            kinds: list[str] = []
            texts: list[str] = []
            payloads: list[str] = []
            for channel in channels:
                items = batch[channel]
                first = last[channel] - len(items) + 1
                for offset, (event, data) in enumerate(items):
                    text = _encode(data)
                    names.append(channel)
                    ids.append(first + offset)
                    kinds.append(event)
                    texts.append(text)
                    payload = f"{channel} {first + offset} {event} {text}"
                    if len(payload.encode()) > NOTIFY_INLINE:
                        payload = f"{channel} {first + offset}"
                    payloads.append(payload)
            await db.execute(
                f"INSERT INTO events (channel, id, event, data, at) SELECT c, i, e, d, {NOW}"
                " FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[]) AS t (c, i, e, d)",
                names,
                ids,
                kinds,
                texts,
            )
            await db.execute("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", NOTIFY_CHANNEL, payloads)

    # --- listening -----------------------------------------------------------------------

    async def _connect(self) -> None:
        """A LISTEN connection, with a catch-up request queued before anything it receives:
        what committed while nobody listened is read from the table once LISTEN is on (so
        nothing falls between), and only then what arrives on the new connection."""
        conn = await asyncpg.connect(self._url, timeout=CONNECT_TIMEOUT)
        self._listening.clear()
        self._incoming.append(_CATCH_UP)
        self._arrived.set()
        try:
            await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
        except BaseException:
            await conn.close(timeout=2)
            raise
        conn.add_termination_listener(lambda _: self._lost.set())
        self._lost.clear()
        self._listener = conn
        self.listener_pid = conn.get_server_pid()
        self._listening.set()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._incoming.append(str(payload))
        self._arrived.set()

    async def _listen_loop(self) -> None:
        """Keep a LISTEN connection: a lost one (server restart, killed backend, network) is
        noticed at once or by the keep-alive query, and replaced."""
        while True:
            conn = self._listener
            if conn is None or conn.is_closed():
                self._listener, self.listener_pid = None, None
                try:
                    await self._connect()
                except DB_ERRORS as exc:
                    log.warning("event listener cannot connect, retrying: %s", exc)
                    await asyncio.sleep(RETRY)
                except Exception:  # a bug, not the server: say so, and keep listening
                    log.exception("event listener could not connect; retrying")
                    await asyncio.sleep(RETRY)
                continue
            with suppress(TimeoutError):
                async with asyncio.timeout(KEEPALIVE):
                    await self._lost.wait()
            if not self._lost.is_set():
                try:
                    await conn.execute("SELECT 1", timeout=KEEPALIVE)
                    continue
                except DB_ERRORS as exc:
                    log.warning("event listener connection lost: %s", exc)
            if not conn.is_closed():
                conn.terminate()

    async def _deliver_loop(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._incoming:
                item = self._incoming[0]
                try:
                    if item is _CATCH_UP:
                        await self._listening.wait()
                        await self._catch_up()
                    else:
                        await self._deliver(item)
                except DB_ERRORS as exc:
                    log.warning("could not read job events, retrying: %s", exc)
                    await asyncio.sleep(RETRY)
                    continue
                except Exception:  # a malformed payload: skip it, keep delivering
                    log.exception("could not deliver a job event")
                self._incoming.popleft()

    async def _deliver(self, payload: str) -> None:
        parts = payload.split(" ", 3)
        if parts[1] == DELETED:
            self._broker.drop_channel(parts[0])
            return
        channel, event_id = parts[0], int(parts[1])
        if self._broker.subscribers(channel) == 0:
            return  # nobody here follows it: not worth decoding (a subscriber reads the table)
        if len(parts) == 4:
            self._broker.deliver(Event(channel, event_id, parts[2], json.loads(parts[3])))
            return
        row = await self._pool.fetchrow(
            "SELECT event, data FROM events WHERE channel = $1 AND id = $2", channel, event_id
        )
        if row is not None:
            self._broker.deliver(Event(channel, event_id, row["event"], json.loads(row["data"])))

    async def _catch_up(self) -> None:
        followed = self._broker.followed()
        if not followed:
            return
        rows = await self._pool.fetch(
            "SELECT e.channel, e.id, e.event, e.data FROM events e"
            " JOIN unnest($1::text[], $2::bigint[]) AS f (channel, after) ON e.channel = f.channel"
            " WHERE e.id > f.after ORDER BY e.channel, e.id",
            list(followed),
            list(followed.values()),
        )
        for r in rows:
            self._broker.deliver(Event(r["channel"], r["id"], r["event"], json.loads(r["data"])))

    # --- reading, deleting, retention ----------------------------------------------------

    async def read(self, channel: str, after: int | None, limit: int) -> LogRead:
        """The channel's position and, when `after` is within what is kept, up to `limit`
        events after it; one snapshot of the table (repeatable read)."""
        async with self._pool.acquire() as db, db.transaction(isolation="repeatable_read", readonly=True):
            row = await db.fetchrow(
                "SELECT last_id, kept_after FROM event_channels WHERE channel = $1", channel
            )
            if row is None:
                return LogRead(0, 0, [])
            last_id, kept_after = row["last_id"], row["kept_after"]
            if after is None or not kept_after <= after <= last_id:
                return LogRead(last_id, kept_after, [])
            rows = await db.fetch(
                "SELECT id, event, data FROM events WHERE channel = $1 AND id > $2 ORDER BY id LIMIT $3",
                channel,
                after,
                limit,
            )
        events = [Event(channel, r["id"], r["event"], json.loads(r["data"])) for r in rows]
        return LogRead(last_id, kept_after, events)

    async def delete(self, channel: str) -> None:
        """The channel's events and numbering (its job is deleted); unwritten ones are dropped,
        and every node closes its streams of it."""
        self._pending.pop(channel, None)
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("DELETE FROM events WHERE channel = $1", channel)
            await db.execute("DELETE FROM event_channels WHERE channel = $1", channel)
            await db.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, f"{channel} {DELETED}")

    async def prune(self, older_than: float) -> int:
        """Delete events older than `older_than` seconds (by the database's clock); each
        channel remembers the newest id it lost, so a replay from before it gets a snapshot.
        The channels (and events) of jobs that no longer exist go too: a job deleted while its
        node still had events to write gets them after the delete. One node prunes at a time
        (the others skip that round). Returns how many events went."""
        async with self._pool.acquire() as db, db.transaction():
            if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK):
                return 0
            count = await db.fetchval(
                f"WITH gone AS (DELETE FROM events WHERE at < {NOW} - $1 RETURNING channel, id),"
                " lost AS (SELECT channel, max(id) AS id, count(*) AS n FROM gone GROUP BY channel),"
                " marked AS (UPDATE event_channels c SET kept_after = greatest(c.kept_after, lost.id)"
                " FROM lost WHERE c.channel = lost.channel)"
                " SELECT coalesce(sum(n), 0) FROM lost",
                float(older_than),
            )
            orphans = await db.fetch(
                "DELETE FROM event_channels c WHERE c.channel LIKE 'job:%'"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE c.channel = 'job:' || j.id) RETURNING channel"
            )
            if orphans:
                status = await db.execute(
                    "DELETE FROM events WHERE channel = ANY($1::text[])", [r["channel"] for r in orphans]
                )
                count += int(status.rsplit(" ", 1)[-1])
        return int(count)

    async def _prune_loop(self) -> None:
        every = min(300.0, self._retention / 4)
        while True:
            await asyncio.sleep(every)
            try:
                gone = await self.prune(self._retention)
            except DB_ERRORS as exc:
                log.warning("could not delete old job events: %s", exc)
                continue
            except Exception:  # a bug, not the server: say so, and try at the next round
                log.exception("could not delete old job events")
                continue
            if gone:
                log.info("deleted %d job events older than the retention", gone)


@asynccontextmanager
async def contextlib_pool(url: str, pool: asyncpg.Pool | None) -> AsyncIterator[asyncpg.Pool]:
    """`pool` as it is, or a small one of our own on `url` with the schema brought up to date."""
    if pool is not None:
        yield pool
        return
    try:
        own = await asyncpg.create_pool(url, min_size=1, max_size=4, timeout=CONNECT_TIMEOUT)
    except (*DB_ERRORS, ValueError) as exc:
        raise StoreUnavailable(f"cannot open the event log at {redact_url(url)}: {exc}") from None
    try:
        await _migrate(own)
        yield own
    finally:
        await own.close()
