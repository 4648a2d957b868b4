"""SSE fan-out through the real server, and what a running job does to `GET /api/status`.

Why: SPEC section 4 promises that one job's events reach every subscriber promptly, that a
slow subscriber never slows the others, and that `fragment` events are never lost silently
(an overflowing subscriber is told to `resync`). This measures how far that holds with many
subscribers on one job channel, and what it costs the server process, which also serves
the API: a server busy fanning out, or busy running a job, answers status polls late.

What it measures, against the real app (`vsrt_service.web.app.create_app`) started in a
SUBPROCESS (a launcher in this module, `--serve`, with a fresh data directory, raised
`sse.max_connections_per_*` limits and access logging off as in `vsrt serve`), so that the
server's CPU is read from its own /proc/<pid>/stat (utime + stime: its threads, not the
runner subprocess it starts, which is waited for to be ready before anything is timed):

1. Fan-out. One job is uploaded with `start=false` (an espeak mp4) to get a job channel.
   For each N in `--subscribers`, N SSE connections to `/api/stream/{job_id}` are opened
   over loopback by client processes (aiohttp, `TCPConnector(limit=0)`, `--client-procs`
   processes sharing the N; each reads chunks and parses the SSE framing itself). Then a
   bench-only route of the launcher, `POST /bench/publish`, publishes `fragment` events
   through the app's broker (`app[SERVICE].broker.publish(job_channel(id), "fragment", ...)`) at
   `--rate` per second for `--seconds` seconds, each carrying its `time.time()` send stamp.
   Every client records receive time minus send stamp (same machine clock) for each event.
   Per N: delivery latency p50/p99/max, events delivered / expected, clients told to
   `resync` or cut off, the publisher's own lateness against its schedule (the server's
   event-loop lag), the server's CPU (% of one core) over the publishing window, the
   clients' CPU, and what other processes used meanwhile.
2. Status latency. `GET /api/status/{id}` every 20 ms, p50/p99/max: first idle (the runner
   warmed up by one short job, nothing running), then during a real transcription job
   (tiny.en on CPU, a `--job-minutes` espeak mp4 uploaded with `start=true`), polled until
   it completes; the ratio during/idle.

It prints figures and asserts nothing; they also go to bench/out/sse_fanout.json. The
machine is shared (2 cores here) and a foreign test run skews every figure, so other
pytest runs and the load average are recorded at start and end (`--wait-idle S` waits up
to S seconds for other pytest runs to end first).

    .venv/bin/python -m bench.sse_fanout [--subscribers 200,1000] [--rate 100] [--seconds 10]
                                         [--client-procs N] [--job-minutes 2]
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import add_wait_idle
from bench.pipeline import (
    CLK_TCK,
    cached_speech,
    machine_busy_seconds,
    other_test_runs,
    process_cpu_seconds,
    save_and_print,
    wait_until_idle,
)
from tests.media import make_long_speech, make_speech
from tests.procs import runner_pids
from tests.ui_helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
RESULT_FILE = OUT / "sse_fanout.json"

#: A fragment's text, about the size of one real segment.
TEXT = "We walked along the river until the sun went down, and then we turned back home."
#: Longest wait for a client to see the events after publishing ends (then they count lost).
GRACE_SECONDS = 15.0
STATUS_INTERVAL = 0.02
IDLE_SAMPLES = 400
FINAL = ("completed", "failed", "canceled")

log = logging.getLogger("bench.sse_fanout")


# --- small helpers -----------------------------------------------------------------------


def raise_fd_limit() -> None:
    """Thousands of sockets need more than the usual 1024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max in milliseconds (values in seconds)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def softirq_seconds() -> float:
    """Interrupt time on all CPUs since boot (loopback TCP work is largely softirq)."""
    ticks = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(ticks[5]) + int(ticks[6])) / CLK_TCK


