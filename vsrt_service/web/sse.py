"""Server-sent events over aiohttp-sse: one response per subscriber to a broker channel.

Each event goes out with its channel id, so a reconnecting client's Last-Event-ID gets
exactly what it missed from the broker's buffer (on PostgreSQL: the events table, whichever
node it reconnects to), or a fresh snapshot when that is gone.
Connections are counted per channel and per client address (429 past the limits); the
client address is `request.remote`, which the app sets from trusted proxies' X-Forwarded-For.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from vsrt_service.core.broker import Broker, Event, sse_frame
from vsrt_service.core.config import SseSettings
from vsrt_service.core.errors import TooManyRequests

Snapshot = Callable[[], Awaitable[tuple[str, dict[str, Any]]]]
#: Asked when a stream has been quiet for a heartbeat: the event that ends what it follows, if
#: that ended without one reaching this node (None: nothing to tell).
Ended = Callable[[], Awaitable[tuple[str, dict[str, Any]] | None]]


class Streams:
    """Open streams: limits per channel and per client address, and disconnect detection.

    A channel has `per_channel` streams at most unless `channel_limits` names it (the app-wide
    models channel, which every open tab follows, has a limit of its own).
    aiohttp has no callback for a lost connection of a body-less GET, so one shared task
    checks every open stream's transport a few times a second (not a task per stream).
    """

    CHECK_EVERY = 0.2

    def __init__(
        self, per_channel: int, per_client: int, channel_limits: Mapping[str, int] | None = None
    ) -> None:
        self.per_channel, self.per_client = per_channel, per_client
        self.channel_limits = dict(channel_limits or {})
        self.channels: Counter[str] = Counter()
        self.clients: Counter[str] = Counter()
        self._watched: dict[asyncio.Future[None], web.Request] = {}
        self._watcher: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def admit(self, channel: str, request: web.Request) -> Iterator[asyncio.Future[None]]:
        """Count a stream against the limits (TooManyRequests past them); yields a future
        done when the client leaves."""
        client = request.remote or "?"
        if self.channels[channel] >= self.channel_limits.get(channel, self.per_channel):
            raise TooManyRequests(f"too many streams open for {channel}", code="too_many_streams")
        if self.clients[client] >= self.per_client:
            raise TooManyRequests("too many streams open from this address", code="too_many_streams")
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
        """Stop the watcher. Its own cancellation ends here; the caller's is passed on."""
        watcher = self._watcher
        if watcher is None:
            return
        watcher.cancel()
        try:
            await watcher
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise


def last_event_id(request: web.Request) -> int | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("lastEventId")
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


async def serve(
    request: web.Request,
    streams: Streams,
    broker: Broker,
    channel: str,
    snapshot: Snapshot,
    *,
    settings: SseSettings,
    heartbeat_event: str = "ping",
    accept: Callable[[Event], bool] = lambda ev: True,
    ended: Ended | None = None,
    final: Callable[[Event], bool] = lambda ev: False,
) -> EventSourceResponse:
    """One subscriber of `channel`, admitted within the stream limits (429 past them)."""
    with streams.admit(channel, request) as gone:
        return await stream(
            request,
            broker,
            channel,
            snapshot,
            gone,
            settings=settings,
            heartbeat_event=heartbeat_event,
            accept=accept,
            ended=ended,
            final=final,
        )


async def stream(
    request: web.Request,
    broker: Broker,
    channel: str,
    snapshot: Snapshot,
    disconnected: asyncio.Future[None],
    *,
    settings: SseSettings,
    heartbeat_event: str = "ping",
    until: Callable[[Event], bool] = lambda ev: False,
    accept: Callable[[Event], bool] = lambda ev: True,
    ended: Ended | None = None,
    final: Callable[[Event], bool] = lambda ev: False,
) -> EventSourceResponse:
    """Serve one subscriber until it disconnects, falls behind (resync) or `until` says so.

    The stream opens with a `retry:` between `reconnect_seconds` and twice that (browsers
    wait that long before reconnecting). Each wake-up sends everything queued in one write,
    with frames encoded once per event for all subscribers; a client that stalls one write
    for SEND_TIMEOUT is dropped. Until an event that is `final` has been sent, a quiet stream
    asks `ended` whether what it follows ended unannounced (its node died between the commit and
    the event), and sends that once.
    """
    sub, replayed = await broker.open(channel, last_event_id(request))
    disconnected.add_done_callback(lambda _: sub.close())
    resp = EventSourceResponse(ping_interval=3600)  # our own named heartbeat event instead
    resp.headers["X-Accel-Buffering"] = "no"
    resp.headers["Cache-Control"] = "no-cache"
    try:
        await resp.prepare(request)
        # Spread the reconnects of many clients after a restart over a window, not one instant.
        retry_ms = round(settings.reconnect_seconds * random.uniform(1000, 2000))
        head = f"retry: {retry_ms}\n\n".encode()
        if not replayed:
            name, data = await snapshot()
            head += sse_frame(sub.opened_at, name, data)
        await _write(resp, head)
        told = ended is None
        while not disconnected.done():
            if not await sub.wait(settings.heartbeat_interval):
                if not told and ended is not None and (event := await ended()) is not None:
                    told = True
                    await _write(resp, sse_frame(sub.heartbeat_id(), *event))
                    continue
                key = "timestamp" if heartbeat_event == "heartbeat" else "ts"
                ping = sse_frame(sub.heartbeat_id(), heartbeat_event, {key: time.time()})
                await _write(resp, ping)
                continue
            batch = sub.drain()
            if not batch:  # closed: shutdown, channel dropped, or the client left
                break
            frames = [ev.frame for ev in batch if ev.event == "resync" or accept(ev)]
            told = told or any(final(ev) for ev in batch)
            if frames:
                await _write(resp, b"".join(frames))
            if any(ev.event == "resync" or until(ev) for ev in batch):
                break
    except (ConnectionResetError, TimeoutError):
        pass  # the client went away, or stalled a write past SEND_TIMEOUT
    finally:
        sub.close()
    return resp


SEND_TIMEOUT = 30.0


async def _write(resp: EventSourceResponse, data: bytes) -> None:
    async with asyncio.timeout(SEND_TIMEOUT):
        await resp.write(data)
