"""Event broker: channels (`job:{id}`, `models`) with monotonic ids and a replay buffer.

Publishing never awaits a subscriber. Each subscriber has a bounded queue in which a newer
coalescible event (progress) replaces an unsent older one of the same kind; events that
must not be lost (fragment, signal, error) are never dropped silently: a subscriber whose
queue overflows gets a final `resync` event and is closed, and reconnects from a snapshot.

With an `EventLog` (several nodes on PostgreSQL), job channels are numbered by the log's
table, not here: `publish` hands the event to the log, the log hands every node's broker the
numbered events through `deliver`, and replay after a reconnect is read from the log (`open`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple, Protocol

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


class LogRead(NamedTuple):
    """A channel as the event log holds it: every event after `kept_after` up to `last_id` is
    still there, and `events` are those after the reader's id (at most the limit asked)."""

    last_id: int
    kept_after: int
    events: list[Event]


class EventLog(Protocol):
    """Where job events are numbered and kept when several nodes share them."""

    def append(self, channel: str, event: str, data: dict[str, Any]) -> None:
        """Queue an event for numbering and delivery to every node; never blocks."""

    async def read(self, channel: str, after: int | None, limit: int) -> LogRead:
        """The channel's position, and its events after `after` (none when None)."""

    async def delete(self, channel: str) -> None:
        """Forget the channel's events and its numbering (its job was deleted)."""


def logged(channel: str) -> bool:
    """Job channels go through the log; the models channel stays per node (model state is
    per host)."""
    return channel.startswith("job:")


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
        #: The newest id queued or covered (snapshot, replay); with a log, older ones are dropped.
        self.position = opened_at

    def _deliver(self, event: Event) -> None:
        """A numbered event from the log: dropped when the snapshot or replay covered it."""
        if event.id > self.position:
            self.position = event.id
            self._offer(event)

    def _start_at(self, position: int, replay: list[Event]) -> None:
        """Put the replayed events before those delivered live meanwhile, without repeats."""
        live = [e for e in self._queue if e.id > position]
        self._queue.clear()
        self.position = position
        for ev in sorted({e.id: e for e in [*replay, *live]}.values(), key=lambda e: e.id):
            self._deliver(ev)
        self._wakeup.set()

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

    def heartbeat_id(self) -> int:
        """The id of a heartbeat to this subscriber (`Broker.heartbeat_id`); with a log, never
        below what this subscriber was sent (its snapshot may be ahead of the deliveries)."""
        hid = self._broker.heartbeat_id(self.channel)
        return max(hid, self.position) if self._broker._logs(self.channel) else hid

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
        #: Set by the event log that numbers job channels (several nodes); None: this broker does.
        self.log: EventLog | None = None
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
            # With a log, the channel's ids come from it: nothing is known before a delivery.
            issued = 0 if self._logs(name) else max(_first_id() - 1, self._high_water)
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
        if ch is not None and not self._logs(name):
            self._high_water = max(self._high_water, ch.issued)
        return ch

    def _logs(self, channel: str) -> bool:
        return self.log is not None and logged(channel)

    def channels(self) -> int:
        return len(self._channels)

    def publish(self, channel: str, event: str, data: dict[str, Any]) -> Event:
        """Number the event, keep it for replay, hand it to every subscriber; never blocks.

        With a log, a job channel's event is handed to it and comes back numbered through
        `deliver`: the Event returned then has id 0 (not numbered yet; no caller may use it)."""
        if self.log is not None and logged(channel):
            self.log.append(channel, event, data)
            return Event(channel, 0, event, data)
        ch = self._channel(channel)
        ev = Event(channel, ch.next_id(), event, data)
        self._keep(ch, ev)
        for sub in list(ch.subscribers):
            sub._offer(ev)
        return ev

    def _keep(self, ch: _Channel, ev: Event) -> None:
        ch.touched = time.monotonic()
        ch.buffer.append(ev)
        while len(ch.buffer) > self._replay:
            ch.evicted = ch.buffer.popleft().id

    def deliver(self, ev: Event) -> None:
        """An event numbered by the log (from any node): to this node's subscribers, once.
        Ids at or below the channel's last delivered one are repeats and ignored; a channel
        nobody here follows is not kept (the log replays it)."""
        ch = self._channels.get(ev.channel)
        if ch is None or ev.id <= ch.issued:
            return
        ch.issued = ev.id
        self._keep(ch, ev)
        for sub in list(ch.subscribers):
            sub._deliver(ev)

    def followed(self) -> dict[str, int]:
        """Channels with subscribers here, each with the id after which they all still need
        events (for the log to fetch what a lost connection missed)."""
        return {
            name: min(max(ch.issued, sub.position) for sub in ch.subscribers)
            for name, ch in self._channels.items()
            if ch.subscribers
        }

    def heartbeat_id(self, channel: str) -> int:
        """A fresh id for an event sent to one subscriber only (a heartbeat), so that every
        event on the wire has its own id and a reconnect from it replays only what follows.
        With a log the ids are the log's, so a heartbeat repeats the last one delivered."""
        ch = self._channel(channel)
        return ch.issued if self._logs(channel) else ch.next_id()

    async def open(self, channel: str, last_event_id: int | None = None) -> tuple[Subscription, bool]:
        """`subscribe`, with the replay read from the log where it numbers the channel.

        The subscription is live before the log is read, so nothing falls between the two;
        events delivered meanwhile that the read covers are dropped as repeats. Not replayed
        (a snapshot is due, at `opened_at`, the channel's last id in the log) when the id is
        not from this channel's kept life or more events were missed than the queue holds."""
        if self.log is None or not logged(channel):
            return self.subscribe(channel, last_event_id)
        ch = self._channel(channel)
        sub = Subscription(self, channel, self._queue, 0)
        ch.subscribers.add(sub)
        try:
            read = await self.log.read(channel, last_event_id, self._queue)
        except BaseException:
            sub.close()
            raise
        if sub.closed:  # overflowed while reading (its resync is queued) or dropped meanwhile
            return sub, False
        if (
            last_event_id is not None
            and read.kept_after <= last_event_id <= read.last_id
            and len(read.events) < self._queue
        ):
            sub._start_at(last_event_id, read.events)
            return sub, True
        sub.opened_at = read.last_id
        sub._start_at(read.last_id, [])
        return sub, False

    def subscribe(self, channel: str, last_event_id: int | None = None) -> tuple[Subscription, bool]:
        """A new subscription; with `last_event_id`, the missed events are queued first.

        Returns (subscription, replayed): replayed is False when the missed events are no
        longer all in the buffer, so the caller must send a fresh snapshot instead. A channel
        the log numbers is opened with `open` (its replay is in the log, not here).
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

    async def delete_channel(self, channel: str) -> None:
        """`drop_channel`, and the log's copy of it too (its job was deleted)."""
        self.drop_channel(channel)
        if self.log is not None and logged(channel):
            await self.log.delete(channel)

    def close(self) -> None:
        """End every subscription (shutdown)."""
        for ch in list(self._channels.values()):
            for sub in list(ch.subscribers):
                sub.close()
