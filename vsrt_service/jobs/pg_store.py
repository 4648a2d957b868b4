"""The PostgreSQL JobStore: one database shared by every node, through an asyncpg pool.

Same semantics as `SqliteJobStore` (tests/store_contract.py checks both). Where SQLite has one
writer, PostgreSQL has row locks: every change of a job first locks its row (`FOR UPDATE`), so
compare-and-set checks and the writes after them see no one else's change in between, and jobs
are claimed with `FOR UPDATE SKIP LOCKED` so concurrent claimers never wait for each other nor
take the same job. Times are the database's clock (`now()`, the transaction's start), so nodes
whose clocks disagree still agree on when a lease runs out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from vsrt_service.core import bigjson
from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.jobs.store import (
    FINAL,
    RESUMABLE,
    STATUSES,
    STOP_REQUESTS,
    Delivery,
    DeliveryStatus,
    Job,
    JobStatus,
    NoticePolicy,
    Renewal,
    Segment,
    StoreError,
    StoreUnavailable,
    job_model,
    job_priority,
)

log = logging.getLogger(__name__)

#: The advisory lock key migrations run under (any constant; "vsrt" in ASCII).
MIGRATION_LOCK = 0x76737274

#: NOTIFY channels: a stop requested for a job (payload: its id), and a job become queued.
CONTROL_CHANNEL = "vsrt_control"
JOBS_CHANNEL = "vsrt_jobs"

#: The class of the advisory locks that make one job per request key (`create_for_request`).
REQUEST_LOCK = 0x76737271

#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT = 10.0

#: The database's clock, in seconds since the epoch (the transaction's start: one instant for
#: every row a transaction writes).
NOW = "extract(epoch from now())::float8"

# JSON values are TEXT, stored exactly as SQLite stores them (the same encoder writes both).
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    created_at    DOUBLE PRECISION NOT NULL,
    updated_at    DOUBLE PRECISION NOT NULL,
    status        TEXT NOT NULL,
    phase         TEXT NOT NULL DEFAULT 'queued',
    percent       DOUBLE PRECISION NOT NULL DEFAULT 0,
    message       TEXT NOT NULL DEFAULT '',
    processed     INTEGER NOT NULL DEFAULT 0,
    total         INTEGER NOT NULL DEFAULT 0,
    error_code    TEXT,
    error         TEXT,
    source_name   TEXT NOT NULL,
    input_path    TEXT NOT NULL,
    settings      TEXT NOT NULL,
    checkpoint_settings TEXT,
    language      TEXT,
    duration      DOUBLE PRECISION,
    alignment     TEXT,
    result        TEXT,
    edited_cues   TEXT,
    edits_version INTEGER NOT NULL DEFAULT 0,
    speech        TEXT,
    request_key   TEXT,
    lease_owner   TEXT,
    lease_expires DOUBLE PRECISION,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claim         TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at, id);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at DESC, id);
CREATE INDEX IF NOT EXISTS jobs_by_request_key ON jobs (request_key, created_at)
    WHERE request_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS segments (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    start      DOUBLE PRECISION NOT NULL,
    "end"      DOUBLE PRECISION NOT NULL,
    text       TEXT,
    language   TEXT,
    transcribed_at DOUBLE PRECISION,
    transcribe_count INTEGER NOT NULL DEFAULT 0,
    crashes    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS transitions (
    id       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       DOUBLE PRECISION NOT NULL,
    status   TEXT NOT NULL,
    phase    TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions (job_id, id);
CREATE TABLE IF NOT EXISTS deliveries (
    id           TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    event        TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         BYTEA NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      DOUBLE PRECISION,
    delivered_at DOUBLE PRECISION,
    last_error   TEXT,
    created_at   DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries (job_id, created_at);
"""

