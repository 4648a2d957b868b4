"""Runner pool: supervised `python -m gpu_runner` subprocesses spoken to over asyncio pipes.

Each slot keeps one runner alive: spawn, handshake, heartbeat, and on death or a missed
heartbeat kill it, fail whatever was in flight with `RunnerLost`, and restart with backoff.
Jobs take a slot exclusively with `lease()`; light calls (ping, cache status) go to any.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from vsrt_service.core import protocol as p
from vsrt_service.core.config import RunnerSettings, Settings
from vsrt_service.core.errors import VsrtError

log = logging.getLogger("vsrt.pool")

ReplyHandler = Callable[[p.Reply], Awaitable[None]]

#: The runner program; the pool appends its options (device, threads, ...).
RUNNER_PROGRAM = (sys.executable, "-m", "gpu_runner")


class RunnerError(VsrtError):
    """The runner answered a request with an error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class RunnerLost(Exception):
    """The runner died or hung while a request was in flight."""


class PoolClosed(Exception):
    """The pool is shutting down."""


#: Requests the runner's main thread answers at once with a small reply; any other is work.
CONTROL_REQUESTS = (p.Hello, p.Ping, p.Cancel, p.Unload, p.Shutdown)


@dataclass
class _Call:
    replies: asyncio.Queue[p.Reply | BaseException] = field(default_factory=asyncio.Queue)
    #: Nobody waits for its replies any more; it stays until the runner has ended it.
    abandoned: bool = False
    work: bool = True


_ids = itertools.count(1)


def new_id() -> str:
    return f"r{next(_ids)}"


