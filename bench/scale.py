"""Scale-out on PostgreSQL (issue 14): jobs per minute and claim latency with 1, 2 and 4 nodes,
and the events per second the events table carries from one node to another.

Why: several nodes share one queue in PostgreSQL (SKIP LOCKED claims, leases, NOTIFY wake-ups)
and one event log (every job event a row, NOTIFY to the other nodes' brokers). This shows
what a node added buys and what the claim path costs, and how many events per second the
table passes between nodes on this machine, the figure docs/scale-out.md scales up on paper.

What it measures, on a throwaway PostgreSQL cluster of its own (tests/pg.py: initdb, a free
port, fsync off) with a fresh database per run:

1. Throughput. For each N in `--nodes`, N real `vsrt serve` processes (tests/cluster.py:
   separate processes, each its own data directory and one CPU runner with the bundled
   tiny.en, one shared storage root) are started and waited for until their runners are
   ready; then `--jobs` jobs (a short espeak-ng clip, no alignment) are uploaded round-robin
   to the nodes at once, and the run is timed from the first upload to the last job's
   completion (the database's `updated_at`). Per N: jobs per minute, claim latency
   (the job's `created_at` to its `claimed` transition, both on the database's clock)
   p50/p90/max (most of it queueing behind busy runners), then the claim latency alone:
   IDLE_CLAIMS jobs one at a time with every runner free (p50); how many jobs each node
   claimed, and jobs claimed more than once (should be none). Every node shares this
   machine's cores: past the core count, more nodes add contention, not capacity; the
   figures show the queue's overhead, not a GPU farm's speed.
2. Events. Two brokers opened as two nodes open theirs (`service.open_broker(settings,
   store)` on their own PgJobStore, so PgEventLog), a subscriber on the second, and
   `--events` events published on the first as fast as `Broker.publish` takes them: events
   per second published, and received on the other node (first publish to last receipt),
   with the delivery latency p50/max.

It prints a table and asserts nothing; the figures also go to bench/out/scale.json.

    .venv/bin/python -m bench.scale [--nodes 1,2,4] [--jobs 8] [--events 20000] [--wait-idle 600]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.common import (
    MEDIA,
    OUT,
    add_wait_idle,
    cached_speech,
    other_test_runs,
    save_and_print,
    wait_until_idle,
)
from tests.cluster import LocalCluster, local_cluster
from tests.media import Speech, make_speech
from tests.pg import Cluster, pg_bin, running_cluster

RESULT_FILE = OUT / "scale.json"
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Subtitles are stored in the database."]
JOB_SETTINGS = {"align": False}
#: Jobs run one at a time on an idle cluster, after the batch, for the claim latency alone.
IDLE_CLAIMS = 3


def short_clip() -> Speech:
    return cached_speech(MEDIA / "scale-short.wav", lambda out: make_speech(out, SENTENCES, video=False))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


# --- 1. throughput ------------------------------------------------------------------------


async def submit(session: aiohttp.ClientSession, url: str, clip: Path) -> str:
    form = aiohttp.FormData()
    form.add_field("settings", json.dumps(JOB_SETTINGS), content_type="application/json")
    form.add_field("file", await asyncio.to_thread(clip.read_bytes), filename=clip.name)
    async with session.post(f"{url}/api/jobs", data=form) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"upload refused: {body}")
        return str(body["job_id"])


async def run_jobs(cluster: LocalCluster, clip: Path, jobs: int, within: float) -> dict[str, Any]:
    nodes = list(cluster.nodes.values())
    started = time.time()
    async with aiohttp.ClientSession() as session:
        ids = await asyncio.gather(*(submit(session, nodes[i % len(nodes)].url, clip) for i in range(jobs)))
    db = await asyncpg.connect(cluster.store_url)
    try:
        deadline = time.monotonic() + within
        while True:
            rows = await db.fetch("SELECT status, count(*) FROM jobs WHERE id = ANY($1) GROUP BY status", ids)
            counts = {r[0]: r[1] for r in rows}
            if counts.get("completed", 0) + counts.get("failed", 0) + counts.get("canceled", 0) == jobs:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs not done after {within:.0f} s: {counts}")
            await asyncio.sleep(0.2)
        finished = float(await db.fetchval("SELECT max(updated_at) FROM jobs WHERE id = ANY($1)", ids))
        claims = await db.fetch(
            "SELECT j.id, j.created_at, t.at, t.message FROM jobs j JOIN transitions t ON t.job_id = j.id"
            " WHERE j.id = ANY($1) AND t.phase = 'claimed' ORDER BY t.id",
            ids,
        )
    finally:
        await db.close()
    first_claim: dict[str, float] = {}
    per_node: Counter[str] = Counter()
    claimed: Counter[str] = Counter()
    for row in claims:
        claimed[row["id"]] += 1
        first_claim.setdefault(row["id"], row["at"] - row["created_at"])
        lease_owner = row["message"].removeprefix("claimed by ")
        node = cluster.owner_of(lease_owner)
        per_node[node.name if node else "?"] += 1
    latencies = list(first_claim.values())
    seconds = finished - started
    idle = await idle_claims(cluster, clip, IDLE_CLAIMS)
    return {
        "nodes": len(nodes),
        "jobs": jobs,
        "completed": counts.get("completed", 0),
        "seconds": round(seconds, 2),
        "jobs_per_minute": round(jobs / seconds * 60, 2),
        "claim_latency_p50": round(percentile(latencies, 0.5), 3),
        "claim_latency_p90": round(percentile(latencies, 0.9), 3),
        "claim_latency_max": round(max(latencies, default=float("nan")), 3),
        "claim_latency_idle": idle,
        "claims_per_node": dict(sorted(per_node.items())),
        "claimed_twice": sum(1 for n in claimed.values() if n > 1),
    }


async def idle_claims(cluster: LocalCluster, clip: Path, count: int) -> list[float]:
    """Claim latency with every runner free: one job at a time, each to the next node, the
    next uploaded once the last is done (what the queue itself costs: a wake-up and a claim)."""
    nodes = list(cluster.nodes.values())
    out: list[float] = []
    db = await asyncpg.connect(cluster.store_url)
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(count):
                job_id = await submit(session, nodes[i % len(nodes)].url, clip)
                while True:
                    status = await db.fetchval("SELECT status FROM jobs WHERE id = $1", job_id)
                    if status in ("completed", "failed", "canceled"):
                        break
                    await asyncio.sleep(0.1)
                out.append(
                    round(
                        await db.fetchval(
                            "SELECT t.at - j.created_at FROM jobs j JOIN transitions t ON t.job_id = j.id"
                            " WHERE j.id = $1 AND t.phase = 'claimed' ORDER BY t.id LIMIT 1",
                            job_id,
                        ),
                        3,
                    )
                )
    finally:
        await db.close()
    return out


def throughput(pg: Cluster, root: Path, nodes: int, jobs: int, clip: Path, timeout: float) -> dict[str, Any]:
    with local_cluster(pg, root / f"n{nodes}") as cluster:
        t0 = time.monotonic()
        cluster.start(*(f"node{i}" for i in range(nodes)), runners=1)
        start_up = time.monotonic() - t0
        result = asyncio.run(run_jobs(cluster, clip, jobs, timeout))
    return {**result, "start_up_seconds": round(start_up, 1)}


# --- 2. events ----------------------------------------------------------------------------


async def events_rate(url: str, root: Path, count: int) -> dict[str, Any]:
    """`count` events published on one node's broker, received on another's."""
    from vsrt_service.core.broker import job_channel
    from vsrt_service.core.config import load_settings
    from vsrt_service.jobs.pg_store import PgJobStore
    from vsrt_service.service import open_broker

    base = load_settings(env={}, data_dir=root / "events", store={"url": url})
    settings = replace(base, sse=replace(base.sse, subscriber_queue=max(count * 2, 1024)))
    channel = job_channel("bench-events")
    async with contextlib.AsyncExitStack() as stack:
        store_a = await stack.enter_async_context(PgJobStore.open(url))
        store_b = await stack.enter_async_context(PgJobStore.open(url))
        broker_a = await stack.enter_async_context(open_broker(settings, store_a))
        broker_b = await stack.enter_async_context(open_broker(settings, store_b))
        sub, _ = broker_b.subscribe(channel)
        latencies: list[float] = []
        received = 0
        resyncs = 0
        done = asyncio.Event()
        last_at = 0.0

        async def receive() -> None:
            nonlocal received, resyncs, last_at
            while received < count:
                if not await sub.wait(30):
                    continue
                now = time.time()
                for ev in sub.drain():
                    if ev.event == "resync":
                        resyncs += 1
                    elif ev.event == "fragment":
                        received += 1
                        latencies.append(now - ev.data["sent"])
                last_at = now
            done.set()

        receiver = asyncio.create_task(receive())
        t0 = time.time()
        for i in range(count):
            broker_a.publish(channel, "fragment", {"segment_index": i, "sent": time.time()})
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the publisher's writer and the receiver run
        published = time.time() - t0
        try:
            await asyncio.wait_for(done.wait(), 120)
        except TimeoutError:
            pass
        receiver.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await receiver
        sub.close()
        db = await asyncpg.connect(url)
        try:
            rows = await db.fetchval("SELECT count(*) FROM events")
        except asyncpg.PostgresError:
            rows = None
        finally:
            await db.close()
    span = (last_at - t0) if received else float("nan")
    return {
        "events": count,
        "published_per_second": round(count / published, 1),
        "received": received,
        "received_per_second": round(received / span, 1) if received else 0.0,
        "latency_p50_ms": round(percentile(latencies, 0.5) * 1000, 1),
        "latency_max_ms": round(max(latencies, default=float("nan")) * 1000, 1),
        "resyncs": resyncs,
        "rows_in_events_table": rows,
    }


# --- report -------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    runs = report["throughput"]
    print()
    print(
        f"clip: {report['clip']['seconds']:.1f} s of speech, {report['jobs']} jobs per run, tiny.en on CPU,"
        f" 1 runner (1 thread) per node, lease {report['lease_seconds']} s; {report['machine']['cpus']} CPUs"
    )
    print()
    cols = "".join(f"{str(r['nodes']) + ' node' + ('s' if r['nodes'] > 1 else ''):>14}" for r in runs)
    print(f"{'':28}{cols}")
    for r in runs:
        r["claim_latency_idle_p50"] = percentile(r["claim_latency_idle"], 0.5)
    for key, label, fmt in (
        ("start_up_seconds", "node start-up (s)", "{:>14.1f}"),
        ("seconds", "wall time (s)", "{:>14.1f}"),
        ("jobs_per_minute", "jobs per minute", "{:>14.1f}"),
        ("claim_latency_p50", "claim latency p50 (s)", "{:>14.3f}"),
        ("claim_latency_p90", "claim latency p90 (s)", "{:>14.3f}"),
        ("claim_latency_max", "claim latency max (s)", "{:>14.3f}"),
        ("claim_latency_idle_p50", "claim latency idle (s)", "{:>14.3f}"),
        ("completed", "jobs completed", "{:>14}"),
        ("claimed_twice", "jobs claimed twice", "{:>14}"),
    ):
        print(f"{label:28}" + "".join(fmt.format(r[key]) for r in runs))
    print(
        f"{'claims per node':28}"
        + "".join(f"{'/'.join(map(str, r['claims_per_node'].values())):>14}" for r in runs)
    )
    ev = report["events"]
    print()
    print(
        f"events table, one node to another: {ev['events']} events;"
        f" published {ev['published_per_second']}/s,"
        f" received {ev['received']} at {ev['received_per_second']}/s; latency p50"
        f" {ev['latency_p50_ms']} ms, max {ev['latency_max_ms']} ms; resyncs {ev['resyncs']};"
        f" rows in the table {ev['rows_in_events_table']}"
    )
    m = report["machine"]
    print()
    print(
        f"machine: other pytest runs at start {m['pytest_at_start']}, at end {m['pytest_at_end']};"
        f" load average {m['loadavg_start']} -> {m['loadavg_end']}"
    )
    print(f"figures written to {RESULT_FILE}")


async def _wait(seconds: float) -> None:
    if seconds > 0:
        await wait_until_idle(seconds)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(_wait(args.wait_idle))
    bindir = pg_bin()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (no initdb)")
    clip = short_clip()
    machine: dict[str, Any] = {
        "cpus": len(os.sched_getaffinity(0)),
        "pytest_at_start": len(other_test_runs()),
        "loadavg_start": os.getloadavg()[0],
    }
    from tests.cluster import LEASE_SECONDS

    with tempfile.TemporaryDirectory(prefix="vsrt-scale-") as tmp, running_cluster(bindir) as pg:
        root = Path(tmp)
        runs = [throughput(pg, root, n, args.jobs, clip.path, args.timeout) for n in args.nodes]
        with local_cluster(pg, root / "events") as events_db:
            events = asyncio.run(events_rate(events_db.store_url, root, args.events))
    machine.update(pytest_at_end=len(other_test_runs()), loadavg_end=os.getloadavg()[0])
    return {
        "clip": {"file": clip.path.name, "seconds": clip.duration},
        "jobs": args.jobs,
        "lease_seconds": LEASE_SECONDS,
        "throughput": runs,
        "events": events,
        "machine": machine,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", default="1,2,4", help="node counts to run side by side (default 1,2,4)")
    parser.add_argument("--jobs", type=int, default=8, help="jobs per run (default 8)")
    parser.add_argument("--events", type=int, default=20000, help="events for the events-table rate")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest a run's jobs may take (s)")
    add_wait_idle(parser)
    args = parser.parse_args(argv)
    try:
        args.nodes = [int(n) for n in args.nodes.split(",")]
    except ValueError:
        parser.error("--nodes is a comma-separated list of numbers")
    if any(n < 1 for n in args.nodes) or args.jobs < 1 or args.events < 1:
        parser.error("--nodes, --jobs and --events must be positive")
    report = bench(args)
    save_and_print(report, RESULT_FILE, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
