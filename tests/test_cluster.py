"""Issue 14's scenarios on real nodes: `vsrt serve` processes (tests/cluster.py) on one
PostgreSQL database and one shared storage root, each with its own runners.

The nodes are shared by the module (two with two CPU runners each; a third joins in the
ten-jobs test, and the kill comes last, its node left down), and one uninterrupted run of the
long clip, followed on every node, serves as the reference the other scenarios compare with.
Which node claims a job is the database's choice, so a scenario names the nodes by role: the
owner (whose scheduler holds the lease) and another one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import asyncpg
import pytest

from tests.cluster import LocalCluster, Node, local_cluster
from tests.conftest import until
from tests.http_helpers import is_complete, open_stream, upload
from tests.media import Speech, make_speech
from tests.pg import Cluster
from tests.sse_client import SseEvent, SseReader
from vsrt_service.core.broker import COALESCE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cluster")]

#: Five segments of the long clip, one per Whisper window (batch 1), so a kill or a pause lands
#: between checkpoints; no alignment (the recognition is not under test here).
LONG_JOB = {"chunk_size": 10, "align": False}
SHORT_JOB = {"align": False}


@pytest.fixture(scope="module")
def cluster(pg_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Nodes a and b, two runners each, on a fresh database; every node stopped at the end."""
    with local_cluster(
        pg_cluster,
        tmp_path_factory.mktemp("cluster"),
        VSRT_TRANSCRIPTION_BATCH_SIZE="1",
        VSRT_SSE_HEARTBEAT_INTERVAL="600",  # no pings in the streams compared
    ) as nodes:
        nodes.start("a", "b", runners=2)
        yield nodes


