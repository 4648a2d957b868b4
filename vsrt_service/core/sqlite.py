"""SQLite plumbing the stores share: how a connection is set up, and the one-writer transaction.

Every store keeps one writer connection whose transactions a lock serialises, each one
`BEGIN IMMEDIATE` (a deferred read-then-write transaction fails with SQLITE_BUSY whatever the
timeout). Commits are synchronous (`synchronous=FULL`): a write the API acknowledged survives a
power loss. A service dependency only; the runner never imports this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from vsrt_service.core.aio import settle


async def connect(path: Path) -> aiosqlite.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, synchronous commits."""
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = FULL")
        await db.execute("PRAGMA busy_timeout = 10000")
        await db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await db.close()
        raise
    return db


class Writer:
    """A store's write connection; `async with writer.transaction() as db:` is one transaction."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction. Whatever interrupts it, the connection leaves it: a cancelled
        `BEGIN` still runs in aiosqlite's thread, and the rollback queued behind it ends it."""
        async with self._lock:
            committed = False
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                await settle(self.db.commit())
                committed = True
            finally:
                if not committed:
                    await settle(self.db.rollback())  # a no-op outside a transaction
