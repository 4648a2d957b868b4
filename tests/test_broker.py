"""The broker on its own: ids, replay decisions, coalescing and forgetting idle channels.

The wire side (bytes, reconnects over HTTP, stalled sockets) is in test_api.py.
"""

from __future__ import annotations

import asyncio

from vsrt_service.core.broker import Broker


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
