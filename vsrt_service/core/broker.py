"""Event broker: channels (`job:{id}`, `models`) with monotonic ids and a replay buffer.

Publishing never awaits a subscriber. Each subscriber has a bounded queue in which a newer
coalescible event (progress) replaces an unsent older one of the same kind; events that
must not be lost (fragment, signal, error) are never dropped silently: a subscriber whose
queue overflows gets a final `resync` event and is closed, and reconnects from a snapshot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

#: Events where only the newest matters, so an unsent older one may be replaced.
COALESCE = frozenset({"progress", "model_progress", "ping", "heartbeat"})


#: The app-wide channel of model downloads and states.
MODELS_CHANNEL = "models"


def job_channel(job_id: str) -> str:
    """The channel of one job's events."""
    return f"job:{job_id}"


def sse_frame(event_id: int, event: str, data: dict[str, Any]) -> bytes:
    """One event in SSE wire form (the JSON has no raw newlines, so one data line)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {event}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True)
class Event:
    channel: str
    id: int
    event: str
    data: dict[str, Any]

    @cached_property
    def frame(self) -> bytes:
        """Encoded once, however many subscribers it is written to."""
        return sse_frame(self.id, self.event, self.data)


def _first_id() -> int:
    """Ids start at the clock's milliseconds, so they keep growing across service restarts
    and a client's Last-Event-ID from before a restart is never mistaken for a recent one."""
    return int(time.time() * 1000)


@dataclass
class _Channel:
    #: The last id handed out; ids are never reused within the channel's life.
    issued: int
    #: The newest id that has left the replay buffer (or the id before the first one).
    evicted: int = field(init=False)
    buffer: deque[Event] = field(default_factory=deque)
    subscribers: set[Subscription] = field(default_factory=set)
    #: When it last published or lost a subscriber (time.monotonic), for idle eviction.
    touched: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.evicted = self.issued

    def next_id(self) -> int:
        self.issued += 1
        return self.issued

    def can_replay_after(self, last_event_id: int) -> bool:
        """True if every event after the client's id is still buffered, and the id is from
        this channel's own life (not from before a restart or an eviction, nor the future)."""
        return self.evicted <= last_event_id <= self.issued


class Subscription:
    """An async iterator of events for one subscriber; closed by the broker or by `close()`."""

    def __init__(self, broker: Broker, channel: str, limit: int, opened_at: int) -> None:
        self._broker = broker
        self.channel = channel
        #: The channel's last id when this subscription opened: a snapshot taken now
        #: carries it, and everything queued after it has a greater id.
        self.opened_at = opened_at
        self._limit = limit
        self._queue: deque[Event] = deque()
        self._wakeup = asyncio.Event()
        self.closed = False

    def _offer(self, event: Event) -> None:
        if self.closed:
            return
        if event.event in COALESCE:
            for i in range(len(self._queue) - 1, -1, -1):
                if self._queue[i].event == event.event:
                    del self._queue[i]
                    break
        if len(self._queue) >= self._limit:
            self._queue.clear()
            self._queue.append(
                Event(
                    self.channel,
                    event.id,
                    "resync",
                    {
                        "reason": "subscriber fell too far behind",
                        "last_event_id": event.id,
                    },
                )
            )
            self._close()
            return
        self._queue.append(event)
        self._wakeup.set()

    def _close(self) -> None:
        self.closed = True
        self._wakeup.set()
        self._broker._unsubscribe(self)

    def close(self) -> None:
        if not self.closed:
            self._close()

    def drain(self) -> list[Event]:
        """Everything queued now, oldest first (a stream sends it in one write)."""
        batch = list(self._queue)
        self._queue.clear()
        return batch

    async def wait(self, within: float) -> bool:
        """Until something is queued or the subscription closes; False after `within` s."""
        if self._queue or self.closed:
            return True
        self._wakeup.clear()
        try:
            async with asyncio.timeout(within):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    def __aiter__(self) -> AsyncIterator[Event]:
        return self

    async def __anext__(self) -> Event:
        while not self._queue:
            if self.closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()