def cpu_threads(cfg: RunnerSettings) -> int:
    """Threads for each CPU runner: as configured, else the cores this process may use shared
    among the CPU runners, at most 4 (whisperx's default; more threads than cores is slower)."""
    if cfg.cpu_threads:
        return cfg.cpu_threads
    cpu_runners = sum(1 for device in cfg.devices if device == "cpu") or 1
    return max(1, min(4, len(os.sched_getaffinity(0)) // cpu_runners))


class RunnerSlot:
    """One supervised runner; the process behind it changes across restarts."""

    def __init__(
        self,
        index: int,
        device: str,
        settings: Settings,
        env: dict[str, str],
        wake: asyncio.Event,
        role: str = "work",
        program: Sequence[str] = RUNNER_PROGRAM,
    ) -> None:
        self.program = tuple(program)
        self._wake = wake
        self.role = role
        self.name = f"runner-{index}" if role == "work" else "downloader"
        self.device = device
        self._settings = settings
        self._env = env
        self._proc: asyncio.subprocess.Process | None = None
        self._calls: dict[str, _Call] = {}
        self._write_lock = asyncio.Lock()
        self.ready = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.leased = False
        self.state = "starting"
        self.restarts = 0
        self.info: p.HelloResult | None = None
        #: Whether the runner has finished importing its libraries (whisperx takes seconds);
        #: a ready runner accepts work before that, which then waits for the import.
        self.warm = False
        self.last_error: str | None = None
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._closing = False
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def health(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "role": self.role,
            "device": self.device,
            "state": self.state,
            "warm": self.warm,
            "pid": self.pid,
            "busy": self.leased,
            "restarts": self.restarts,
            "last_error": self.last_error,
            "versions": self.info["versions"] if self.info else None,
        }

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._supervisor = asyncio.create_task(self._supervise(), name=f"{self.name}-supervisor")

    async def close(self, grace: float = 5.0) -> None:
        """Ask the runner to exit, then terminate, then kill; always reap it."""
        self._closing = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.call(p.Shutdown(id=new_id())), timeout=grace)
            await _reap(proc, grace)
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        self.state = "stopped"

    async def _supervise(self) -> None:
        backoff = self._settings.runners.restart_backoff_initial
        loop = asyncio.get_running_loop()
        while not self._closing:
            started = loop.time()
            try:
                await self._spawn()
                await self._monitor()
            except asyncio.CancelledError:
                await asyncio.shield(self._lose("runner stopped"))
                raise
            except Exception as exc:
                if self._closing:  # the loss is ours: close() stopped it
                    await self._lose("runner stopped")
                    return
                self.last_error = str(exc) or type(exc).__name__
                log.warning("%s: %s", self.name, self.last_error)
            await self._lose(self.last_error or "runner exited")
            if self._closing:
                return
            if loop.time() - started > 60:
                backoff = self._settings.runners.restart_backoff_initial
            self.state = "restarting"
            self.restarts += 1
            log.warning("%s: restarting in %.1f s", self.name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._settings.runners.restart_backoff_max)

    async def _spawn(self) -> None:
        cfg = self._settings.runners
        self.state = "starting"
        nltk_dir = self._settings.models_dir / "nltk"
        self._proc = await asyncio.create_subprocess_exec(
            *self.program,
            "--device",
            self.device,
            "--compute-type",
            cfg.compute_type,
            "--cpu-threads",
            str(cpu_threads(cfg)),
            "--cache-size",
            str(cfg.model_cache_size),
            "--parent-pid",
            str(os.getpid()),
            "--nltk-data",
            str(nltk_dir),
            "--role",
            self.role,
            "--nice",
            str(cfg.nice),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._env,
            limit=p.MAX_LINE_BYTES,
            start_new_session=True,  # Ctrl-C in a terminal reaches the service, not the runner
        )
        self._readers = [
            asyncio.create_task(self._read_stdout(self._proc), name=f"{self.name}-stdout"),
            asyncio.create_task(self._read_stderr(self._proc), name=f"{self.name}-stderr"),
        ]
        try:
            info = await asyncio.wait_for(self.call(p.Hello(id=new_id())), cfg.start_timeout)
        except TimeoutError:
            raise RunnerLost(
                f"{self.name} did not answer its handshake in {cfg.start_timeout:.0f} s"
            ) from None
        if not info.get("compatible"):
            self._closing = True
            raise RunnerLost(
                f"{self.name} speaks protocol {info.get('protocol_version')}, "
                f"the service {p.PROTOCOL_VERSION}"
            )
        self.info = info  # last_error stays: health shows why the latest restart happened
        self.warm = bool(info.get("warm"))
        self.state = "ready"
        self.ready.set()
        self._wake.set()
        log.info("%s ready (pid %s, %s)", self.name, info.get("pid"), info.get("device"))

    async def _monitor(self) -> None:
        """Heartbeat until the process ends or stops answering; then it is killed."""
        proc = self._proc
        assert proc is not None
        cfg = self._settings.runners
        while True:
            exited = asyncio.ensure_future(proc.wait())
            done, _ = await asyncio.wait({exited}, timeout=cfg.heartbeat_interval)
            if done:
                raise RunnerLost(f"{self.name} exited with status {proc.returncode}{self._tail()}")
            exited.cancel()
            try:
                pong = await asyncio.wait_for(self.call(p.Ping(id=new_id())), cfg.heartbeat_timeout)
                self.warm = bool(pong.get("warm"))
            except TimeoutError:
                raise RunnerLost(
                    f"{self.name} missed its heartbeat for {cfg.heartbeat_timeout:.0f} s; killed"
                ) from None

    def _tail(self) -> str:
        lines = [line for line in self.stderr_tail if line.strip()][-3:]
        return (": " + " | ".join(lines)) if lines else ""

    async def _lose(self, reason: str) -> None:
        """Kill and reap the process, and fail every call in flight."""
        self.ready.clear()
        self.warm = False
        proc = self._proc
        if proc is not None:
            await _reap(proc, 0)
            for task in getattr(self, "_readers", []):
                task.cancel()
        for call in self._calls.values():
            call.replies.put_nowait(RunnerLost(reason))
        self._calls.clear()
        self.idle.set()
        self._wake.set()

    # --- I/O ---------------------------------------------------------------------------

    async def _read_stdout(self, proc: asyncio.subprocess.Process) -> None:
        stream = proc.stdout
        assert stream is not None
        while True:
            try:
                line = await stream.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # end of output
                if not exc.partial:
                    return
                line = exc.partial
            except asyncio.LimitOverrunError:
                await _skip_line(stream)
                self._cut_work_calls()
                continue
            try:
                # A big reply (an aligned transcript) is decoded in a thread, item by item, so
                # the loop runs meanwhile; the next line waits for it, so replies keep their order.
                if len(line) > p.BIG_LINE_BYTES:
                    msg = await asyncio.to_thread(p.decode_reply, line)
                else:
                    msg = p.decode_reply(line)
            except p.ProtocolError as exc:
                log.warning("%s: malformed line ignored: %s", self.name, exc)
                continue
            call = self._calls.get(msg.id)
            if call is None:
                if isinstance(msg, p.Error) and not msg.id:
                    log.warning("%s refused a request: %s", self.name, msg.message)
                continue
            if isinstance(msg, p.Result | p.Error):
                self._end(msg.id)
            if not call.abandoned:
                call.replies.put_nowait(msg)

    def _end(self, req_id: str) -> None:
        """Forget a call the runner has ended; the slot is idle once no abandoned call is left."""
        self._calls.pop(req_id, None)
        if not any(c.abandoned for c in self._calls.values()):
            self.idle.set()
            self._wake.set()

    def _cut_work_calls(self) -> None:
        """A reply line over the limit was dropped. Its id is unknown, so every work call in
        flight fails (a work runner has one at a time: a job holds its lease; at most a
        preload's load may wait beside it). Each stays in flight, the slot busy, until the
        runner confirms the request has ended (`_settle`)."""
        cut = [(req_id, c) for req_id, c in self._calls.items() if c.work]
        log.error(
            "%s: dropped a reply line over %d bytes; failing %s",
            self.name,
            p.MAX_LINE_BYTES,
            ", ".join(req_id for req_id, _ in cut) or "no call",
        )
        for req_id, call in cut:
            if not call.abandoned:
                call.replies.put_nowait(
                    RunnerError(
                        "reply_too_large",
                        f"{self.name} sent a reply over the {p.MAX_LINE_BYTES >> 20} MiB line limit; "
                        "the request was stopped",
                    )
                )
                call.abandoned = True
            self.idle.clear()
            task = asyncio.create_task(self._settle(req_id), name=f"{self.name}-settle-{req_id}")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _settle(self, req_id: str) -> None:
        """Cancel a cut request. If the runner has nothing to cancel, the cut line was its
        last reply and the call ends now; otherwise its final reply (soon) ends it."""
        try:
            answer = await asyncio.wait_for(
                self.call(p.Cancel(id=new_id(), target=req_id)), self._settings.runners.heartbeat_timeout
            )
        except (RunnerError, RunnerLost, TimeoutError):
            return  # a runner that does not answer is restarted, which ends every call
        if not answer.get("canceled") and req_id in self._calls:
            self._end(req_id)

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        runner_log = logging.getLogger(f"vsrt.{self.name}")
        async for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            self.stderr_tail.append(line)
            runner_log.debug("%s", line)

    async def _send(self, req: p.Request) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None:
            raise RunnerLost(f"{self.name} is not running")
        async with self._write_lock:
            try:
                proc.stdin.write(p.encode(req))
                await proc.stdin.drain()
            except (ConnectionError, RuntimeError) as exc:
                raise RunnerLost(f"{self.name}: {exc}") from None

    async def call(self, req: p.Request[p.R], on_reply: ReplyHandler | None = None) -> p.R:
        """Send a request and return its result; interim replies go to `on_reply` in order.

        Raises RunnerError for an error reply and RunnerLost if the runner dies. If the
        caller is cancelled, the runner is told to cancel and the slot stays busy until the
        runner has really stopped.
        """
        call = _Call(work=not isinstance(req, CONTROL_REQUESTS))
        self._calls[req.id] = call
        try:
            await self._send(req)
            while True:
                msg = await call.replies.get()
                if isinstance(msg, BaseException):
                    raise msg
                if isinstance(msg, p.Result):
                    return cast(p.R, msg.data)  # the runner answers each kind with its `Result`
                if isinstance(msg, p.Error):
                    raise RunnerError(msg.code, msg.message)
                if on_reply is not None:
                    await on_reply(msg)
        except asyncio.CancelledError:
            if req.id in self._calls:
                call.abandoned = True
                self.idle.clear()
                with contextlib.suppress(RunnerLost):
                    await asyncio.shield(self._send(p.Cancel(id=new_id(), target=req.id)))
            raise
        finally:
            if not call.abandoned:
                self._calls.pop(req.id, None)


async def _skip_line(stream: asyncio.StreamReader) -> None:
    """Discard the rest of a line over the stream's limit, through its newline.

    `readuntil` raised LimitOverrunError and left the data buffered: `consumed` bytes hold no
    newline (all of them, when none was found yet), so they go, and the search resumes.
    (`readline` would instead drop the buffer and return the line's tail as the next line.)
    """
    while True:
        try:
            await stream.readuntil(b"\n")
            return
        except asyncio.LimitOverrunError as exc:
            await stream.readexactly(exc.consumed)
        except asyncio.IncompleteReadError:
            return


async def _reap(proc: asyncio.subprocess.Process, grace: float) -> None:
    """Terminate (after `grace` s of waiting for a voluntary exit), wait, then kill."""
    if proc.returncode is None and grace > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.returncode is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 3)
    for stream in (proc.stdin,):
        if stream is not None:
            stream.close()


