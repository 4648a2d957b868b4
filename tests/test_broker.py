"""The broker on its own: ids, replay decisions, coalescing and forgetting idle channels.

The wire side (bytes, reconnects over HTTP, stalled sockets) is in test_api.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from vsrt_service.core.broker import Broker, Event, LogRead


def test_ids_grow_per_channel_and_pings_take_their_own() -> None:
    broker = Broker()
    a = [broker.publish("a", "fragment", {"i": i}).id for i in range(3)]
    ping = broker.heartbeat_id("a")
    later = broker.publish("a", "fragment", {"i": 3}).id
    assert a == sorted(a) and len(set(a)) == 3
    assert a[-1] < ping < later


def test_snapshot_position_precedes_everything_queued_after_it() -> None:
    broker = Broker()
    broker.publish("a", "fragment", {"i": 0})
    sub, replayed = broker.subscribe("a")
    assert not replayed
    ev = broker.publish("a", "fragment", {"i": 1})
    assert sub.opened_at < ev.id
    assert [e.id for e in sub.drain()] == [ev.id]


def test_replay_after_a_ping_id_and_snapshot_once_events_are_gone() -> None:
    broker = Broker(replay_buffer=4, subscriber_queue=10)
    first = broker.publish("a", "fragment", {"i": 0})
    ping = broker.heartbeat_id("a")
    after = [broker.publish("a", "fragment", {"i": i}) for i in (1, 2)]

    sub, replayed = broker.subscribe("a", ping)
    assert replayed and [e.id for e in sub.drain()] == [e.id for e in after]
    sub, replayed = broker.subscribe("a", first.id)
    assert replayed and [e.id for e in sub.drain()] == [e.id for e in after]

    for i in range(4):  # pushes `first` and the events after it out of the buffer
        broker.publish("a", "fragment", {"i": 10 + i})
    _, replayed = broker.subscribe("a", first.id)
    assert not replayed
    # Ids from before this channel's life, or ids it never issued, get a snapshot too.
    assert not broker.subscribe("a", 1)[1]
    assert not broker.subscribe("a", broker.heartbeat_id("a") + 1000)[1]


def test_progress_coalesces_but_fragments_are_kept() -> None:
    broker = Broker()
    sub, _ = broker.subscribe("a")
    broker.publish("a", "progress", {"percent": 1})
    broker.publish("a", "fragment", {"i": 0})
    broker.publish("a", "progress", {"percent": 2})
    assert [(e.event, e.data) for e in sub.drain()] == [
        ("fragment", {"i": 0}),
        ("progress", {"percent": 2}),
    ]


def test_overflow_ends_with_resync_and_closes() -> None:
    broker = Broker(subscriber_queue=3)
    sub, _ = broker.subscribe("a")
    last = [broker.publish("a", "fragment", {"i": i}) for i in range(4)][-1]
    batch = sub.drain()
    assert [e.event for e in batch] == ["resync"] and batch[0].data["last_event_id"] == last.id
    assert sub.closed and broker.subscribers("a") == 0


async def test_idle_channels_are_forgotten_and_ids_keep_growing() -> None:
    broker = Broker(idle_channel_seconds=0.05)
    # Many more ids than milliseconds pass: a re-created channel must continue above the
    # forgotten one's ids, not restart from the clock.
    first = broker.publish("done", "fragment", {})
    for _ in range(5000):
        old = broker.publish("done", "fragment", {})
    watched, _ = broker.subscribe("watched")
    broker.publish("watched", "progress", {"percent": 1})
    await asyncio.sleep(0.1)

    broker.publish("other", "progress", {"percent": 1})  # any use sweeps
    assert broker.channels() == 2  # "done" forgotten; "watched" has a subscriber
    sub, replayed = broker.subscribe("done", first.id)
    assert not replayed  # its buffer is gone: the client gets a fresh snapshot
    new = broker.publish("done", "signal", {"code": "job_complete"})
    assert new.id > old.id and sub.opened_at >= old.id

    watched.close()
    sub.close()
    await asyncio.sleep(0.1)
    broker.heartbeat_id("other")
    assert broker.channels() == 1  # only the channel just used


class ListLog:
    """An event log in a list (the PostgreSQL one is tested in test_pg_events.py): here the
    broker's merge of a replay read from the log with events delivered live meanwhile is
    under test, at moments the test picks (the read waits for `go`)."""

    def __init__(self, broker: Broker) -> None:
        self.events: list[Event] = []
        self.kept_after = self.last_id = 100
        self.reading, self.go = asyncio.Event(), asyncio.Event()
        broker.log = self

    def append(self, channel: str, event: str, data: dict[str, Any]) -> None:
        self.last_id += 1
        self.events.append(Event(channel, self.last_id, event, data))

    async def read(self, channel: str, after: int | None, limit: int) -> LogRead:
        kept = [e for e in self.events if after is not None and e.id > after][:limit]
        read = LogRead(self.last_id, self.kept_after, kept)
        self.reading.set()
        await self.go.wait()
        return read

    async def delete(self, channel: str) -> None:
        self.events.clear()


async def test_a_replay_from_the_log_and_live_deliveries_meanwhile_merge_without_loss_or_repeat() -> None:
    broker = Broker()
    log = ListLog(broker)
    for i in range(3):  # ids 101-103, delivered before anyone here followed the channel
        assert broker.publish("job:a", "fragment", {"i": i}).id == 0  # numbered by the log
        broker.deliver(log.events[-1])
    opening = asyncio.create_task(broker.open("job:a", 101))
    await log.reading.wait()  # the log was read up to 103; 103 and 104 arrive live meanwhile
    broker.publish("job:a", "fragment", {"i": 3})
    for ev in log.events[2:]:
        broker.deliver(ev)
    log.go.set()
    sub, replayed = await opening
    assert replayed and [e.id for e in sub.drain()] == [102, 103, 104]
    broker.deliver(log.events[-1])  # a repeat
    broker.publish("job:a", "fragment", {"i": 4})
    broker.deliver(log.events[-1])
    assert [e.id for e in sub.drain()] == [105]
    assert sub.heartbeat_id() == broker.heartbeat_id("job:a") == 105  # no new id: it is the log's

    # Without an id: a snapshot at the log's last id, then only what follows it.
    log.reading.clear()
    log.go.clear()
    opening = asyncio.create_task(broker.open("job:a"))
    await log.reading.wait()
    broker.publish("job:a", "fragment", {"i": 5})
    broker.deliver(log.events[-1])
    log.go.set()
    fresh, replayed = await opening
    assert not replayed and fresh.opened_at == 105 and [e.id for e in fresh.drain()] == [106]
    # The models channel stays this node's own, numbered here.
    assert broker.publish("models", "model_progress", {}).id > 0