# The diarization checkpoint (JSON: the turns, the model and the settings they were made
# with), so a resumed job assigns speakers again without running the model again.
SCHEMA_V2 = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS speakers TEXT;
"""

# Job events shared by every node (jobs/pg_events.py): ids are allocated per channel from its
# `event_channels` row, which stays (with the newest id retention deleted, `kept_after`) until
# the job is deleted, so ids are never reused.
SCHEMA_V3 = """
CREATE TABLE IF NOT EXISTS event_channels (
    channel    TEXT PRIMARY KEY,
    last_id    BIGINT NOT NULL,
    kept_after BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    channel TEXT NOT NULL,
    id      BIGINT NOT NULL,
    event   TEXT NOT NULL,
    data    TEXT NOT NULL,
    at      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel, id)
);
CREATE INDEX IF NOT EXISTS events_by_at ON events (at);
"""

# Control across nodes and fair claims: a stop another node asked for, for the job's owner to
# carry out, and the job's priority (its `priority` option), which claims order by first.
SCHEMA_V4 = """
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS stop_request TEXT;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_by_priority ON jobs (status, priority DESC, created_at, id);
"""

# The node registry (jobs/nodes.py): each node's row, rewritten every heartbeat; `seen_at` is
# the database's clock. `info` is JSON (runners, running jobs, capacity, models on its disk).
SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS nodes (
    id         TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    seen_at    DOUBLE PRECISION NOT NULL,
    info       TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_by_seen ON nodes (seen_at);
"""

# The job's model as a column of its own, for claims: casting `settings` to jsonb on every
# candidate row cost a JSON parse each and failed outright on text jsonb refuses (a NUL or a
# lone surrogate in a prompt), which stopped every node's claims. Rows of before it get theirs
# by a pattern, which needs no jsonb either (`settings` is compact JSON, as json.dumps writes).
SCHEMA_V6 = r"""
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS model TEXT;
UPDATE jobs SET model = substring(settings from '"model": "([^"\\]*)"') WHERE model IS NULL;
"""

#: version -> the script that brings the schema from version-1 to it (never edited once shipped:
#: a change is a new version).
MIGRATIONS = {1: SCHEMA_V1, 2: SCHEMA_V2, 3: SCHEMA_V3, 4: SCHEMA_V4, 5: SCHEMA_V5, 6: SCHEMA_V6}
SCHEMA_VERSION = max(MIGRATIONS)

_JOB_COLUMNS = (
    "id, created_at, updated_at, status, phase, percent, message, processed, total, error_code,"
    " error, source_name, input_path, settings, checkpoint_settings, language, duration,"
    " alignment, lease_owner, lease_expires, attempts, claim, stop_request"
)
_FIND_REQUEST = (
    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE request_key = $1"
    " AND status NOT IN ('failed', 'canceled') ORDER BY created_at DESC, id DESC LIMIT 1"
)
_DELIVERY_COLUMNS = (
    "id, job_id, event, url, body, status, attempts, next_at, delivered_at, last_error, created_at"
)


def _job(row: asyncpg.Record) -> Job:
    """_JOB_COLUMNS in Job's field order (column `settings` is Job.options, `checkpoint_settings`
    Job.locked_options)."""
    values = list(row)
    values[13] = json.loads(values[13])
    values[14] = json.loads(values[14]) if values[14] else None
    return Job(*values)


def _delivery(row: asyncpg.Record) -> Delivery:
    return Delivery(*row)


def _count(status: str) -> int:
    """The row count of a command status ("UPDATE 1", "DELETE 0")."""
    return int(status.rsplit(" ", 1)[-1])


