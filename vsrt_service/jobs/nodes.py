"""The node registry: which `vsrt serve` processes share the job store, and what each one has.

Every node writes its row (runners, running jobs, capacity, the models on its own disk) each
heartbeat; a node unseen for `gone_after` seconds is listed no more (its job leases have run out
by then too, so others take its jobs over), and a clean shutdown deletes its row at once. On
PostgreSQL the rows are the `nodes` table (SCHEMA_V5 in pg_store.py), timed by the database's
clock so nodes whose clocks disagree still agree on who is gone; with SQLite there is one node
(the data directory's lock sees to it), kept in memory, behind the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # asyncpg loads only where PostgreSQL is used (service.open_job_store)
    import asyncpg

log = logging.getLogger(__name__)

#: What a node tells about each of its runners: no pids, errors (server paths) or versions.
RUNNER_KEYS = ("name", "role", "device", "state", "warm", "busy")
#: Rows unseen this long are deleted by the next heartbeat of any node (a crashed node's).
FORGET_AFTER = 24 * 3600.0
#: pg_store.NOW (not imported from there, so the service imports asyncpg only when used).
_NOW = "extract(epoch from now())::float8"


@dataclass(frozen=True)
class Node:
    """One node's row: who it is, when it started and was last seen, and its `info`
    (`runners`, `running_jobs`, `capacity`, `models`: [{type, id, status}])."""

    id: str
    host: str
    pid: int
    started_at: float
    seen_at: float
    info: dict[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "started_at": self.started_at,
            "seen_at": self.seen_at,
            "runners": self.info.get("runners", []),
            "running_jobs": self.info.get("running_jobs", []),
            "capacity": self.info.get("capacity", 0),
            "models": self.info.get("models", []),
        }


class NodeRegistry(Protocol):
    """This node's row among every node's; `beat` writes it, `leave` removes it."""

    node_id: str
    gone_after: float
    #: This node's row as its last heartbeat wrote it (None before the first).
    me: Node | None

    async def beat(self, info: dict[str, Any]) -> Node:
        """Write this node's row now; returns it as stored."""
        ...

    async def nodes(self) -> list[Node]:
        """Every live node (seen within `gone_after`), sorted by id."""
        ...

    async def leave(self) -> None:
        """Remove this node's row (a clean shutdown)."""
        ...


class LocalNodes:
    """The registry of a node alone on its store (SQLite): just itself, in memory."""

    def __init__(self, node_id: str, gone_after: float) -> None:
        self.node_id = node_id
        self.gone_after = gone_after
        self._started = time.time()
        self.me: Node | None = None

    async def beat(self, info: dict[str, Any]) -> Node:
        self.me = Node(self.node_id, socket.gethostname(), os.getpid(), self._started, time.time(), info)
        return self.me

    async def nodes(self) -> list[Node]:
        return [self.me] if self.me is not None else []

    async def leave(self) -> None:
        self.me = None


class PgNodes:
    """The registry in the shared PostgreSQL database's `nodes` table."""

    def __init__(self, pool: asyncpg.Pool, node_id: str, gone_after: float) -> None:
        self._pool = pool
        self.node_id = node_id
        self.gone_after = gone_after
        self.me: Node | None = None

    async def beat(self, info: dict[str, Any]) -> Node:
        async with self._pool.acquire() as db, db.transaction():
            row = await db.fetchrow(
                "INSERT INTO nodes (id, host, pid, started_at, seen_at, info)"
                f" VALUES ($1, $2, $3, {_NOW}, {_NOW}, $4)"
                " ON CONFLICT (id) DO UPDATE SET seen_at = EXCLUDED.seen_at, info = EXCLUDED.info"
                " RETURNING id, host, pid, started_at, seen_at, info",
                self.node_id,
                socket.gethostname(),
                os.getpid(),
                json.dumps(info),
            )
            await db.execute(f"DELETE FROM nodes WHERE seen_at < {_NOW} - $1", FORGET_AFTER)
        self.me = _node(row)
        return self.me

    async def nodes(self) -> list[Node]:
        rows = await self._pool.fetch(
            f"SELECT id, host, pid, started_at, seen_at, info FROM nodes WHERE seen_at >= {_NOW} - $1"
            " ORDER BY id",
            float(self.gone_after),
        )
        return [_node(r) for r in rows]

    async def leave(self) -> None:
        self.me = None
        await self._pool.execute("DELETE FROM nodes WHERE id = $1", self.node_id)


def _node(row: Any) -> Node:
    info = json.loads(row["info"])
    return Node(row["id"], row["host"], row["pid"], row["started_at"], row["seen_at"], info)


@contextlib.asynccontextmanager
async def registered(
    registry: NodeRegistry, describe: Callable[[], dict[str, Any]], interval: float
) -> AsyncIterator[NodeRegistry]:
    """This node listed in `registry` while open: a row at once, a heartbeat every `interval`
    seconds, the row removed on exit. A failed heartbeat (the database away a moment) is
    logged and tried again next time: the node only looks gone if it stays failing."""
    await registry.beat(describe())

    async def beating() -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await registry.beat(describe())
            except Exception:
                log.warning("node %s: heartbeat failed; trying again", registry.node_id, exc_info=True)

    task = asyncio.create_task(beating(), name=f"node-{registry.node_id}-heartbeat")
    try:
        yield registry
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        try:
            await registry.leave()
        except Exception:  # the row goes by itself after gone_after; shutdown goes on
            log.warning("node %s: could not remove its row", registry.node_id, exc_info=True)