def machine_state() -> dict[str, Any]:
    return {"pytest": other_test_runs(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


# --- the server (the `--serve` launcher, in its own process) -----------------------------


def serve(port: int, data_dir: Path, max_streams: int) -> None:
    """The vsrt app as `vsrt serve` runs it, plus `POST /bench/publish` (bench only)."""
    from aiohttp import web

    from vsrt_service.core.broker import job_channel
    from vsrt_service.core.config import load_settings
    from vsrt_service.web.app import create_app
    from vsrt_service.web.keys import SERVICE, STREAMS

    raise_fd_limit()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(
        env={},
        data_dir=data_dir,
        server={"host": "127.0.0.1", "port": port},
        sse={"max_connections_per_job": max_streams, "max_connections_per_client": max_streams},
        runners={"devices": ["cpu"]},
    )
    app = create_app(settings)

    async def publish(request: web.Request) -> web.Response:
        """Publish `fragment` events at `rate`/s for `seconds` s; answers when done."""
        channel = job_channel(request.query["job"])
        rate, seconds = float(request.query["rate"]), float(request.query["seconds"])
        count = round(rate * seconds)
        broker = request.app[SERVICE].broker
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.01
        late: list[float] = []
        subscribers = broker.subscribers(channel)
        for i in range(count):
            due = start + i / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            late.append(loop.time() - due)
            broker.publish(
                channel,
                "fragment",
                {
                    "segment_index": i,
                    "language": "en",
                    "segments": [{"id": i, "start": 2.0 * i, "end": 2.0 * i + 1.8, "text": TEXT}],
                    "sent": time.time(),
                },
            )
        return web.json_response(
            {
                "published": count,
                "subscribers_at_start": subscribers,
                "seconds": round(loop.time() - start, 3),
                "publisher_late": percentiles(late),
            }
        )

    async def streams(request: web.Request) -> web.Response:
        """Open event streams (health tells them only with a token)."""
        return web.json_response({"open_streams": request.app[STREAMS].open_streams()})

    app.router.add_post("/bench/publish", publish)
    app.router.add_get("/bench/streams", streams)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, shutdown_timeout=5.0, print=None)


class Server:
    """The launcher subprocess: started, awaited healthy, stopped (SIGTERM, then kill)."""

    def __init__(self, data_dir: Path, max_streams: int) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / "server.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.sse_fanout",
                "--serve",
                str(self.port),
                "--data-dir",
                str(data_dir),
                "--max-streams",
                str(max_streams),
            ],
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def cpu_seconds(self) -> float:
        """The server process's own CPU (all its threads; not its children)."""
        return process_cpu_seconds(self.proc.pid)

    def runner_cpu_seconds(self) -> float:
        """The server's runner subprocesses' CPU (kept out of the server's figure)."""
        return sum(process_cpu_seconds(p) for p in runner_pids(self.proc.pid))

    async def wait_ready(self, session: aiohttp.ClientSession, limit_s: float = 180) -> dict[str, Any]:
        """Health answers 200 and the runner is ready (its start-up CPU is over)."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}):\n{self.log_tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url}/api/health") as resp:
                    if resp.status == 200:
                        health: dict[str, Any] = await resp.json()
                        if health["runners"] and all(r["state"] == "ready" for r in health["runners"]):
                            return health
            await asyncio.sleep(0.25)
        raise RuntimeError(f"the server was not ready in {limit_s} s:\n{self.log_tail()}")

    async def wait_runner_quiet(self, limit_s: float = 180) -> float:
        """Wait until the runner has finished warming up (whisperx imported in a thread
        after it already reports ready): under 5 % CPU for two seconds running."""
        t0 = time.monotonic()
        quiet = 0
        while quiet < 2 and time.monotonic() - t0 < limit_s:
            before = self.runner_cpu_seconds()
            await asyncio.sleep(1.0)
            quiet = quiet + 1 if self.runner_cpu_seconds() - before < 0.05 else 0
        return round(time.monotonic() - t0, 1)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-3000:]
        return ""

    def stop(self) -> dict[str, Any]:
        """SIGTERM and wait; kill if it hangs; then no runner of it may remain."""
        pid = self.proc.pid
        runners = runner_pids(pid)
        how = "exited"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
                how = "SIGTERM"
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                how = "SIGKILL (SIGTERM did not stop it in 20 s)"
        self._log.close()
        deadline = time.monotonic() + 10
        # Runners still name the server as --parent-pid after it is gone.
        while (left := [p for p in runners if p in runner_pids(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        for p in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        return {"stopped_by": how, "returncode": self.proc.returncode, "runners_left_and_killed": left}


# --- client processes --------------------------------------------------------------------


@dataclass
class ClientStats:
    """What one client process saw, for its share of the subscribers."""

    connected: int = 0
    connect_errors: list[str] = field(default_factory=list)
    connect_seconds: float = 0.0
    latencies: bytes = b""  # array('d') of seconds, every delivered fragment
    delivered: list[int] = field(default_factory=list)  # distinct fragments per subscriber
    duplicates: int = 0
    out_of_order: int = 0
    resyncs: int = 0
    ended_early: int = 0  # streams that ended (EOF or error) before all the events
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


class Subscriber:
    """One SSE connection, parsed from raw chunks (no per-line reads)."""

    def __init__(self, expected: int, latencies: array.array[float]) -> None:
        self.expected = expected
        self.latencies = latencies
        self.seen: set[int] = set()
        self.last = -1
        self.duplicates = self.out_of_order = 0
        self.resynced = self.ended = False
        self.connected = asyncio.get_running_loop().create_future()
        self.done = asyncio.Event()

    def feed(self, block: bytes, received: float) -> None:
        name = b"message"
        data = b""
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if name == b"fragment":
            payload = json.loads(data)
            index = payload["segment_index"]
            self.latencies.append(received - payload["sent"])
            if index in self.seen:
                self.duplicates += 1
            elif index < self.last:
                self.out_of_order += 1
            self.seen.add(index)
            self.last = max(self.last, index)
            if len(self.seen) >= self.expected:
                self.done.set()
        elif name == b"connected" and not self.connected.done():
            self.connected.set_result(None)
        elif name == b"resync":
            self.resynced = True
            self.done.set()

    async def run(self, session: aiohttp.ClientSession, url: str) -> None:
        try:
            async with session.get(url) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                buffer = b""
                async for chunk in resp.content.iter_any():
                    received = time.time()
                    buffer += chunk
                    *blocks, buffer = buffer.split(b"\n\n")
                    for block in blocks:
                        self.feed(block, received)
                    if self.done.is_set():
                        return
        except Exception as exc:
            if not self.connected.done():
                self.connected.set_exception(exc)
        finally:
            if not self.done.is_set():
                self.ended = True
                self.done.set()
            if not self.connected.done():
                self.connected.set_exception(EOFError("stream ended before `connected`"))


async def _clients(url: str, n: int, expected: int, conn: Connection) -> ClientStats:
    stats = ClientStats()
    latencies: array.array[float] = array.array("d")
    loop = asyncio.get_running_loop()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60, sock_read=None)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        subs = [Subscriber(expected, latencies) for _ in range(n)]
        t0 = time.perf_counter()
        tasks = []
        for sub in subs:  # a few at a time: a burst of 1000 SYNs overflows the listen backlog
            tasks.append(asyncio.create_task(sub.run(session, url)))
            if len(tasks) % 50 == 0:
                await asyncio.sleep(0.01)
        results = await asyncio.gather(*(s.connected for s in subs), return_exceptions=True)
        stats.connect_seconds = round(time.perf_counter() - t0, 3)
        stats.connected = sum(1 for r in results if not isinstance(r, BaseException))
        stats.connect_errors = sorted({repr(r)[:200] for r in results if isinstance(r, BaseException)})
        conn.send(("ready", stats.connected))
        wait = await loop.run_in_executor(None, conn.recv)  # "go": publishing starts
        cpu0, wall0 = own_cpu_seconds(), time.perf_counter()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.gather(*(s.done.wait() for s in subs))
        stats.cpu_seconds = round(own_cpu_seconds() - cpu0, 3)
        stats.wall_seconds = round(time.perf_counter() - wall0, 3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    stats.latencies = latencies.tobytes()
    stats.delivered = [len(s.seen) for s in subs]
    stats.duplicates = sum(s.duplicates for s in subs)
    stats.out_of_order = sum(s.out_of_order for s in subs)
    stats.resyncs = sum(s.resynced for s in subs)
    stats.ended_early = sum(s.ended and not s.resynced for s in subs)
    return stats


def client_process(url: str, n: int, expected: int, conn: Connection) -> None:
    """Entry point of one client process: open `n` streams, report, read until told."""
    raise_fd_limit()
    try:
        conn.send(("result", asyncio.run(_clients(url, n, expected, conn))))
    except Exception as exc:  # reported to the parent, which prints it
        conn.send(("error", repr(exc)))
    finally:
        conn.close()


# --- part 1: fan-out ---------------------------------------------------------------------


async def recv(conn: Connection, limit_s: float) -> Any:
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(None, conn.poll, limit_s):
        raise TimeoutError("a client process did not answer")
    return conn.recv()


async def open_streams(session: aiohttp.ClientSession, server: Server) -> int:
    async with session.get(f"{server.url}/bench/streams") as resp:
        count: int = (await resp.json())["open_streams"]
        return count


async def fan_out(
    session: aiohttp.ClientSession,
    server: Server,
    job_id: str,
    n: int,
    procs: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    expected = round(rate * seconds)
    url = f"{server.url}/api/stream/{job_id}"
    ctx = multiprocessing.get_context("spawn")
    shares = [n // procs + (1 if i < n % procs else 0) for i in range(procs)]
    workers: list[tuple[Any, Connection]] = []
    try:
        for share in shares:
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=client_process, args=(url, share, expected, theirs), daemon=True)
            proc.start()
            theirs.close()
            workers.append((proc, ours))
        connected = 0
        for _, conn in workers:
            kind, value = await recv(conn, 180)
            if kind != "ready":
                raise RuntimeError(f"a client process failed: {value}")
            connected += value
        streams_open = await open_streams(session, server)
        await asyncio.sleep(0.5)  # let the connect burst settle

        busy0, server0, main0 = machine_busy_seconds(), server.cpu_seconds(), own_cpu_seconds()
        runner0, irq0 = server.runner_cpu_seconds(), softirq_seconds()
        t0 = time.perf_counter()
        for _, conn in workers:
            conn.send(seconds + GRACE_SECONDS)
        async with session.post(
            f"{server.url}/bench/publish", params={"job": job_id, "rate": str(rate), "seconds": str(seconds)}
        ) as resp:
            published = await resp.json()
        t_pub = time.perf_counter()
        server_pub = server.cpu_seconds()
        results: list[ClientStats] = []
        for _, conn in workers:
            kind, value = await recv(conn, seconds + GRACE_SECONDS + 60)
            if kind != "result":
                raise RuntimeError(f"a client process failed: {value}")
            results.append(value)
        t_end = time.perf_counter()
        server_end, main_end, busy_end = server.cpu_seconds(), own_cpu_seconds(), machine_busy_seconds()
        runner_cpu = server.runner_cpu_seconds() - runner0
        irq = softirq_seconds() - irq0
    finally:
        for proc, conn in workers:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()

    # the server notices the closed streams (its watcher checks every 0.2 s)
    t_close = time.perf_counter()
    for _ in range(300):
        left = await open_streams(session, server)
        if not left:
            break
        await asyncio.sleep(0.1)
    cleanup = time.perf_counter() - t_close

    latencies: list[float] = []
    for r in results:
        a: array.array[float] = array.array("d")
        a.frombytes(r.latencies)
        latencies.extend(a)
    delivered = [d for r in results for d in r.delivered]
    client_cpu = sum(r.cpu_seconds for r in results)
    client_wall = max(r.wall_seconds for r in results)
    window = t_end - t0
    return {
        "subscribers": n,
        "client_processes": procs,
        "connected": connected,
        "open_streams_on_server": streams_open,
        "connect_seconds": max(r.connect_seconds for r in results),
        "connect_errors": sorted({e for r in results for e in r.connect_errors}),
        "rate": rate,
        "seconds": seconds,
        "publish": published,
        "latency": percentiles(latencies),
        "latency_mean_ms": round(1000 * statistics.fmean(latencies), 2) if latencies else None,
        "expected_total": expected * n,
        "delivered_total": sum(delivered),
        "subscribers_complete": sum(1 for d in delivered if d >= expected),
        "subscribers_min_delivered": min(delivered) if delivered else 0,
        "resyncs": sum(r.resyncs for r in results),
        "ended_early": sum(r.ended_early for r in results),
        "duplicates": sum(r.duplicates for r in results),
        "out_of_order": sum(r.out_of_order for r in results),
        "window_seconds": round(window, 3),
        "drain_seconds_after_publish": round(t_end - t_pub, 3),
        "server_cpu_pct_publishing": round(100 * (server_pub - server0) / (t_pub - t0), 1),
        "server_cpu_pct_window": round(100 * (server_end - server0) / window, 1),
        "server_cpu_us_per_delivery": round(1e6 * (server_end - server0) / max(1, sum(delivered)), 2),
        "client_cpu_pct": round(100 * client_cpu / client_wall, 1),
        "client_cpu_pct_per_process": [round(100 * r.cpu_seconds / r.wall_seconds, 1) for r in results],
        "bench_main_cpu_pct": round(100 * (main_end - main0) / window, 1),
        "runner_cpu_pct": round(100 * runner_cpu / window, 1),
        "irq_softirq_cpu_pct": round(100 * irq / window, 1),
        "other_cpu_pct": round(
            100
            * max(
                0.0,
                (busy_end - busy0)
                - (server_end - server0)
                - client_cpu
                - (main_end - main0)
                - runner_cpu
                - irq,
            )
            / window,
            1,
        ),
        "streams_left_open_after_close": left,
        "stream_cleanup_seconds": round(cleanup, 2),
    }


# --- part 2: status latency --------------------------------------------------------------


async def upload(session: aiohttp.ClientSession, server: Server, path: Path, start: bool) -> str:
    form = aiohttp.FormData()
    form.add_field(
        "file",
        await asyncio.to_thread(path.read_bytes),
        filename=path.name,
        content_type="application/octet-stream",
    )
    async with session.post(
        f"{server.url}/api/jobs", params={"start": "true" if start else "false"}, data=form
    ) as resp:
        body = await resp.json()
        if resp.status != 201:
            raise RuntimeError(f"upload failed: {resp.status} {body}")
        job_id: str = body["job_id"]
        return job_id


async def status_once(session: aiohttp.ClientSession, server: Server, job_id: str) -> tuple[float, str]:
    t0 = time.perf_counter()
    async with session.get(f"{server.url}/api/status/{job_id}") as resp:
        body = await resp.json()
    return time.perf_counter() - t0, str(body["status"])


async def wait_final(session: aiohttp.ClientSession, server: Server, job_id: str, limit_s: float) -> str:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        _, status = await status_once(session, server, job_id)
        if status in FINAL:
            return status
        await asyncio.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not finish in {limit_s} s")


async def status_latency(
    session: aiohttp.ClientSession, server: Server, warm_job: str, long_path: Path, long_duration: float
) -> dict[str, Any]:
    # warm the runner (models loaded) with the short job, so "during" is a steady job
    async with session.post(f"{server.url}/api/start", json={"job_id": warm_job}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"could not start the warm-up job: {resp.status} {await resp.text()}")
    warm_status = await wait_final(session, server, warm_job, 300)
    await asyncio.sleep(1.0)

    idle: list[float] = []
    cpu0, t0 = server.cpu_seconds(), time.perf_counter()
    for _ in range(IDLE_SAMPLES):
        took, _ = await status_once(session, server, warm_job)
        idle.append(took)
        await asyncio.sleep(STATUS_INTERVAL)
    idle_cpu = 100 * (server.cpu_seconds() - cpu0) / (time.perf_counter() - t0)

    job_id = await upload(session, server, long_path, start=True)
    during: list[float] = []
    statuses: dict[str, int] = {}
    busy0, cpu0, t0 = machine_busy_seconds(), server.cpu_seconds(), time.perf_counter()
    status = "queued"
    while time.perf_counter() - t0 < 600:
        took, status = await status_once(session, server, job_id)
        if status in FINAL:
            break
        during.append(took)
        statuses[status] = statuses.get(status, 0) + 1
        await asyncio.sleep(STATUS_INTERVAL)
    job_seconds = time.perf_counter() - t0
    server_cpu = server.cpu_seconds() - cpu0
    busy = machine_busy_seconds() - busy0
    idle_p, during_p = percentiles(idle), percentiles(during)

    def ratio(key: str) -> float | None:
        a, b = idle_p[key], during_p[key]
        return round(b / a, 2) if a and b else None

    return {
        "warmup_job": {"job_id": warm_job, "status": warm_status},
        "interval_ms": 1000 * STATUS_INTERVAL,
        "idle": {"samples": len(idle), **idle_p, "server_cpu_pct": round(idle_cpu, 1)},
        "during": {
            "samples": len(during),
            **during_p,
            "statuses_seen": statuses,
            "job_id": job_id,
            "job_status": status,
            "job_seconds": round(job_seconds, 2),
            "audio_seconds": long_duration,
            "server_cpu_pct": round(100 * server_cpu / job_seconds, 1),
            "machine_cpu_pct": round(100 * busy / job_seconds, 1),
        },
        "ratio_during_over_idle": {"p50": ratio("p50_ms"), "p99": ratio("p99_ms"), "max": ratio("max_ms")},
    }


# --- report ------------------------------------------------------------------------------


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print()
    print(
        f"SSE fan-out: {cfg['rate']:g} fragment events/s for {cfg['seconds']:g} s into one job "
        f"channel, {report['machine']['cpus']} CPUs"
    )
    runs = report["fanout"]
    cols = [str(r["subscribers"]) for r in runs]
    rows: list[tuple[str, list[str]]] = [
        ("client processes", [str(r["client_processes"]) for r in runs]),
        ("connect all (s)", [f"{r['connect_seconds']:.2f}" for r in runs]),
        ("latency p50 (ms)", [f"{r['latency']['p50_ms']}" for r in runs]),
        ("latency p99 (ms)", [f"{r['latency']['p99_ms']}" for r in runs]),
        ("latency max (ms)", [f"{r['latency']['max_ms']}" for r in runs]),
        ("delivered / expected", [f"{r['delivered_total']}/{r['expected_total']}" for r in runs]),
        ("subscribers complete", [f"{r['subscribers_complete']}/{r['subscribers']}" for r in runs]),
        ("resync / ended early", [f"{r['resyncs']} / {r['ended_early']}" for r in runs]),
        ("dup / out of order", [f"{r['duplicates']} / {r['out_of_order']}" for r in runs]),
        (
            "publisher late p99/max",
            [
                f"{r['publish']['publisher_late']['p99_ms']}/{r['publish']['publisher_late']['max_ms']}"
                for r in runs
            ],
        ),
        ("publish took (s)", [f"{r['publish']['seconds']:.2f}" for r in runs]),
        ("drain after publish (s)", [f"{r['drain_seconds_after_publish']:.2f}" for r in runs]),
        ("server CPU % publishing", [f"{r['server_cpu_pct_publishing']}" for r in runs]),
        ("server CPU % to drained", [f"{r['server_cpu_pct_window']}" for r in runs]),
        ("server CPU us/delivery", [f"{r['server_cpu_us_per_delivery']}" for r in runs]),
        ("client CPU % (sum)", [f"{r['client_cpu_pct']}" for r in runs]),
        ("runner CPU % (idle)", [f"{r['runner_cpu_pct']}" for r in runs]),
        ("bench main CPU %", [f"{r['bench_main_cpu_pct']}" for r in runs]),
        ("irq + softirq CPU %", [f"{r['irq_softirq_cpu_pct']}" for r in runs]),
        ("other processes CPU %", [f"{r['other_cpu_pct']}" for r in runs]),
        ("stream cleanup (s)", [f"{r['stream_cleanup_seconds']}" for r in runs]),
    ]
    print(f"{'subscribers':26}" + "".join(f"{c:>16}" for c in cols))
    for name, values in rows:
        print(f"{name:26}" + "".join(f"{v:>16}" for v in values))
    s = report.get("status")
    if s:
        print()
        print(f"GET /api/status every {s['interval_ms']:g} ms        samples   p50 ms   p99 ms   max ms")
        for key in ("idle", "during"):
            d = s[key]
            print(f"  {key:34}{d['samples']:>7}{d['p50_ms']:>9}{d['p99_ms']:>9}{d['max_ms']:>9}")
        r = s["ratio_during_over_idle"]
        d = s["during"]
        print(f"  ratio during/idle: p50 {r['p50']}, p99 {r['p99']}, max {r['max']}")
        print(
            f"  job: {d['job_status']} in {d['job_seconds']:.1f} s ({d['audio_seconds']:.0f} s audio); "
            f"server CPU {d['server_cpu_pct']} % (idle {s['idle']['server_cpu_pct']} %), "
            f"machine {d['machine_cpu_pct']} %"
        )
    m = report["machine"]
    print()
    print(
        f"machine: pytest runs at start {m['start']['pytest']}, at end {m['end']['pytest']}; "
        f"load average {m['start']['loadavg']} -> {m['end']['loadavg']}"
    )
    print(
        f"server: stopped by {report['shutdown']['stopped_by']}, runners left "
        f"{report['shutdown']['runners_left_and_killed']}"
    )
    print(f"figures written to {RESULT_FILE.relative_to(ROOT)}")


# --- main --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    media = OUT / "media"
    short = cached_speech(media / "warmup.mp4", lambda p: make_speech(p))
    long = cached_speech(
        media / f"long-{args.job_minutes:g}m.mp4", lambda p: make_long_speech(p, args.job_minutes)
    )
    idle = await wait_until_idle(args.wait_idle)
    report: dict[str, Any] = {
        "config": {
            "subscribers": args.subscribers,
            "rate": args.rate,
            "seconds": args.seconds,
            "client_procs": args.client_procs,
            "job_minutes": args.job_minutes,
        },
        "machine": {"cpus": os.cpu_count(), "idle_at_start": idle, "start": machine_state()},
        "fanout": [],
    }
    with tempfile.TemporaryDirectory(prefix="vsrt-sse-bench-") as tmp:
        server = Server(Path(tmp) / "data", max_streams=max(args.subscribers) + 100)
        try:
            timeout = aiohttp.ClientTimeout(total=120)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                health = await server.wait_ready(session)
                quiet_after = await server.wait_runner_quiet()
                report["server"] = {
                    "pid": server.proc.pid,
                    "runners": health["runners"],
                    "runner_quiet_after_s": quiet_after,
                }
                job_id = await upload(session, server, short.path, start=False)
                for n in args.subscribers:
                    procs = args.client_procs or (1 if n <= 200 else 2)
                    print(
                        f"fan-out: {n} subscribers in {procs} client process(es), "
                        f"{args.rate:g}/s for {args.seconds:g} s ...",
                        flush=True,
                    )
                    result = await fan_out(session, server, job_id, n, procs, args.rate, args.seconds)
                    report["fanout"].append(result)
                    print(
                        f"    p50 {result['latency']['p50_ms']} ms, p99 {result['latency']['p99_ms']} ms, "
                        f"delivered {result['delivered_total']}/{result['expected_total']}, "
                        f"server CPU {result['server_cpu_pct_publishing']} %",
                        flush=True,
                    )
                if not args.no_status:
                    print(
                        f"status latency: idle, then during a job on {long.duration:.0f} s of audio ...",
                        flush=True,
                    )
                    report["status"] = await status_latency(session, server, job_id, long.path, long.duration)
        finally:
            report["shutdown"] = server.stop()
            report["server_log_tail"] = server.log_tail()[-2000:]
    report["machine"]["end"] = machine_state()
    return report


def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.sse_fanout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--subscribers",
        type=int_list,
        default=[200, 1000],
        help="comma-separated subscriber counts (default 200,1000)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="events per second (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time (default 10)")
    parser.add_argument(
        "--client-procs",
        type=int,
        default=0,
        help="client processes sharing the subscribers (default: 1 up to 200, else 2)",
    )
    parser.add_argument(
        "--job-minutes",
        type=float,
        default=2.0,
        help="length of the real job's speech for the status part (default 2)",
    )
    parser.add_argument("--no-status", action="store_true", help="skip the status-latency part")
    add_wait_idle(parser)
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--max-streams", type=int, default=5000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve, args.data_dir, args.max_streams)
        return 0
    if not args.subscribers or min(args.subscribers) < 1 or args.rate <= 0 or args.seconds <= 0:
        parser.error("--subscribers, --rate and --seconds must be positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    report = asyncio.run(bench(args))
    save_and_print(report, RESULT_FILE, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
