"""The SQLite JobStore: WAL through aiosqlite, the single source of truth for jobs on one host.

One writer connection serialised by a lock (`core.sqlite.Writer`, every write transaction
`BEGIN IMMEDIATE`, commits synchronous), and a separate reader connection so status reads never
queue behind a write. Status changes are compare-and-set inside the write transaction.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from vsrt_service.core import bigjson
from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.core.sqlite import Writer, connect
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
    job_priority,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 9

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    status        TEXT NOT NULL,
    phase         TEXT NOT NULL DEFAULT 'queued',
    percent       REAL NOT NULL DEFAULT 0,
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
    duration      REAL,
    alignment     TEXT,
    result        TEXT,
    edited_cues   TEXT,
    lease_owner   TEXT,
    lease_expires REAL,
    attempts      INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE TABLE IF NOT EXISTS segments (
    job_id     TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    start      REAL NOT NULL,
    end        REAL NOT NULL,
    text       TEXT,
    language   TEXT,
    transcribed_at REAL,
    transcribe_count INTEGER NOT NULL DEFAULT 0,
    crashes    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS transitions (
    id       INTEGER PRIMARY KEY,
    job_id   TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    at       REAL NOT NULL,
    status   TEXT NOT NULL,
    phase    TEXT NOT NULL,
    message  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions (job_id, id);
"""

# Version 2 added the `models` table; it belongs to the model state store now
# (`vsrt_service.models.state_store`), which creates it where it is missing.
SCHEMA_V2 = ""

# Each claim of a job gets its own token: a lease, a renewal and a final state belong to one
# claim, so a run that lost its job can neither renew nor overwrite the next run's state.
SCHEMA_V3 = """
ALTER TABLE jobs ADD COLUMN claim TEXT;
"""

# The voice-activity regions at full resolution (JSON [[start, end], ...]), kept with the
# split: word and cue timing and live lines use where the speech really is.
SCHEMA_V4 = """
ALTER TABLE jobs ADD COLUMN speech TEXT;
"""

# The user's cues carry a version, raised by every save or revert: two editors of one job
# learn of each other when saving instead of overwriting each other.
SCHEMA_V5 = """
ALTER TABLE jobs ADD COLUMN edits_version INTEGER NOT NULL DEFAULT 0;
"""

# A job made for a synchronous request (the OpenAI and whisper-asr-webservice APIs) carries a
# key of its audio bytes and settings: a retried identical request finds it instead of
# transcribing the same audio again.
SCHEMA_V6 = """
ALTER TABLE jobs ADD COLUMN request_key TEXT;
CREATE INDEX IF NOT EXISTS jobs_by_request_key ON jobs (request_key, created_at);
"""

# The webhook outbox: a job's final state and its delivery row are written in one transaction.
# No foreign key to jobs: a job deleted later keeps its pending delivery.
SCHEMA_V7 = """
CREATE TABLE IF NOT EXISTS deliveries (
    id           TEXT PRIMARY KEY,
    job_id       TEXT NOT NULL,
    event        TEXT NOT NULL,
    url          TEXT NOT NULL,
    body         BLOB NOT NULL,
    status       TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      REAL,
    delivered_at REAL,
    last_error   TEXT,
    created_at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (status, next_at);
CREATE INDEX IF NOT EXISTS deliveries_by_job ON deliveries (job_id, created_at);
"""

# The diarize phase's checkpoint (JSON {"turns", "model", "options"}): a resume after it
# assigns speakers again without running the model again.
SCHEMA_V8 = """
ALTER TABLE jobs ADD COLUMN speakers TEXT;
"""

# Control across processes and fair claims: a stop another node asked for, for the job's owner
# to carry out, and the job's priority (its `priority` option), which claims order by first.
SCHEMA_V9 = """
ALTER TABLE jobs ADD COLUMN stop_request TEXT;
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
CREATE INDEX IF NOT EXISTS jobs_by_priority ON jobs (status, priority DESC, created_at, id);
"""