def redact_url(url: str) -> str:
    """The URL without its password, to name the server in messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PgJobStore:
    """A `JobStore` on PostgreSQL. Open with `async with PgJobStore.open(url) as store:`; the
    pool closes on exit. Several stores (nodes) may share one database."""

    def __init__(self, pool: asyncpg.Pool, url: str = "") -> None:
        self._pool = pool
        #: The server, for what needs a connection of its own (the event log's LISTEN).
        self.url = url
        self._policy: NoticePolicy | None = None
        self._added: Callable[[], None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        """The connection pool, for the other tables of the shared database (jobs/nodes.py, the
        event log of jobs/pg_events.py)."""
        return self._pool

    @classmethod
    @asynccontextmanager
    async def open(cls, url: str, max_connections: int = 10) -> AsyncIterator[PgJobStore]:
        """Connect and bring the schema up to date; StoreUnavailable (naming the server without
        its password) when it cannot be reached or refuses the schema."""
        try:
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=max_connections, timeout=CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
            raise StoreUnavailable(f"cannot open the job store at {redact_url(url)}: {reason}") from None
        try:
            try:
                await _migrate(pool)
            except asyncpg.PostgresError as exc:  # rights, a read-only server: an operator's fix
                raise StoreUnavailable(f"cannot prepare the job store at {redact_url(url)}: {exc}") from None
            yield cls(pool, url)
        finally:
            await pool.close()

    # --- jobs --------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        source_name: str,
        input_path: str,
        options: dict[str, Any],
        status: str = "queued",
        job_id: str | None = None,
        request_key: str | None = None,
    ) -> Job:
        async with self._pool.acquire() as db, db.transaction():
            return await _insert_job(
                db, job_id or uuid.uuid4().hex, status, source_name, input_path, options, request_key
            )

    async def create_for_request(
        self, request_key: str, *, source_name: str, input_path: str, options: dict[str, Any]
    ) -> tuple[Job, bool]:
        async with self._pool.acquire() as db, db.transaction():
            # One creator per key at a time on every node; the next one finds its job (a new
            # statement sees what the lock's last holder committed).
            await db.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", REQUEST_LOCK, request_key)
            row = await db.fetchrow(_FIND_REQUEST, request_key)
            if row is not None:
                return _job(row), False
            job = await _insert_job(
                db, uuid.uuid4().hex, JobStatus.QUEUED, source_name, input_path, options, request_key
            )
            return job, True

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._pool.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = $1", job_id)
        return _job(row) if row else None

    async def find_request(self, request_key: str) -> Job | None:
        row = await self._pool.fetchrow(_FIND_REQUEST, request_key)
        return _job(row) if row else None

    async def list_jobs(self, limit: int = 50, offset: int = 0) -> list[Job]:
        rows = await self._pool.fetch(
            f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id LIMIT $1 OFFSET $2",
            limit,
            offset,
        )
        return [_job(r) for r in rows]

    async def count_jobs(self) -> int:
        return int(await self._pool.fetchval("SELECT count(*) FROM jobs"))

    async def interrupted_jobs(self) -> list[Job]:
        rows = await self._pool.fetch(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'processing'")
        return [_job(r) for r in rows]

    async def claim_next(
        self,
        owner: str,
        lease_seconds: float,
        only: Collection[str] | None = None,
        exclude: Collection[str] = (),
        models: Collection[str] | None = None,
    ) -> Job | None:
        """The first claimable job (by priority, then age), skipping rows another claimer has
        locked right now (it takes those), under a new claim token."""
        if (only is not None and not only) or (models is not None and not models):
            return None
        claim = uuid.uuid4().hex
        async with self._pool.acquire() as db, db.transaction():
            row = await db.fetchrow(
                "WITH next AS (SELECT id FROM jobs WHERE (status = 'queued' OR (status = 'processing'"
                f" AND (lease_expires IS NULL OR lease_expires < {NOW})))"
                " AND ($1::text[] IS NULL OR id = ANY($1)) AND NOT (id = ANY($2::text[]))"
                " AND ($6::text[] IS NULL OR model = ANY($6))"
                " ORDER BY priority DESC, created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                f" UPDATE jobs SET status = 'processing', lease_owner = $3, lease_expires = {NOW} + $4,"
                f" claim = $5, attempts = attempts + 1, updated_at = {NOW}, error = NULL, error_code = NULL"
                f" FROM next WHERE jobs.id = next.id RETURNING {_prefixed('jobs')}",
                list(only) if only is not None else None,
                list(exclude),
                owner,
                float(lease_seconds),
                claim,
                list(models) if models is not None else None,
            )
            if row is None:
                return None
            await _transition(db, row["id"], "processing", "claimed", f"claimed by {owner}")
        return _job(row)

    async def renew_lease(self, job_id: str, claim: str, lease_seconds: float) -> Renewal:
        row = await self._pool.fetchrow(
            f"UPDATE jobs SET lease_expires = {NOW} + $3 WHERE id = $1 AND claim = $2"
            " AND status = 'processing' RETURNING stop_request",
            job_id,
            claim,
            float(lease_seconds),
        )
        return Renewal(False) if row is None else Renewal(True, row["stop_request"])

    async def request_stop(self, job_id: str, stop: str) -> Job | None:
        """The owner hears of it at the commit (NOTIFY on CONTROL_CHANNEL, payload the job id)."""
        if stop not in STOP_REQUESTS:
            raise StoreError(f"unknown stop request {stop!r}")
        async with self._pool.acquire() as db, db.transaction():
            row = await db.fetchrow(
                "UPDATE jobs SET stop_request = CASE WHEN stop_request = 'canceled' THEN stop_request"
                f" ELSE $2 END WHERE id = $1 AND status = 'processing' RETURNING {_JOB_COLUMNS}",
                job_id,
                str(stop),
            )
            if row is None:
                return None
            await db.execute("SELECT pg_notify($1, $2)", CONTROL_CHANNEL, job_id)
        return _job(row)

    @asynccontextmanager
    async def watch(
        self, on_stop: Callable[[str], None], on_queued: Callable[[], None]
    ) -> AsyncIterator[None]:
        """LISTEN on one connection of the pool, held while entered. If it is lost, the
        callers' polls and lease renewals still find the same changes, only later."""

        def stop_asked(_db: object, _pid: int, _channel: str, payload: str) -> None:
            on_stop(payload)

        def queued(_db: object, _pid: int, _channel: str, _payload: str) -> None:
            on_queued()

        db = await self._pool.acquire()
        try:
            await db.add_listener(CONTROL_CHANNEL, stop_asked)
            await db.add_listener(JOBS_CHANNEL, queued)
            yield
        finally:
            try:
                await db.remove_listener(CONTROL_CHANNEL, stop_asked)
                await db.remove_listener(JOBS_CHANNEL, queued)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                log.warning("could not stop listening for job changes", exc_info=True)
            await self._pool.release(db)

    async def update_progress(
        self,
        job_id: str,
        *,
        phase: str,
        percent: float,
        message: str,
        processed: int | None = None,
        total: int | None = None,
        claim: str | None = None,
    ) -> Job:
        async with self._pool.acquire() as db, db.transaction():
            held = await db.fetchrow("SELECT phase, claim FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if held is None or (claim is not None and held["claim"] != claim):
                raise StoreError(f"job {job_id} is not this run's any more")
            row = await db.fetchrow(
                "UPDATE jobs SET phase = $2, percent = greatest(percent, $3), message = $4,"
                f" processed = coalesce($5, processed), total = coalesce($6, total), updated_at = {NOW}"
                f" WHERE id = $1 RETURNING {_JOB_COLUMNS}",
                job_id,
                phase,
                float(percent),
                message,
                processed,
                total,
            )
            if held["phase"] != phase:
                await _transition(db, job_id, "processing", phase, message)
        return _job(row)

    async def set_status(
        self,
        job_id: str,
        status: JobStatus,
        message: str,
        *,
        expect: Collection[JobStatus],
        claim: str | None = None,
        lease_owner: str | None = None,
        error_code: str | None = None,
        error: str | None = None,
        phase: str | None = None,
        percent: float | None = None,
    ) -> Job | None:
        if status not in STATUSES:
            raise StoreError(f"unknown status {status!r}")
        async with self._pool.acquire() as db:
            async with db.transaction():
                if not await _cas(db, job_id, expect, claim, lease_owner):
                    return None
                row = await db.fetchrow(
                    "UPDATE jobs SET status = $2, message = $3, error_code = $4, error = $5,"
                    " phase = coalesce($6, phase), percent = greatest(percent, coalesce($7, 0)),"
                    " lease_owner = NULL, lease_expires = NULL, claim = NULL, stop_request = NULL,"
                    f" updated_at = {NOW} WHERE id = $1 RETURNING {_JOB_COLUMNS}",
                    job_id,
                    str(status),
                    message,
                    error_code,
                    error,
                    phase,
                    None if percent is None else float(percent),
                )
                job = _job(row)
                await _transition(db, job_id, status, job.phase, message)
                if status == JobStatus.QUEUED:
                    await _notify_queued(db)
                added = status in FINAL and await self._add_delivery(db, job)
        if added and self._added is not None:
            self._added()
        return job

    async def _add_delivery(self, db: asyncpg.Connection, job: Job) -> bool:
        """The policy's notice about the job as just written, into the outbox (same transaction)."""
        if self._policy is None:
            return False
        try:
            notice = self._policy(job)
        except Exception:  # the final state must still be written
            log.exception("job %s: could not build its webhook notice; none sent", job.id)
            return False
        if notice is None:
            return False
        await db.execute(
            "INSERT INTO deliveries (id, job_id, event, url, body, status, next_at, created_at)"
            f" VALUES ($1, $2, $3, $4, $5, 'pending', {NOW}, {NOW})",
            uuid.uuid4().hex,
            job.id,
            notice.event,
            notice.url,
            notice.body,
        )
        return True

    async def requeue(self, job_id: str, options: dict[str, Any], *, restart: bool) -> Job | None:
        async with self._pool.acquire() as db, db.transaction():
            if not await _cas(db, job_id, RESUMABLE, None, None):
                return None
            if restart:
                await db.execute("DELETE FROM segments WHERE job_id = $1", job_id)
                await db.execute(
                    "UPDATE jobs SET checkpoint_settings = NULL, speech = NULL, speakers = NULL,"
                    " language = NULL, alignment = NULL, result = NULL, percent = 0, phase = 'queued',"
                    " processed = 0, total = 0, duration = NULL WHERE id = $1",
                    job_id,
                )
            row = await db.fetchrow(
                "UPDATE jobs SET status = 'queued', message = 'queued', settings = $2, error = NULL,"
                f" error_code = NULL, attempts = 0, priority = $3, model = $4, updated_at = {NOW}"
                f" WHERE id = $1 RETURNING {_JOB_COLUMNS}",
                job_id,
                json.dumps(options),
                job_priority(options),
                job_model(options),
            )
            job = _job(row)
            await _transition(db, job_id, JobStatus.QUEUED, job.phase, "queued")
            await _notify_queued(db)
        return job

    async def delete_job(self, job_id: str) -> bool:
        """Segments and transitions go with the job (ON DELETE CASCADE); deliveries stay."""
        status = await self._pool.execute("DELETE FROM jobs WHERE id = $1 AND status != 'processing'", job_id)
        return _count(status) == 1

    async def transitions(self, job_id: str) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT at, status, phase, message FROM transitions WHERE job_id = $1 ORDER BY id", job_id
        )
        return [dict(r) for r in rows]

    # --- checkpoint --------------------------------------------------------------------

    async def save_segments(
        self,
        job_id: str,
        spans: Iterable[tuple[float, float]],
        locked_options: dict[str, Any],
        duration: float,
        speech: Sequence[tuple[float, float]] = (),
        *,
        claim: str | None = None,
    ) -> int:
        rows = [(job_id, i, float(s), float(e)) for i, (s, e) in enumerate(spans)]
        regions = json.dumps([[s, e] for s, e in speech])
        async with self._pool.acquire() as db, db.transaction():
            await _check_claim(db, job_id, claim)
            await db.execute("DELETE FROM segments WHERE job_id = $1", job_id)
            await db.executemany(
                'INSERT INTO segments (job_id, idx, start, "end") VALUES ($1, $2, $3, $4)', rows
            )
            await db.execute(
                "UPDATE jobs SET checkpoint_settings = $2, duration = $3, total = $4, processed = 0,"
                f" speech = $5, updated_at = {NOW} WHERE id = $1",
                job_id,
                json.dumps(locked_options),
                float(duration),
                len(rows),
                regions,
            )
        return len(rows)

    async def speech(self, job_id: str) -> list[tuple[float, float]]:
        text = await self._pool.fetchval("SELECT speech FROM jobs WHERE id = $1", job_id)
        if not text:
            return []
        return [(float(s), float(e)) for s, e in json.loads(text)]

    async def segments(self, job_id: str) -> list[Segment]:
        rows = await self._pool.fetch(
            'SELECT idx, start, "end", text, language, transcribe_count, crashes FROM segments'
            " WHERE job_id = $1 ORDER BY idx",
            job_id,
        )
        return [Segment(*r) for r in rows]

    async def save_transcript(self, job_id: str, index: int, text: str, language: str) -> bool:
        """The job's row is locked first, so concurrent checkpoints of two segments count each
        other (each statement's snapshot then sees the other's committed segment)."""
        async with self._pool.acquire() as db, db.transaction():
            await db.execute("SELECT 1 FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            status = await db.execute(
                f"UPDATE segments SET text = $3, language = $4, transcribed_at = {NOW},"
                " transcribe_count = transcribe_count + 1 WHERE job_id = $1 AND idx = $2"
                " AND text IS NULL",
                job_id,
                index,
                text,
                language,
            )
            if _count(status) != 1:
                return False
            await db.execute(
                "UPDATE jobs SET processed = (SELECT count(*) FROM segments WHERE job_id = $1"
                f" AND text IS NOT NULL), language = coalesce(language, $2), updated_at = {NOW}"
                " WHERE id = $1",
                job_id,
                language,
            )
        return True

    async def record_crash(self, job_id: str, indexes: Sequence[int]) -> int:
        if not indexes:
            return 0
        async with self._pool.acquire() as db, db.transaction():
            worst = await db.fetchval(
                "WITH hit AS (UPDATE segments SET crashes = crashes + 1 WHERE job_id = $1"
                " AND idx = ANY($2::int[]) RETURNING crashes) SELECT max(crashes) FROM hit",
                job_id,
                list(indexes),
            )
        return int(worst or 0)

    async def save_result(
        self,
        job_id: str,
        segments: list[AlignedSegment],
        alignment: str,
        language: str | None,
        *,
        claim: str | None = None,
    ) -> None:
        # Megabytes for hours of speech: encoded in a thread, a segment at a time.
        text = await asyncio.to_thread(bigjson.dumps, segments, 1)
        async with self._pool.acquire() as db, db.transaction():
            await _check_claim(db, job_id, claim)
            await db.execute(
                "UPDATE jobs SET result = $2, alignment = $3, language = coalesce($4, language),"
                f" updated_at = {NOW} WHERE id = $1",
                job_id,
                text,
                alignment,
                language,
            )

    async def result(self, job_id: str) -> list[AlignedSegment] | None:
        text = await self._pool.fetchval("SELECT result FROM jobs WHERE id = $1", job_id)
        if not text:
            return None
        segments: list[AlignedSegment] = await asyncio.to_thread(bigjson.loads, text, 1)
        return segments

    async def save_speakers(self, job_id: str, speakers: dict[str, Any]) -> None:
        await self._pool.execute(
            f"UPDATE jobs SET speakers = $2, updated_at = {NOW} WHERE id = $1", job_id, json.dumps(speakers)
        )

    async def speakers(self, job_id: str) -> dict[str, Any] | None:
        text = await self._pool.fetchval("SELECT speakers FROM jobs WHERE id = $1", job_id)
        if not text:
            return None
        data: dict[str, Any] = json.loads(text)
        return data

    async def save_edited_cues(
        self, job_id: str, cues: list[dict[str, Any]] | None, expected_version: int | None = None
    ) -> int | None:
        version = await self._pool.fetchval(
            "UPDATE jobs SET edited_cues = $2, edits_version = edits_version + 1,"
            f" updated_at = {NOW} WHERE id = $1 AND ($3::int IS NULL OR edits_version = $3)"
            " RETURNING edits_version",
            job_id,
            json.dumps(cues) if cues is not None else None,
            expected_version,
        )
        return int(version) if version is not None else None

    async def edited_cues(self, job_id: str) -> list[dict[str, Any]] | None:
        text = await self._pool.fetchval("SELECT edited_cues FROM jobs WHERE id = $1", job_id)
        cues: list[dict[str, Any]] | None = json.loads(text) if text else None
        return cues

    async def edits_version(self, job_id: str) -> int:
        version = await self._pool.fetchval("SELECT edits_version FROM jobs WHERE id = $1", job_id)
        return int(version or 0)

    # --- outbox --------------------------------------------------------------------------

    def use_outbox(self, policy: NoticePolicy | None, added: Callable[[], None] | None = None) -> None:
        self._policy, self._added = policy, added

    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[Delivery]:
        async with self._pool.acquire() as db, db.transaction():
            rows = await db.fetch(
                f"UPDATE deliveries SET attempts = attempts + 1, next_at = {NOW} + $1 WHERE id IN"
                f" (SELECT id FROM deliveries WHERE status = 'pending' AND next_at <= {NOW}"
                "  ORDER BY next_at, created_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_DELIVERY_COLUMNS}",
                float(lease_seconds),
                limit,
            )
        return sorted((_delivery(r) for r in rows), key=lambda d: d.created_at)

    async def record_attempt(
        self,
        delivery_id: str,
        attempt: int,
        status: DeliveryStatus,
        *,
        error: str | None = None,
        next_at: float | None = None,
    ) -> bool:
        if status is DeliveryStatus.PENDING and next_at is None:
            raise StoreError("a delivery tried again needs its next_at")
        done = await self._pool.execute(
            "UPDATE deliveries SET status = $3, last_error = $4, next_at = $5,"
            f" delivered_at = CASE WHEN $3 = 'delivered' THEN {NOW} END"
            " WHERE id = $1 AND attempts = $2 AND status = 'pending'",
            delivery_id,
            attempt,
            str(status),
            error,
            next_at if status is DeliveryStatus.PENDING else None,
        )
        return _count(done) == 1

    async def next_delivery_at(self) -> float | None:
        due = await self._pool.fetchval("SELECT min(next_at) FROM deliveries WHERE status = 'pending'")
        return float(due) if due is not None else None

    async def deliveries(self, job_id: str | None = None) -> list[Delivery]:
        rows = await self._pool.fetch(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE $1::text IS NULL OR job_id = $1"
            " ORDER BY created_at, id",
            job_id,
        )
        return [_delivery(r) for r in rows]


