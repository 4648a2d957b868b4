"""Server-sent events over aiohttp-sse: one response per subscriber to a broker channel.

Each event goes out with its channel id, so a reconnecting client's Last-Event-ID gets
exactly what it missed from the broker's buffer, or a fresh snapshot when that is gone.
Connections are counted per channel and per client address (429 past the limits).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from .broker import Broker, Event

Snapshot = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]


class TooManyStreams(Exception):
    pass


class Streams:
    """Open streams: limits per channel and per client address, and disconnect detection.

    aiohttp has no callback for a lost connection of a body-less GET, so one shared task
    checks every open stream's transport a few times a second (not a task per stream).
    """

    CHECK_EVERY = 0.2

    def __init__(self, per_channel: int, per_client: int) -> None:
        self.per_channel, self.per_client = per_channel, per_client
        self.channels: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()
        self._watched: dict[asyncio.Future[None], web.Request] = {}
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def hold(self, channel: str, request: web.Request) -> Iterator[asyncio.Future[None]]:
        """Count a stream against the limits; yields a future done when the client leaves."""
        client = request.remote or "?"
        if self.channels[channel] >= self.per_channel:
            raise TooManyStreams(f"too many streams open for {channel}")
        if self.clients[client] >= self.per_client:
            raise TooManyStreams("too many streams open from this address")
        self.channels[channel] += 1
        self.clients[client] += 1
        gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._watched[gone] = request
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.create_task(self._watch(), name="sse-disconnects")
        try:
            yield gone
        finally:
            self._watched.pop(gone, None)
            gone.cancel()
            for counter, key in ((self.channels, channel), (self.clients, client)):
                counter[key] -= 1
                if counter[key] <= 0:
                    del counter[key]

    async def _watch(self) -> None:
        while self._watched:
            await asyncio.sleep(self.CHECK_EVERY)
            for gone, request in list(self._watched.items()):
                transport = request.transport
                if (transport is None or transport.is_closing()) and not gone.done():
                    gone.set_result(None)

    def open_streams(self) -> int:
        return sum(self.channels.values())

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


def last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


async def send(resp: EventSourceResponse, event: str, event_id: int, data: dict[str, Any]) -> None:
    await resp.send(json.dumps(data, separators=(",", ":"), ensure_ascii=False), id=str(event_id),
                    event=event)


async def stream(
    request: web.Request,
    broker: Broker,
    channel: str,
    snapshot: Snapshot,
    disconnected: asyncio.Future[None],
    *,
    heartbeat: float,
    heartbeat_event: str = "ping",
    until: Callable[[Event], bool] = lambda ev: False,
    accept: Callable[[Event], bool] = lambda ev: True,
) -> EventSourceResponse:
    """Serve one subscriber until it disconnects, falls behind (resync) or `until` says so."""
    sub, replayed = broker.subscribe(channel, last_event_id(request))
    nxt: asyncio.Future[Event | None] | None = None
    # Our own named heartbeat event replaces the library's comment pings; a client that
    # stalls a write for `send_timeout` is dropped (it reconnects with Last-Event-ID).
    resp = EventSourceResponse(ping_interval=3600, sep="\n", send_timeout=30.0)
    resp.headers["X-Accel-Buffering"] = "no"
    resp.headers["Cache-Control"] = "no-cache"
    try:
        await resp.prepare(request)
        last_id = broker.last_id(channel)
        if not replayed:
            name, data = await snapshot()
            await send(resp, name, last_id, data)
        while True:
            if nxt is None:
                nxt = asyncio.ensure_future(sub.get())
            waiters: set[asyncio.Future[Any]] = {nxt, disconnected}
            done, _ = await asyncio.wait(waiters, timeout=heartbeat, return_when=asyncio.FIRST_COMPLETED)
            if disconnected.done():
                break
            if nxt not in done:
                key = "timestamp" if heartbeat_event == "heartbeat" else "ts"
                await send(resp, heartbeat_event, last_id, {key: time.time()})
                continue
            ev, nxt = nxt.result(), None
            if ev is None:  # closed by the broker (shutdown, channel dropped)
                break
            last_id = max(last_id, ev.id)
            if ev.event != "resync" and not accept(ev):
                continue
            await send(resp, ev.event, ev.id, ev.data)
            if ev.event == "resync" or until(ev):
                break
    except (ConnectionResetError, TimeoutError):
        pass  # the client went away, or stalled a write past send_timeout
    finally:
        if nxt is not None:
            nxt.cancel()
        sub.close()
    return resp