class RunnerPool:
    """The configured runners, and exclusive leases on them for jobs.

    With `runners.enabled` false it has no work slot and never starts its download runner:
    no subprocess at all (callers check `enabled` before waiting for the downloader).
    """

    def __init__(
        self, settings: Settings, env: dict[str, str] | None = None, work_runners: bool = True
    ) -> None:
        base_env = dict(os.environ if env is None else env)
        base_env.setdefault("PYTHONUNBUFFERED", "1")
        self._wake = asyncio.Event()
        self.enabled = settings.runners.enabled
        devices = settings.runners.devices if work_runners and self.enabled else ()
        self.slots = [
            RunnerSlot(i, device, settings, base_env, self._wake) for i, device in enumerate(devices)
        ]
        #: Fetches models only: never leased to jobs, so a download never waits for them.
        self.downloader = RunnerSlot(len(self.slots), "cpu", settings, base_env, self._wake, "download")
        self._closing = False

    def _all(self) -> list[RunnerSlot]:
        """The slots this pool runs: none when runners are disabled."""
        return [*self.slots, self.downloader] if self.enabled else []

    async def start(self) -> None:
        """Spawn the runners without waiting for them (start-up stays fast)."""
        for slot in self._all():
            slot.start()

    async def wait_ready(self, within: float | None = None) -> None:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in self.slots)), within)

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        await asyncio.gather(*(slot.close() for slot in self._all()))

    def health(self) -> list[dict[str, Any]]:
        return [slot.health() for slot in self._all()]

    def _free_slot(self) -> RunnerSlot | None:
        for slot in self.slots:
            if not slot.leased and slot.ready.is_set() and slot.idle.is_set():
                return slot
        return None

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[RunnerSlot]:
        """Exclusive use of a ready, idle runner for the duration of a job step."""
        while True:
            if self._closing:
                raise PoolClosed("the runner pool is shutting down")
            slot = self._free_slot()
            if slot is not None:
                break
            self._wake.clear()  # no await since the check: no wake-up can be missed
            await self._wake.wait()
        slot.leased = True
        try:
            yield slot
        finally:
            slot.leased = False
            self._wake.set()

    async def broadcast(self, make: Callable[[], p.Request[p.R]]) -> list[p.R | BaseException]:
        """Send a request to every ready runner (e.g. unload), collecting results or errors."""
        ready = [s for s in self.slots if s.ready.is_set()]
        return await asyncio.gather(*(s.call(make()) for s in ready), return_exceptions=True)
