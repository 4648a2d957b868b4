"""The job store: SQLite (WAL) through aiosqlite, the single source of truth for jobs.

One writer connection serialised by a lock, every write transaction `BEGIN IMMEDIATE` (a
deferred read-then-write transaction fails with SQLITE_BUSY whatever the timeout), and a
separate reader connection so status reads never queue behind a write.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from . import bigjson
from .protocol import AlignedSegment

SCHEMA_VERSION = 2

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

SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS models (
    type       TEXT NOT NULL,
    id         TEXT NOT NULL,
    status     TEXT NOT NULL,
    endpoint   TEXT,
    commit_sha TEXT,
    manifest   TEXT,
    error      TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (type, id)
);
"""

#: version -> the script that brings the schema from version-1 to it.
MIGRATIONS = {1: SCHEMA_V1, 2: SCHEMA_V2}

STATUSES = ("queued", "processing", "paused", "completed", "failed", "canceled")
FINAL = ("completed", "failed", "canceled")


class StoreError(Exception):
    pass


@dataclass(frozen=True)
class Job:
    id: str
    created_at: float
    updated_at: float
    status: str
    phase: str
    percent: float
    message: str
    processed: int
    total: int
    error_code: str | None
    error: str | None
    source_name: str
    input_path: str
    settings: dict[str, Any]
    checkpoint_settings: dict[str, Any] | None
    language: str | None
    duration: float | None
    alignment: str | None
    lease_owner: str | None
    lease_expires: float | None
    attempts: int

    def status_dict(self) -> dict[str, Any]:
        """The `GET /api/status` shape."""
        return {
            "job_id": self.id,
            "status": self.status,
            "phase": self.phase,
            "percent": round(self.percent, 2),
            "message": self.message,
            "processed": self.processed,
            "total": self.total,
            "error": {"code": self.error_code, "message": self.error} if self.error else None,
        }


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float
    text: str | None
    language: str | None
    transcribe_count: int
    crashes: int


_JOB_COLUMNS = (
    "id, created_at, updated_at, status, phase, percent, message, processed, total, error_code,"
    " error, source_name, input_path, settings, checkpoint_settings, language, duration,"
    " alignment, lease_owner, lease_expires, attempts"
)


def _job(row: Sequence[Any]) -> Job:
    values = list(row)
    values[13] = json.loads(values[13])
    values[14] = json.loads(values[14]) if values[14] else None
    return Job(*values)