#: version -> the script that brings the schema from version-1 to it.
MIGRATIONS = {
    1: SCHEMA_V1,
    2: SCHEMA_V2,
    3: SCHEMA_V3,
    4: SCHEMA_V4,
    5: SCHEMA_V5,
    6: SCHEMA_V6,
    7: SCHEMA_V7,
    8: SCHEMA_V8,
    9: SCHEMA_V9,
}

_DELIVERY_COLUMNS = (
    "id, job_id, event, url, body, status, attempts, next_at, delivered_at, last_error, created_at"
)


def _delivery(row: Sequence[Any]) -> Delivery:
    values = list(row)
    values[4] = bytes(values[4])
    return Delivery(*values)


_JOB_COLUMNS = (
    "id, created_at, updated_at, status, phase, percent, message, processed, total, error_code,"
    " error, source_name, input_path, settings, checkpoint_settings, language, duration,"
    " alignment, lease_owner, lease_expires, attempts, claim, stop_request"
)


_FIND_REQUEST = (
    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE request_key = ? AND status NOT IN ('failed', 'canceled')"
    " ORDER BY created_at DESC LIMIT 1"
)


def _job(row: Sequence[Any]) -> Job:
    """_JOB_COLUMNS in Job's field order: column `settings` is Job.options, `checkpoint_settings`
    Job.locked_options (the columns keep their names: they are the stored contract)."""
    values = list(row)
    values[13] = json.loads(values[13])
    values[14] = json.loads(values[14]) if values[14] else None
    return Job(*values)


