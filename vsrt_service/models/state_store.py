"""Per-host model state (status, hub endpoint and commit, manifest, last error) in SQLite.

Model files live on this host's disk, so their state is the host's, not a job's: it has its
own small store, apart from the job store, on the same database file with its own connection.
The `models` table is created where it is missing; databases that have it keep their rows.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from vsrt_service.core.integrity import ManifestFile
from vsrt_service.core.sqlite import Writer, connect

MODELS_TABLE = """
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
)
"""

_COLUMNS = ("type", "id", "status", "endpoint", "commit_sha", "manifest", "error", "updated_at")


class ModelStateStore:
    """Open with `async with ModelStateStore.open(path) as state:`; the connection closes on exit."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._w = Writer(db)

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[ModelStateStore]:
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        db = await connect(path)
        try:
            store = cls(db)
            async with store._w.transaction() as tx:
                await tx.execute(MODELS_TABLE)
            yield store
        finally:
            await db.close()

    async def rows(self) -> list[dict[str, Any]]:
        """Every recorded model, its manifest decoded. Read in a transaction of its own, so it
        never sees a save half done on this connection."""
        async with self._w.transaction() as db:
            async with db.execute(f"SELECT {', '.join(_COLUMNS)} FROM models") as cur:
                rows = await cur.fetchall()
        out = [dict(zip(_COLUMNS, row, strict=True)) for row in rows]
        for row in out:
            row["manifest"] = json.loads(row["manifest"]) if row["manifest"] else None
        return out

    async def save(
        self,
        kind: str,
        model_id: str,
        status: str,
        *,
        error: str | None = None,
        endpoint: str | None = None,
        commit_sha: str | None = None,
        manifest: list[ManifestFile] | None = None,
        keep_manifest: bool = True,
    ) -> None:
        """Record a model's state; endpoint and commit stay unless new ones are given, and the
        manifest stays unless a new one (or, with `keep_manifest=False`, none) is given."""
        async with self._w.transaction() as db:
            await db.execute(
                "INSERT INTO models (type, id, status, endpoint, commit_sha, manifest, error, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (type, id) DO UPDATE SET"
                " status = excluded.status, error = excluded.error, updated_at = excluded.updated_at,"
                " endpoint = coalesce(excluded.endpoint, endpoint),"
                " commit_sha = coalesce(excluded.commit_sha, commit_sha),"
                " manifest = CASE WHEN ? AND excluded.manifest IS NULL THEN manifest"
                " ELSE excluded.manifest END",
                (
                    kind,
                    model_id,
                    status,
                    endpoint,
                    commit_sha,
                    json.dumps(manifest) if manifest is not None else None,
                    error,
                    time.time(),
                    keep_manifest,
                ),
            )