class Store:
    """Open with `async with Store.open(path) as store:`; both connections close on exit."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._w = writer
        self._r = reader
        self._lock = asyncio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[Store]:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = await _connect(path)
        try:
            await _migrate(writer)
            reader = await _connect(path)
            try:
                yield cls(writer, reader)
            finally:
                await reader.close()
        finally:
            await writer.close()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            await self._w.execute("BEGIN IMMEDIATE")
            try:
                yield self._w
            except BaseException:
                await asyncio.shield(self._w.rollback())
                raise
            else:
                await asyncio.shield(self._w.commit())

    # --- jobs --------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        source_name: str,
        input_path: str,
        settings: dict[str, Any],
        status: str = "queued",
        job_id: str | None = None,
    ) -> Job:
        job_id = job_id or uuid.uuid4().hex
        now = time.time()
        message = "queued" if status == "queued" else "created"
        async with self._write() as db:
            await db.execute(
                "INSERT INTO jobs (id, created_at, updated_at, status, message, source_name,"
                " input_path, settings) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, now, now, status, message, source_name, input_path, json.dumps(settings)),
            )
            await _transition(db, job_id, now, status, "queued", message)
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def get_job(self, job_id: str) -> Job | None:
        async with self._r.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cur:
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
        self, owner: str, lease_seconds: float, only: Collection[str] | None = None
    ) -> Job | None:
        """Take the oldest queued job, or a processing one whose owner's lease ran out."""
        now = time.time()
        if only is not None and not only:
            return None
        among = f" AND id IN ({','.join('?' * len(only))})" if only else ""
        async with self._write() as db:
            async with db.execute(
                "SELECT id FROM jobs WHERE (status = 'queued'"
                " OR (status = 'processing' AND (lease_expires IS NULL OR lease_expires < ?)))"
                f"{among} ORDER BY created_at, id LIMIT 1",
                (now, *(only or ())),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE jobs SET status = 'processing', lease_owner = ?, lease_expires = ?,"
                " attempts = attempts + 1, updated_at = ?, error = NULL, error_code = NULL"
                " WHERE id = ?",
                (owner, now + lease_seconds, now, row[0]),
            )
            await _transition(db, row[0], now, "processing", "claimed", f"claimed by {owner}")
        return await self.get_job(row[0])

    async def renew_lease(self, job_id: str, owner: str, lease_seconds: float) -> bool:
        """False when someone else owns the job now (we must stop working on it)."""
        async with self._write() as db:
            cur = await db.execute(
                "UPDATE jobs SET lease_expires = ? WHERE id = ? AND lease_owner = ?"
                " AND status = 'processing'",
                (time.time() + lease_seconds, job_id, owner),
            )
            return cur.rowcount == 1

    async def update_progress(
        self,
        job_id: str,
        *,
        phase: str,
        percent: float,
        message: str,
        processed: int | None = None,
        total: int | None = None,
    ) -> Job:
        """Record progress; percent never goes down."""
        now = time.time()
        async with self._write() as db:
            async with db.execute("SELECT phase FROM jobs WHERE id = ?", (job_id,)) as cur:
                row = await cur.fetchone()
            await db.execute(
                "UPDATE jobs SET phase = ?, percent = max(percent, ?), message = ?,"
                " processed = coalesce(?, processed), total = coalesce(?, total), updated_at = ?"
                " WHERE id = ?",
                (phase, percent, message, processed, total, now, job_id),
            )
            if row is not None and row[0] != phase:
                await _transition(db, job_id, now, "processing", phase, message)
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def set_status(
        self,
        job_id: str,
        status: str,
        message: str,
        *,
        error_code: str | None = None,
        error: str | None = None,
        phase: str | None = None,
        percent: float | None = None,
        reset_attempts: bool = False,
    ) -> Job:
        """Move a job to a new status and release its lease."""
        if status not in STATUSES:
            raise StoreError(f"unknown status {status!r}")
        now = time.time()
        async with self._write() as db:
            await db.execute(
                "UPDATE jobs SET status = ?, message = ?, error_code = ?, error = ?,"
                " phase = coalesce(?, phase), percent = max(percent, coalesce(?, 0)),"
                " lease_owner = NULL, lease_expires = NULL, updated_at = ?,"
                " attempts = CASE WHEN ? THEN 0 ELSE attempts END WHERE id = ?",
                (status, message, error_code, error, phase, percent, now, reset_attempts, job_id),
            )
            async with db.execute("SELECT phase FROM jobs WHERE id = ?", (job_id,)) as cur:
                row = await cur.fetchone()
            if row is None:
                raise StoreError(f"no job {job_id}")
            await _transition(db, job_id, now, status, row[0], message)
        job = await self.get_job(job_id)
        assert job is not None
        return job

    async def update_settings(self, job_id: str, settings: dict[str, Any]) -> None:
        async with self._write() as db:
            await db.execute(
                "UPDATE jobs SET settings = ?, updated_at = ? WHERE id = ?",
                (json.dumps(settings), time.time(), job_id),
            )

    async def reset_job(self, job_id: str) -> None:
        """Forget every result so the job runs from scratch (settings may have changed)."""
        async with self._write() as db:
            await db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            await db.execute(
                "UPDATE jobs SET checkpoint_settings = NULL, language = NULL, alignment = NULL,"
                " result = NULL, percent = 0, phase = 'queued', processed = 0, total = 0,"
                " duration = NULL, attempts = 0, updated_at = ? WHERE id = ?",
                (time.time(), job_id),
            )

    async def delete_job(self, job_id: str) -> bool:
        async with self._write() as db:
            await db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            await db.execute("DELETE FROM transitions WHERE job_id = ?", (job_id,))
            cur = await db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return cur.rowcount == 1

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
        checkpoint_settings: dict[str, Any],
        duration: float,
    ) -> int:
        """Store the split (once) with the settings it was made with; that locks them."""
        rows = [(job_id, i, s, e) for i, (s, e) in enumerate(spans)]
        async with self._write() as db:
            await db.execute("DELETE FROM segments WHERE job_id = ?", (job_id,))
            await db.executemany(
                "INSERT INTO segments (job_id, idx, start, end) VALUES (?, ?, ?, ?)", rows
            )
            await db.execute(
                "UPDATE jobs SET checkpoint_settings = ?, duration = ?, total = ?, processed = 0,"
                " updated_at = ? WHERE id = ?",
                (json.dumps(checkpoint_settings), duration, len(rows), time.time(), job_id),
            )
        return len(rows)

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
        async with self._write() as db:
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
        async with self._write() as db:
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
        self, job_id: str, segments: list[AlignedSegment], alignment: str, language: str | None
    ) -> None:
        # Megabytes for hours of speech: encoded in a thread, a segment at a time.
        text = await asyncio.to_thread(bigjson.dumps, segments, 1)
        async with self._write() as db:
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

    async def save_edited_cues(self, job_id: str, cues: list[dict[str, Any]] | None) -> None:
        async with self._write() as db:
            await db.execute(
                "UPDATE jobs SET edited_cues = ?, updated_at = ? WHERE id = ?",
                (json.dumps(cues) if cues is not None else None, time.time(), job_id),
            )

    async def edited_cues(self, job_id: str) -> list[dict[str, Any]] | None:
        async with self._r.execute("SELECT edited_cues FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        return json.loads(row[0]) if row and row[0] else None

    # --- models ------------------------------------------------------------------------

    async def model_rows(self) -> list[dict[str, Any]]:
        async with self._r.execute(
            "SELECT type, id, status, endpoint, commit_sha, manifest, error, updated_at FROM models"
        ) as cur:
            rows = await cur.fetchall()
        keys = ("type", "id", "status", "endpoint", "commit_sha", "manifest", "error", "updated_at")
        out = [dict(zip(keys, row, strict=True)) for row in rows]
        for row in out:
            row["manifest"] = json.loads(row["manifest"]) if row["manifest"] else None
        return out

    async def save_model(
        self, kind: str, model_id: str, status: str, *, error: str | None = None,
        endpoint: str | None = None, commit_sha: str | None = None,
        manifest: list[dict[str, Any]] | None = None, keep_manifest: bool = True,
    ) -> None:
        """Record a model's state; its manifest stays unless a new one (or none) is given."""
        async with self._write() as db:
            await db.execute(
                "INSERT INTO models (type, id, status, endpoint, commit_sha, manifest, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (type, id) DO UPDATE SET"
                " status = excluded.status, error = excluded.error, updated_at = excluded.updated_at,"
                " endpoint = coalesce(excluded.endpoint, endpoint),"
                " commit_sha = coalesce(excluded.commit_sha, commit_sha),"
                " manifest = CASE WHEN ? AND excluded.manifest IS NULL THEN manifest"
                " ELSE excluded.manifest END",
                (kind, model_id, status, endpoint, commit_sha,
                 json.dumps(manifest) if manifest is not None else None, error, time.time(),
                 keep_manifest),
            )

    async def interrupted_jobs(self) -> list[str]:
        async with self._r.execute("SELECT id FROM jobs WHERE status = 'processing'") as cur:
            return [r[0] for r in await cur.fetchall()]


async def _connect(path: Path) -> aiosqlite.Connection:
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA busy_timeout = 10000")
        await db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await db.close()
        raise
    return db


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


async def _transition(
    db: aiosqlite.Connection, job_id: str, at: float, status: str, phase: str, message: str
) -> None:
    await db.execute(
        "INSERT INTO transitions (job_id, at, status, phase, message) VALUES (?, ?, ?, ?, ?)",
        (job_id, at, status, phase, message),
    )