@pytest.fixture(scope="module")
def short_clip(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(
        tmp_path_factory.mktemp("cluster-media") / "short.wav",
        ["The quick brown fox jumps over the lazy dog.", "Subtitles are stored in the database."],
        video=False,
    )


# --- helpers -------------------------------------------------------------------------------


def http(node: Node) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(node.url)


async def submit(node: Node, clip: Path, settings: dict[str, Any], start: bool = False) -> str:
    """Upload to `node` (queued only when `start`); the job id."""
    async with http(node) as session:
        body = await upload(cast(Any, session), clip, settings, start=start)
    return str(body["job_id"])


async def post(node: Node, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    async with http(node) as session, session.post(path, json=body) as resp:
        answer: dict[str, Any] = await resp.json()
        assert resp.status == 200, answer
        return answer


async def get_text(node: Node, path: str) -> str:
    async with http(node) as session, session.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


@contextlib.asynccontextmanager
async def stream(node: Node, job_id: str, **headers: str) -> AsyncIterator[SseReader]:
    """A job's event stream on `node`, closed on exit."""
    async with http(node) as session:
        reader = await open_stream(cast(Any, session), job_id, **headers)
        try:
            yield reader
        finally:
            reader.resp.close()


async def query(cluster: LocalCluster, sql: str, *args: Any) -> list[asyncpg.Record]:
    db = await asyncpg.connect(cluster.store_url)
    try:
        return list(await db.fetch(sql, *args))
    finally:
        await db.close()


async def owner(cluster: LocalCluster, job_id: str) -> Node:
    """The node whose scheduler claimed the job (waits for the claim)."""
    found: list[Node] = []

    async def claimed() -> bool:
        rows = await query(cluster, "SELECT lease_owner FROM jobs WHERE id = $1", job_id)
        node = cluster.owner_of(rows[0]["lease_owner"]) if rows else None
        found[:] = [node] if node else []
        return bool(found)

    await until(claimed, within=60, every=0.05)
    return found[0]


def other(cluster: LocalCluster, node: Node) -> Node:
    return next(n for n in cluster.nodes.values() if n is not node and n.alive)


async def transcribe_counts(cluster: LocalCluster, job_id: str) -> list[int]:
    rows = await query(
        cluster, "SELECT transcribe_count FROM segments WHERE job_id = $1 ORDER BY idx", job_id
    )
    return [r[0] for r in rows]


def ids(events: list[SseEvent]) -> list[tuple[str | None, str]]:
    return [(e.id, e.event) for e in events]


def significant(events: list[SseEvent]) -> list[tuple[str | None, str, Any]]:
    """Events but those a subscriber's queue may coalesce (progress): id, name and data."""
    return [(e.id, e.event, e.data) for e in events if e.event not in COALESCE]


def fragments(events: list[SseEvent]) -> list[int]:
    return [e.data["segment_index"] for e in events if e.event == "fragment"]


async def collect(reader: SseReader, stop: Callable[[SseEvent], bool], wait: float) -> list[SseEvent]:
    """Events up to the first `stop` accepts, or what came before none came for `wait` s (an
    assertion on the list then says what was missing, where `until` would only time out)."""
    out: list[SseEvent] = []
    with contextlib.suppress(TimeoutError, EOFError):
        while not out or not stop(out[-1]):
            out.append(await reader.next(wait))
    return out


def is_fragment(ev: SseEvent) -> bool:
    return ev.event == "fragment"


def is_over(ev: SseEvent) -> bool:
    """The job's last event: completed or canceled (a signal), or failed (an error)."""
    return ev.event == "error" or (ev.event == "signal" and ev.data["code"] in ("job_complete", "canceled"))


@dataclass(frozen=True)
class FollowedRun:
    """One uninterrupted run of the long clip, as the owner's and the other node's clients saw
    it, and as a client on the other node that left after the first fragment and came back
    with Last-Event-ID once the job was over; the owner's subtitles are the reference."""

    job_id: str
    owner: str
    on_owner: list[SseEvent]
    on_other: list[SseEvent]
    before_leaving: list[SseEvent]
    after_return: list[SseEvent]
    srt: str


_followed: dict[str, FollowedRun] = {}


async def followed_run(cluster: LocalCluster, long_speech: Speech) -> FollowedRun:
    """Run (once per module) the long clip uploaded to node a, with streams open on both nodes
    before it starts, so each sees it from start to `job_complete`."""
    if "run" in _followed:
        return _followed["run"]
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    job_id = await submit(a, long_speech.path, LONG_JOB)
    async with stream(a, job_id) as on_a, stream(b, job_id) as on_b:
        await post(a, "/api/start", {"job_id": job_id})
        run_by = await owner(cluster, job_id)
        on_owner, on_other = (on_a, on_b) if run_by is a else (on_b, on_a)
        follower = b if run_by is a else a
        async with stream(follower, job_id) as leaving:
            seen_on_owner = await on_owner.until(is_fragment, wait=120)
            before = await collect(leaving, is_fragment, wait=10)
        seen_on_owner += await on_owner.until(is_over, wait=180)
        # Buffered meanwhile: the other node's stream has had as long as the run took.
        seen_on_other = await collect(on_other, is_complete, wait=15)
    after: list[SseEvent] = []
    if before and is_fragment(before[-1]):
        async with stream(follower, job_id, **{"Last-Event-ID": str(before[-1].id)}) as back:
            after = await collect(back, is_complete, wait=15)
    srt = await get_text(run_by, f"/api/jobs/{job_id}/subtitles?format=srt")
    _followed["run"] = FollowedRun(job_id, run_by.name, seen_on_owner, seen_on_other, before, after, srt)
    return _followed["run"]


# --- the scenarios -------------------------------------------------------------------------


async def test_a_job_is_followed_on_a_node_that_does_not_run_it(
    cluster: LocalCluster, long_speech: Speech
) -> None:
    """Uploaded to a, run by whichever node claimed it: the other node's client sees it from
    start to `job_complete`, every segment, with the same event ids as the owner's client."""
    run = await followed_run(cluster, long_speech)
    other_node = other(cluster, cluster.nodes[run.owner])
    events = run.on_other
    assert events and is_complete(events[-1]), f"the other node's client saw only {ids(events)}"
    assert events[0].event == "connected" and events[0].data["status"] == "paused"  # uploaded unstarted
    assert is_complete(events[-1])
    status = await query(cluster, "SELECT status, total FROM jobs WHERE id = $1", run.job_id)
    assert status[0]["status"] == "completed"
    assert sorted(fragments(events)) == list(range(status[0]["total"])) and status[0]["total"] >= 3
    # One event log for all nodes: the same events under the same ids on both, but for
    # progress, which each subscriber's queue may coalesce (SPEC section 4): the newest is on both.
    assert significant(events[1:]) == significant(run.on_owner[1:])
    newest = [[e.id for e in evs if e.event == "progress"][-1:] for evs in (events, run.on_owner)]
    assert newest[0] and newest[0] == newest[1]
    numbers = [int(e.id) for e in events[1:] if e.id is not None and e.event != "ping"]  # a ping repeats
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)
    assert await get_text(other_node, f"/api/jobs/{run.job_id}/subtitles?format=srt") == run.srt


async def test_a_client_reconnecting_with_last_event_id_gets_exactly_what_it_missed(
    cluster: LocalCluster, long_speech: Speech
) -> None:
    """A client of the node that does not run the job leaves after the first fragment and
    comes back with Last-Event-ID after the job is over: the replay (from the events table)
    is exactly the events a client that stayed saw after that id, ending at `job_complete`,
    but for `progress`, which a subscriber's queue coalesces (only the newest matters, SPEC
    section 4): of those, the newest is there."""
    run = await followed_run(cluster, long_speech)
    stayed = run.on_other[1:]  # after its `connected` snapshot
    assert run.before_leaving and is_fragment(run.before_leaving[-1]), (
        f"no fragment reached the other node: {ids(run.before_leaving)}"
    )
    left_at = run.before_leaving[-1].id
    assert left_at is not None
    missed = [e for e in stayed if e.id is not None and int(e.id) > int(left_at)]
    replayed = run.after_return
    assert missed and is_complete(missed[-1])
    assert replayed and replayed[0].event != "connected", "a snapshot, not the replay"
    assert significant(replayed) == significant(missed), f"replayed {ids(replayed)}\nmissed {ids(missed)}"
    newest = [e for e in missed if e.event in COALESCE][-1:]
    assert all(e.id in {r.id for r in replayed} for e in newest), "the newest progress was not replayed"
    numbers = [int(e.id) for e in replayed if e.id is not None]
    assert numbers == sorted(set(numbers)) and len(numbers) == len(replayed)


async def test_pause_on_one_node_stops_the_run_on_the_node_that_owns_it(
    cluster: LocalCluster, long_speech: Speech
) -> None:
    """Pause asked of the node that does not run the job: the owner stops the run at once and
    writes `paused` (its lease handed back); no segment is transcribed after that."""
    a = cluster.nodes["a"]
    job_id = await submit(a, long_speech.path, LONG_JOB)
    await post(a, "/api/start", {"job_id": job_id})
    run_by = await owner(cluster, job_id)
    try:
        await paused_elsewhere(cluster, job_id, run_by)
    finally:  # never left running into the next scenario, whatever failed
        async with http(run_by) as session, session.post(f"/api/cancel/{job_id}"):
            pass


async def paused_elsewhere(cluster: LocalCluster, job_id: str, run_by: Node) -> None:
    async with stream(run_by, job_id) as on_owner:
        await on_owner.until(is_fragment, wait=120)
    answer = await post(other(cluster, run_by), f"/api/pause/{job_id}")
    assert answer["status"] in ("processing", "paused"), answer

    async def paused() -> bool:
        rows = await query(cluster, "SELECT status FROM jobs WHERE id = $1", job_id)
        return bool(rows[0]["status"] == "paused")

    await until(paused, within=10, every=0.1)
    row = (
        await query(cluster, "SELECT lease_owner, claim, processed, total FROM jobs WHERE id = $1", job_id)
    )[0]
    assert row["lease_owner"] is None and row["claim"] is None
    assert 0 < row["processed"] < row["total"], dict(row)

    async def owner_idle() -> bool:
        health = await asyncio.to_thread(run_by.health)
        return not any(r["busy"] for r in health["runners"])

    await until(owner_idle, within=10, every=0.1)
    paused_at = (
        await query(
            cluster, "SELECT max(at) FROM transitions WHERE job_id = $1 AND status = 'paused'", job_id
        )
    )[0][0]
    late = await query(
        cluster, "SELECT idx FROM segments WHERE job_id = $1 AND transcribed_at > $2", job_id, paused_at
    )
    assert not late, f"segments transcribed after the pause: {late}"
    done = await query(
        cluster, "SELECT count(*) FROM segments WHERE job_id = $1 AND transcribe_count > 0", job_id
    )
    assert done[0][0] == row["processed"]
    # Still paused: its owner let it go, and nobody took it up.
    assert (await query(cluster, "SELECT status FROM jobs WHERE id = $1", job_id))[0][0] == "paused"


async def test_ten_jobs_on_two_nodes_and_a_third_joining_each_run_once(
    cluster: LocalCluster, short_clip: Speech
) -> None:
    """Ten jobs through nodes a and b (two runners each): each claimed once and each segment
    transcribed once; a third node joining while the first four run takes some of the rest
    (a and b claim only as many as they have free runners, four of six at most)."""
    a, b = cluster.nodes["a"], cluster.nodes["b"]
    jobs = [await submit(a if i % 2 else b, short_clip.path, SHORT_JOB) for i in range(10)]
    for i, job_id in enumerate(jobs[:4]):
        await post(a if i % 2 else b, "/api/start", {"job_id": job_id})

    async def first_wave_claimed() -> bool:
        rows = await query(cluster, "SELECT count(*) FROM jobs WHERE id = ANY($1) AND attempts > 0", jobs[:4])
        return bool(rows[0][0] == 4)

    await until(first_wave_claimed, within=60, every=0.1)
    c = (await asyncio.to_thread(cluster.start, "c", runners=2))[0]

    async def c_listed() -> bool:  # the others see it (the nodes table)
        health = await asyncio.to_thread(a.health)
        return any(c.owns(n["id"]) for n in health.get("nodes", []))

    await until(c_listed, within=10, every=0.2)
    for i, job_id in enumerate(jobs[4:]):
        await post((a, b, c)[i % 3], "/api/start", {"job_id": job_id})

    async def all_done() -> bool:
        rows = await query(
            cluster, "SELECT count(*) FROM jobs WHERE id = ANY($1) AND status = 'completed'", jobs
        )
        failed = await query(
            cluster,
            "SELECT id, status, error FROM jobs WHERE id = ANY($1) AND status IN ('failed', 'canceled')",
            jobs,
        )
        assert not failed, failed
        return bool(rows[0][0] == len(jobs))

    await until(all_done, within=240, every=0.2)
    rows = await query(cluster, "SELECT id, attempts FROM jobs WHERE id = ANY($1)", jobs)
    assert {r["attempts"] for r in rows} == {1}
    claims = await query(
        cluster,
        "SELECT job_id, message FROM transitions WHERE job_id = ANY($1) AND phase = 'claimed' ORDER BY id",
        jobs,
    )
    assert sorted(r["job_id"] for r in claims) == sorted(jobs), "a job claimed twice, or never"
    by_c = [r["job_id"] for r in claims if c.owns(r["message"].removeprefix("claimed by "))]
    assert by_c and not set(by_c) & set(jobs[:4]), "the node that joined took no work"
    for job_id in jobs:
        counts = await transcribe_counts(cluster, job_id)
        assert counts and counts == [1] * len(counts), (job_id, counts)


async def test_a_node_killed_mid_transcribe_is_taken_over_after_the_lease(
    cluster: LocalCluster, long_speech: Speech
) -> None:
    """The owner is SIGKILLed after its first fragment; another node takes the job over when
    the lease runs out and completes it: each segment transcribed exactly once (the database
    says so), the same subtitles as the uninterrupted run. Last here: the node stays down."""
    reference = await followed_run(cluster, long_speech)
    a = cluster.nodes["a"]
    job_id = await submit(a, long_speech.path, LONG_JOB)
    async with contextlib.AsyncExitStack() as streams:
        on = {
            node.name: await streams.enter_async_context(stream(node, job_id))
            for node in cluster.nodes.values()
            if node.alive
        }
        await post(a, "/api/start", {"job_id": job_id})
        victim = await owner(cluster, job_id)
        watcher = other(cluster, victim)
        first = await on[victim.name].until(is_fragment, wait=120)
        await asyncio.to_thread(victim.kill)
        await on[watcher.name].until(is_over, wait=180)
    row = (await query(cluster, "SELECT status, attempts, total FROM jobs WHERE id = $1", job_id))[0]
    assert row["status"] == "completed", dict(row)
    assert 0 < len(fragments(first)) < row["total"], "the kill did not land mid-transcribe"
    assert row["attempts"] == 2
    assert await transcribe_counts(cluster, job_id) == [1] * row["total"]
    claims = await query(
        cluster,
        "SELECT message FROM transitions WHERE job_id = $1 AND phase = 'claimed' ORDER BY id",
        job_id,
    )
    owners = [m[0].removeprefix("claimed by ") for m in claims]
    assert len(owners) == 2 and victim.owns(owners[0]) and cluster.owner_of(owners[1]) is not None
    assert await get_text(watcher, f"/api/jobs/{job_id}/subtitles?format=srt") == reference.srt