class Broker:
    """Channels are created on first use and forgotten once idle (no subscriber and nothing
    published for `idle_channel_seconds`): a finished job's replay buffer does not stay in
    memory for the life of the service; a client reconnecting later gets a fresh snapshot."""

    def __init__(
        self, replay_buffer: int = 512, subscriber_queue: int = 256, idle_channel_seconds: float = 600.0
    ) -> None:
        self._channels: dict[str, _Channel] = {}
        self._replay = replay_buffer
        self._queue = subscriber_queue
        self._idle = idle_channel_seconds
        self._swept = time.monotonic()
        #: The highest id of any forgotten channel, so a re-created one continues above it.
        self._high_water = 0

    def _channel(self, name: str) -> _Channel:
        self._sweep()
        channel = self._channels.get(name)
        if channel is None:
            issued = max(_first_id() - 1, self._high_water)
            channel = self._channels[name] = _Channel(issued)
        return channel

    def _sweep(self) -> None:
        """Forget idle channels; runs at most a few times per idle period (O(channels))."""
        now = time.monotonic()
        if now - self._swept < self._idle / 4:
            return
        self._swept = now
        for name, ch in list(self._channels.items()):
            if not ch.subscribers and now - ch.touched >= self._idle:
                self._forget(name)

    def _forget(self, name: str) -> _Channel | None:
        ch = self._channels.pop(name, None)
        if ch is not None:
            self._high_water = max(self._high_water, ch.issued)
        return ch

    def channels(self) -> int:
        return len(self._channels)

    def publish(self, channel: str, event: str, data: dict[str, Any]) -> Event:
        """Number the event, keep it for replay, hand it to every subscriber; never blocks."""
        ch = self._channel(channel)
        ev = Event(channel, ch.next_id(), event, data)
        ch.touched = time.monotonic()
        ch.buffer.append(ev)
        while len(ch.buffer) > self._replay:
            ch.evicted = ch.buffer.popleft().id
        for sub in list(ch.subscribers):
            sub._offer(ev)
        return ev

    def heartbeat_id(self, channel: str) -> int:
        """A fresh id for an event sent to one subscriber only (a heartbeat), so that every
        event on the wire has its own id and a reconnect from it replays only what follows."""
        return self._channel(channel).next_id()

    def subscribe(self, channel: str, last_event_id: int | None = None) -> tuple[Subscription, bool]:
        """A new subscription; with `last_event_id`, the missed events are queued first.

        Returns (subscription, replayed): replayed is False when the missed events are no
        longer all in the buffer, so the caller must send a fresh snapshot instead.
        """
        ch = self._channel(channel)
        sub = Subscription(self, channel, self._queue, ch.issued)
        replayed = False
        if last_event_id is not None:
            missed = [e for e in ch.buffer if e.id > last_event_id]
            if ch.can_replay_after(last_event_id) and len(missed) < self._queue:
                for ev in missed:
                    sub._offer(ev)
                replayed = True
        ch.subscribers.add(sub)
        return sub, replayed

    def _unsubscribe(self, sub: Subscription) -> None:
        ch = self._channels.get(sub.channel)
        if ch is not None and sub in ch.subscribers:
            ch.subscribers.discard(sub)
            ch.touched = time.monotonic()

    def subscribers(self, channel: str) -> int:
        ch = self._channels.get(channel)
        return len(ch.subscribers) if ch else 0

    def drop_channel(self, channel: str) -> None:
        """Forget a channel (its job was deleted) and close its subscribers."""
        ch = self._forget(channel)
        if ch is not None:
            for sub in list(ch.subscribers):
                sub.close()

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for ch in list(self._channels.values()):
            for sub in list(ch.subscribers):
                sub.close()