def _prefixed(table: str) -> str:
    return ", ".join(f"{table}.{c.strip()}" for c in _JOB_COLUMNS.split(","))


async def _check_claim(db: asyncpg.Connection, job_id: str, claim: str | None) -> None:
    """Lock the job's row; StoreError unless it is still `claim`'s (None: no check): a run that
    lost its job writes nothing more."""
    row = await db.fetchrow("SELECT claim FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    if claim is not None and (row is None or row["claim"] != claim):
        raise StoreError(f"job {job_id} is not this run's any more")


async def _insert_job(
    db: asyncpg.Connection,
    job_id: str,
    status: str,
    source_name: str,
    input_path: str,
    options: dict[str, Any],
    request_key: str | None,
) -> Job:
    """Add a job with its first transition (and wake idle nodes when it is queued)."""
    message = "queued" if status == "queued" else "created"
    try:
        row = await db.fetchrow(
            "INSERT INTO jobs (id, created_at, updated_at, status, message, source_name,"
            " input_path, settings, request_key, priority, model)"
            f" VALUES ($1, {NOW}, {NOW}, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {_JOB_COLUMNS}",
            job_id,
            status,
            message,
            source_name,
            input_path,
            json.dumps(options),
            request_key,
            job_priority(options),
            job_model(options),
        )
    except asyncpg.UniqueViolationError:
        raise StoreError(f"a job {job_id} exists already") from None
    await _transition(db, job_id, status, "queued", message)
    if status == JobStatus.QUEUED:
        await _notify_queued(db)
    return _job(row)


async def _migrate(pool: asyncpg.Pool) -> None:
    """Bring the schema to SCHEMA_VERSION, one version per row of `schema_versions`, under an
    advisory lock: nodes starting together wait for the first, then find nothing to do."""
    async with pool.acquire() as db, db.transaction():
        await db.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await db.execute(
            "CREATE TABLE IF NOT EXISTS schema_versions (version INTEGER PRIMARY KEY,"
            f" applied_at DOUBLE PRECISION NOT NULL DEFAULT {NOW})"
        )
        version = int(await db.fetchval("SELECT coalesce(max(version), 0) FROM schema_versions"))
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the database has schema version {version}, newer than this vsrt ({SCHEMA_VERSION})"
            )
        for v in sorted(v for v in MIGRATIONS if v > version):
            await db.execute(MIGRATIONS[v])
            await db.execute("INSERT INTO schema_versions (version) VALUES ($1)", v)
            log.info("job store schema migrated to version %d", v)


async def _cas(
    db: asyncpg.Connection,
    job_id: str,
    expect: Collection[str],
    claim: str | None,
    lease_owner: str | None,
) -> bool:
    """Whether the job is in one of the `expect` statuses (and holds `claim`/`lease_owner` when
    given); its row stays locked until the transaction ends, so nobody changes it before we do."""
    row = await db.fetchrow("SELECT status, claim, lease_owner FROM jobs WHERE id = $1 FOR UPDATE", job_id)
    return (
        row is not None
        and row["status"] in expect
        and (claim is None or row["claim"] == claim)
        and (lease_owner is None or row["lease_owner"] == lease_owner)
    )


async def _notify_queued(db: asyncpg.Connection) -> None:
    """Wake every node's scheduler when the transaction commits (NOTIFY is transactional)."""
    await db.execute("SELECT pg_notify($1, '')", JOBS_CHANNEL)


async def _transition(db: asyncpg.Connection, job_id: str, status: str, phase: str, message: str) -> None:
    await db.execute(
        f"INSERT INTO transitions (job_id, at, status, phase, message) VALUES ($1, {NOW}, $2, $3, $4)",
        job_id,
        str(status),
        phase,
        message,
    )