class SqliteJobStore:
    """A `JobStore`. Open with `async with SqliteJobStore.open(path) as store:`; both
    connections close on exit."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._w = Writer(writer)
        self._r = reader
        self._policy: NoticePolicy | None = None
        self._added: Callable[[], None] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[SqliteJobStore]:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        writer = await connect(path)
        try:
            await _migrate(writer)
            reader = await connect(path)
            try:
                yield cls(writer, reader)
            finally:
                await reader.close()
        finally:
            await writer.close()

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
        job_id = job_id or uuid.uuid4().hex
        async with self._w.transaction() as db:
            await _insert_job(db, job_id, status, source_name, input_path, options, request_key)
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def create_for_request(
        self, request_key: str, *, source_name: str, input_path: str, options: dict[str, Any]
    ) -> tuple[Job, bool]:
        job_id = uuid.uuid4().hex
        async with self._w.transaction() as db:  # the one writer: nobody creates in between
            async with db.execute(_FIND_REQUEST, (request_key,)) as cur:
                row = await cur.fetchone()
            if row is not None:
                return _job(row), False
            await _insert_job(db, job_id, JobStatus.QUEUED, source_name, input_path, options, request_key)
        job = await self.get_job(job_id)
        assert job is not None
        return job, True

    async def get_job(self, job_id: str) -> Job | None:
        async with self._r.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return _job(row) if row else None

    async def find_request(self, request_key: str) -> Job | None:
        async with self._r.execute(_FIND_REQUEST, (request_key,)) as cur:
            row = await cur.fetchone()
        return _job(row) if row else None

    async def list_jobs(self, limit: int = 50, offset: int = 0) -> list[Job]:
        async with self._r.execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
            (limit, offset),
        ) as cur:
            return [_job(row) for row in await cur.fetchall()]

    async def count_jobs(self) -> int:
        async with self._r.execute("SELECT count(*) FROM jobs") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def claim_next(
        self,
        owner: str,
        lease_seconds: float,
        only: Collection[str] | None = None,
        exclude: Collection[str] = (),
        models: Collection[str] | None = None,
    ) -> Job | None:
        """Take the first queued job (by priority, then age), or a processing one whose owner's
        lease ran out, under a new claim token (`Job.claim`). `exclude`: jobs the caller still
        runs itself; `models`: the models this node can run."""
        now = time.time()
        if (only is not None and not only) or (models is not None and not models):
            return None
        among = f" AND id IN ({','.join('?' * len(only))})" if only else ""
        besides = f" AND id NOT IN ({','.join('?' * len(exclude))})" if exclude else ""
        runnable = (
            f" AND json_extract(settings, '$.model') IN ({','.join('?' * len(models))})" if models else ""
        )
        claim = uuid.uuid4().hex
        async with self._w.transaction() as db:
            async with db.execute(
                "SELECT id FROM jobs WHERE (status = 'queued'"
                " OR (status = 'processing' AND (lease_expires IS NULL OR lease_expires < ?)))"
                f"{among}{besides}{runnable} ORDER BY priority DESC, created_at, id LIMIT 1",
                (now, *(only or ()), *exclude, *(models or ())),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE jobs SET status = 'processing', lease_owner = ?, lease_expires = ?,"
                " claim = ?, attempts = attempts + 1, updated_at = ?, error = NULL,"
                " error_code = NULL WHERE id = ?",
                (owner, now + lease_seconds, claim, now, row[0]),
            )
            await _transition(db, row[0], now, "processing", "claimed", f"claimed by {owner}")
        return await self.get_job(row[0])

    async def renew_lease(self, job_id: str, claim: str, lease_seconds: float) -> Renewal:
        """False when the claim is no longer the job's (the run must stop working on it)."""
        async with self._w.transaction() as db:
            async with db.execute(
                "UPDATE jobs SET lease_expires = ? WHERE id = ? AND claim = ? AND status = 'processing'"
                " RETURNING stop_request",
                (time.time() + lease_seconds, job_id, claim),
            ) as cur:
                row = await cur.fetchone()
        return Renewal(False) if row is None else Renewal(True, row[0])

    async def request_stop(self, job_id: str, stop: str) -> Job | None:
        if stop not in STOP_REQUESTS:
            raise StoreError(f"unknown stop request {stop!r}")
        async with self._w.transaction() as db:
            cur = await db.execute(
                "UPDATE jobs SET stop_request = CASE WHEN stop_request = 'canceled' THEN stop_request"
                " ELSE ? END WHERE id = ? AND status = 'processing'",
                (stop, job_id),
            )
            if cur.rowcount != 1:
                return None
        return await self.get_job(job_id)

    @asynccontextmanager
    async def watch(
        self, on_stop: Callable[[str], None], on_queued: Callable[[], None]
    ) -> AsyncIterator[None]:
        """Nothing to watch: this process owns the file, so it makes every change itself."""
        yield

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
        """Record progress; percent never goes down. With `claim`, only while the job is still
        that claim's (a run that lost its job changes nothing; StoreError tells it)."""
        now = time.time()
        async with self._w.transaction() as db:
            async with db.execute("SELECT phase, claim FROM jobs WHERE id = ?", (job_id,)) as cur:
                row = await cur.fetchone()
            if row is None or (claim is not None and row[1] != claim):
                raise StoreError(f"job {job_id} is not this run's any more")
            await db.execute(
                "UPDATE jobs SET phase = ?, percent = max(percent, ?), message = ?,"
                " processed = coalesce(?, processed), total = coalesce(?, total), updated_at = ?"
                " WHERE id = ?",
                (phase, percent, message, processed, total, now, job_id),
            )
            if row[0] != phase:
                await _transition(db, job_id, now, "processing", phase, message)
        job = await self.get_job(job_id)
        assert job is not None
        return job

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
        """Move a job to `status` and release its lease, only if its status is one of `expect`
        (and, when given, its claim is `claim` and its lease holder `lease_owner`): a
        compare-and-set. None when the job was not in such a state (or is gone)."""
        if status not in STATUSES:
            raise StoreError(f"unknown status {status!r}")
        now = time.time()
        async with self._w.transaction() as db:
            if not await _cas(db, job_id, expect, claim, lease_owner):
                return None
            await db.execute(
                "UPDATE jobs SET status = ?, message = ?, error_code = ?, error = ?,"
                " phase = coalesce(?, phase), percent = max(percent, coalesce(?, 0)),"
                " lease_owner = NULL, lease_expires = NULL, claim = NULL, stop_request = NULL,"
                " updated_at = ? WHERE id = ?",
                (status, message, error_code, error, phase, percent, now, job_id),
            )
            await _transition(db, job_id, now, status, await _phase(db, job_id), message)
            added = status in FINAL and await self._add_delivery(db, job_id, now)
        if added and self._added is not None:
            self._added()
        return await self.get_job(job_id)

    async def _add_delivery(self, db: aiosqlite.Connection, job_id: str, now: float) -> bool:
        """The policy's notice about the job as just written, into the outbox (same transaction)."""
        if self._policy is None:
            return False
        async with db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        assert row is not None
        try:
            notice = self._policy(_job(row))
        except Exception:  # the final state must still be written
            log.exception("job %s: could not build its webhook notice; none sent", job_id)
            return False
        if notice is None:
            return False
        await db.execute(
            "INSERT INTO deliveries (id, job_id, event, url, body, status, next_at, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (uuid.uuid4().hex, job_id, notice.event, notice.url, notice.body, now, now),
        )
        return True

    async def requeue(self, job_id: str, options: dict[str, Any], *, restart: bool) -> Job | None:
        """Queue a job that is not running, with these options; `restart` forgets every
        result first. One transaction: None (and nothing changed) if the job runs meanwhile."""
        now = time.time()
        async with self._w.transaction() as db:
            if not await _cas(db, job_id, RESUMABLE, None, None):
                return None
            if restart:
                await db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
                await db.execute(
                    "UPDATE jobs SET checkpoint_settings = NULL, speech = NULL, speakers = NULL,"
                    " language = NULL, alignment = NULL, result = NULL, percent = 0, phase = 'queued',"
                    " processed = 0, total = 0, duration = NULL WHERE id = ?",
                    (job_id,),
                )
            await db.execute(
                "UPDATE jobs SET status = 'queued', message = 'queued', settings = ?, error = NULL,"
                " error_code = NULL, attempts = 0, priority = ?, updated_at = ? WHERE id = ?",
                (json.dumps(options), job_priority(options), now, job_id),
            )
            await _transition(db, job_id, now, JobStatus.QUEUED, await _phase(db, job_id), "queued")
        return await self.get_job(job_id)

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job that is not running; False if it is gone or runs (stop it first)."""
        async with self._w.transaction() as db:
            cur = await db.execute("DELETE FROM jobs WHERE id = ? AND status != 'processing'", (job_id,))
            if cur.rowcount != 1:
                return False
            await db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            await db.execute("DELETE FROM transitions WHERE job_id = ?", (job_id,))
            return True

    async def transitions(self, job_id: str) -> list[dict[str, Any]]:
        async with self._r.execute(
            "SELECT at, status, phase, message FROM transitions WHERE job_id = ? ORDER BY id",
            (job_id,),
        ) as cur:
            rows = await cur.fetchall()
        return [{"at": r[0], "status": r[1], "phase": r[2], "message": r[3]} for r in rows]

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
        """Store the split (once) with the options it was made with; that locks them."""
        rows = [(job_id, i, s, e) for i, (s, e) in enumerate(spans)]
        regions = json.dumps([[s, e] for s, e in speech])
        async with self._w.transaction() as db:
            await _check_claim(db, job_id, claim)
            await db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            await db.executemany("INSERT INTO segments (job_id, idx, start, end) VALUES (?, ?, ?, ?)", rows)
            await db.execute(
                "UPDATE jobs SET checkpoint_settings = ?, duration = ?, total = ?, processed = 0,"
                " speech = ?, updated_at = ? WHERE id = ?",
                (json.dumps(locked_options), duration, len(rows), regions, time.time(), job_id),
            )
        return len(rows)

    async def speech(self, job_id: str) -> list[tuple[float, float]]:
        async with self._r.execute("SELECT speech FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        if row is None or not row[0]:
            return []
        return [(float(s), float(e)) for s, e in json.loads(row[0])]

    async def segments(self, job_id: str) -> list[Segment]:
        async with self._r.execute(
            "SELECT idx, start, end, text, language, transcribe_count, crashes FROM segments"
            " WHERE job_id = ? ORDER BY idx",
            (job_id,),
        ) as cur:
            return [Segment(*row) for row in await cur.fetchall()]

    async def save_transcript(self, job_id: str, index: int, text: str, language: str) -> bool:
        """Checkpoint one segment's text; False if it already had one (never overwritten)."""
        now = time.time()
        async with self._w.transaction() as db:
            cur = await db.execute(
                "UPDATE segments SET text = ?, language = ?, transcribed_at = ?,"
                " transcribe_count = transcribe_count + 1 WHERE job_id = ? AND idx = ?"
                " AND text IS NULL",
                (text, language, now, job_id, index),
            )
            if cur.rowcount != 1:
                return False
            await db.execute(
                "UPDATE jobs SET processed = (SELECT count(*) FROM segments WHERE job_id = ?"
                " AND text IS NOT NULL), language = coalesce(language, ?), updated_at = ?"
                " WHERE id = ?",
                (job_id, language, now, job_id),
            )
        return True

    async def record_crash(self, job_id: str, indexes: Sequence[int]) -> int:
        """Count a runner crash against the segments in flight; returns the worst count."""
        if not indexes:
            return 0
        async with self._w.transaction() as db:
            await db.executemany(
                "UPDATE segments SET crashes = crashes + 1 WHERE job_id = ? AND idx = ?",
                [(job_id, i) for i in indexes],
            )
            marks = ",".join("?" * len(indexes))
            async with db.execute(
                f"SELECT max(crashes) FROM segments WHERE job_id = ? AND idx IN ({marks})",
                (job_id, *indexes),
            ) as cur:
                row = await cur.fetchone()
        return int(row[0] or 0) if row else 0

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
        async with self._w.transaction() as db:
            await _check_claim(db, job_id, claim)
            await db.execute(
                "UPDATE jobs SET result = ?, alignment = ?, language = coalesce(?, language),"
                " updated_at = ? WHERE id = ?",
                (text, alignment, language, time.time(), job_id),
            )

    async def result(self, job_id: str) -> list[AlignedSegment] | None:
        async with self._r.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        if not row or not row[0]:
            return None
        segments: list[AlignedSegment] = await asyncio.to_thread(bigjson.loads, row[0], 1)
        return segments

    async def save_speakers(self, job_id: str, speakers: dict[str, Any]) -> None:
        text = json.dumps(speakers)  # turns: a few hundred bytes a minute of audio
        async with self._w.transaction() as db:
            await db.execute(
                "UPDATE jobs SET speakers = ?, updated_at = ? WHERE id = ?", (text, time.time(), job_id)
            )

    async def speakers(self, job_id: str) -> dict[str, Any] | None:
        async with self._r.execute("SELECT speakers FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        if not row or not row[0]:
            return None
        data: dict[str, Any] = json.loads(row[0])
        return data

    async def save_edited_cues(
        self, job_id: str, cues: list[dict[str, Any]] | None, expected_version: int | None = None
    ) -> int | None:
        text = json.dumps(cues) if cues is not None else None
        async with self._w.transaction() as db:
            async with db.execute(
                "UPDATE jobs SET edited_cues = ?, edits_version = edits_version + 1, updated_at = ?"
                " WHERE id = ? AND (? IS NULL OR edits_version = ?) RETURNING edits_version",
                (text, time.time(), job_id, expected_version, expected_version),
            ) as cur:
                row = await cur.fetchone()
        return int(row[0]) if row else None

    async def edited_cues(self, job_id: str) -> list[dict[str, Any]] | None:
        async with self._r.execute("SELECT edited_cues FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row and row[0] else None

    async def edits_version(self, job_id: str) -> int:
        async with self._r.execute("SELECT edits_version FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def interrupted_jobs(self) -> list[Job]:
        async with self._r.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'processing'") as cur:
            return [_job(r) for r in await cur.fetchall()]

    # --- outbox --------------------------------------------------------------------------

    def use_outbox(self, policy: NoticePolicy | None, added: Callable[[], None] | None = None) -> None:
        self._policy, self._added = policy, added

    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[Delivery]:
        now = time.time()
        async with self._w.transaction() as db:
            async with db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_at = ? WHERE id IN"
                " (SELECT id FROM deliveries WHERE status = 'pending' AND next_at <= ?"
                "  ORDER BY next_at, created_at LIMIT ?)"
                f" RETURNING {_DELIVERY_COLUMNS}",
                (now + lease_seconds, now, limit),
            ) as cur:
                rows = await cur.fetchall()
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
        now = time.time()
        if status is DeliveryStatus.PENDING and next_at is None:
            raise StoreError("a delivery tried again needs its next_at")
        async with self._w.transaction() as db:
            cur = await db.execute(
                "UPDATE deliveries SET status = ?, last_error = ?, next_at = ?, delivered_at = ?"
                " WHERE id = ? AND attempts = ? AND status = 'pending'",
                (
                    status,
                    error,
                    next_at if status is DeliveryStatus.PENDING else None,
                    now if status is DeliveryStatus.DELIVERED else None,
                    delivery_id,
                    attempt,
                ),
            )
            return cur.rowcount == 1

    async def next_delivery_at(self) -> float | None:
        async with self._r.execute("SELECT min(next_at) FROM deliveries WHERE status = 'pending'") as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def deliveries(self, job_id: str | None = None) -> list[Delivery]:
        where = " WHERE job_id = ?" if job_id is not None else ""
        async with self._r.execute(
            f"SELECT {_DELIVERY_COLUMNS} FROM deliveries{where} ORDER BY created_at, id",
            (job_id,) if job_id is not None else (),
        ) as cur:
            return [_delivery(r) for r in await cur.fetchall()]


async def _migrate(db: aiosqlite.Connection) -> None:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    version = int(row[0]) if row else 0
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than this vsrt ({SCHEMA_VERSION})"
        )
    # One script, one transaction; IF NOT EXISTS makes a concurrent first start harmless.
    steps = " ".join(MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1))
    await db.executescript(f"BEGIN IMMEDIATE; {steps} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")


async def _cas(
    db: aiosqlite.Connection,
    job_id: str,
    expect: Collection[str],
    claim: str | None,
    lease_owner: str | None,
) -> bool:
    """Whether the job is in one of the `expect` statuses (and holds `claim`/`lease_owner`
    when given); inside a `BEGIN IMMEDIATE` transaction, so nobody changes it before we do."""
    async with db.execute("SELECT status, claim, lease_owner FROM jobs WHERE id = ?", (job_id,)) as cur:
        row = await cur.fetchone()
    return (
        row is not None
        and row[0] in expect
        and (claim is None or row[1] == claim)
        and (lease_owner is None or row[2] == lease_owner)
    )


async def _phase(db: aiosqlite.Connection, job_id: str) -> str:
    async with db.execute("SELECT phase FROM jobs WHERE id = ?", (job_id,)) as cur:
        row = await cur.fetchone()
    return str(row[0]) if row else ""


async def _check_claim(db: aiosqlite.Connection, job_id: str, claim: str | None) -> None:
    """StoreError unless the job is still `claim`'s (None: no check): a run that lost its job
    writes nothing more."""
    if claim is None:
        return
    async with db.execute("SELECT claim FROM jobs WHERE id = ?", (job_id,)) as cur:
        row = await cur.fetchone()
    if row is None or row[0] != claim:
        raise StoreError(f"job {job_id} is not this run's any more")


async def _insert_job(
    db: aiosqlite.Connection,
    job_id: str,
    status: str,
    source_name: str,
    input_path: str,
    options: dict[str, Any],
    request_key: str | None,
) -> None:
    """Add a job with its first transition, inside the caller's write transaction."""
    now = time.time()
    message = "queued" if status == "queued" else "created"
    await db.execute(
        "INSERT INTO jobs (id, created_at, updated_at, status, message, source_name,"
        " input_path, settings, request_key, priority) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job_id,
            now,
            now,
            status,
            message,
            source_name,
            input_path,
            json.dumps(options),
            request_key,
            job_priority(options),
        ),
    )
    await _transition(db, job_id, now, status, "queued", message)


async def _transition(
    db: aiosqlite.Connection, job_id: str, at: float, status: str, phase: str, message: str
) -> None:
    await db.execute(
        "INSERT INTO transitions (job_id, at, status, phase, message) VALUES (?, ?, ?, ?, ?)",
        (job_id, at, status, phase, message),
    )
