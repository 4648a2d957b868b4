"""The embeddable service: `async with Service(settings) as svc:` submit jobs, follow events.

It owns the resources in dependency order (store, broker, runner pool, scheduler) and
releases them in reverse. The CLI uses it directly; the aiohttp app wraps the same parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any

from .broker import Broker, Event
from .config import Settings, load_settings
from .cues import Cue
from .datadir import keep_tidy, lock_data_dir
from .formats import FORMATS, cues_from_json, render
from .manager import ModelManager
from .options import conflicts, parse_options
from .pipeline import JobContext, remove_job_files
from .pool import RunnerPool
from .scheduler import Scheduler, is_final
from .store import Job, Store

log = logging.getLogger("vsrt.service")

#: Signals after which a job's event stream has nothing more to say.
FINAL_SIGNALS = frozenset({"job_complete", "paused", "canceled"})


class ServiceError(Exception):
    """A request the service refuses; `status` is the HTTP status that fits."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


def is_final_event(ev: Event) -> bool:
    return ev.event == "error" or (ev.event == "signal" and ev.data.get("code") in FINAL_SIGNALS)


# --- resources, each opened and closed by one context manager ------------------------------
# The Service enters them in this order; the aiohttp app wraps each in its own cleanup_ctx.


@contextlib.asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[Store]:
    """The data directory, locked for this process first (DataDirLocked if another holds it),
    and kept tidy (leftovers, expired audio) while open."""
    async with lock_data_dir(settings.data_dir):
        for d in (settings.jobs_dir, settings.uploads_dir, settings.models_dir):
            await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
        async with Store.open(settings.database_path) as store, keep_tidy(settings, store):
            yield store


@contextlib.asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    broker = Broker(settings.sse.replay_buffer, settings.sse.subscriber_queue,
                    settings.sse.idle_channel_seconds)
    try:
        yield broker
    finally:
        broker.close()


@contextlib.asynccontextmanager
async def open_pool(settings: Settings, env: dict[str, str] | None = None) -> AsyncIterator[RunnerPool]:
    pool = RunnerPool(settings, env)
    await pool.start()
    try:
        yield pool
    finally:
        await asyncio.shield(pool.close())


@contextlib.asynccontextmanager
async def open_models(settings: Settings, store: Store, broker: Broker, pool: RunnerPool,
                      validate: bool = True) -> AsyncIterator[ModelManager]:
    manager = ModelManager(settings, store, broker, pool)
    await manager.start(validate)
    try:
        if settings.models.preload_on_start and pool.slots:
            await manager.preload()
        yield manager
    finally:
        await asyncio.shield(manager.close())


@contextlib.asynccontextmanager
async def open_scheduler(ctx: JobContext) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(ctx)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await asyncio.shield(scheduler.close())


class Service:
    def __init__(self, settings: Settings | None = None, *, runner_env: dict[str, str] | None = None):
        self.settings = settings or load_settings()
        self._runner_env = runner_env
        self._stack: contextlib.AsyncExitStack | None = None
        self.models: ModelManager
        self.store: Store
        self.broker: Broker
        self.pool: RunnerPool
        self.ctx: JobContext
        self.scheduler: Scheduler

    @classmethod
    def attach(cls, scheduler: Scheduler) -> Service:
        """A Service over resources someone else opened and will close (the aiohttp app)."""
        ctx = scheduler.ctx
        svc = cls(ctx.settings)
        svc.store, svc.broker, svc.pool, svc.models = ctx.store, ctx.broker, ctx.pool, ctx.models
        svc.scheduler, svc.ctx = scheduler, ctx
        return svc

    async def __aenter__(self) -> Service:
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            self.store = await stack.enter_async_context(open_store(s))
            self.broker = await stack.enter_async_context(open_broker(s))
            self.pool = await stack.enter_async_context(open_pool(s, self._runner_env))
            self.models = await stack.enter_async_context(
                open_models(s, self.store, self.broker, self.pool))
            self.ctx = JobContext(s, self.store, self.broker, self.pool, self.models)
            self.scheduler = await stack.enter_async_context(open_scheduler(self.ctx))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await asyncio.shield(stack.aclose())

    # --- jobs ----------------------------------------------------------------------------

    async def submit(
        self,
        path: str | Path,
        settings: dict[str, Any] | None = None,
        *,
        source_name: str | None = None,
        start: bool = True,
    ) -> Job:
        """Create a job for a file on this machine; queued unless `start` is False."""
        options = parse_options(settings, self.settings)
        file = Path(path)
        if not await asyncio.to_thread(file.is_file):
            raise ServiceError(400, "not_found", f"{file.name}: no such file", "path")
        resolved = await asyncio.to_thread(file.resolve)
        try:
            stored = str(resolved.relative_to(self.settings.data_dir))
        except ValueError:
            stored = str(resolved)
        job = await self.store.create_job(
            source_name=source_name or file.name,
            input_path=stored,
            settings=options.to_dict(),
            status="queued" if start else "paused",
        )
        if start:
            self.scheduler.wake()
        return job

    async def get(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise ServiceError(404, "not_found", f"no job {job_id}")
        return job

    async def events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's events, a `connected` snapshot first, until it ends (or is paused)."""
        sub, replayed = self.broker.subscribe(f"job:{job_id}", last_event_id)
        try:
            job = await self.get(job_id)
            if not replayed:
                yield Event(f"job:{job_id}", sub.opened_at, "connected", {
                    "job_id": job.id, "status": job.status, "phase": job.phase,
                    "percent": round(job.percent, 2), "message": job.message,
                })
                if job.status not in ("queued", "processing"):
                    return
            async for ev in sub:
                yield ev
                if is_final_event(ev):
                    return
        finally:
            sub.close()

    async def wait(self, job_id: str) -> Job:
        """Wait until the job completes, fails, is canceled or paused; returns it."""
        async for _ in self.events(job_id):
            pass
        return await self.get(job_id)

    async def pause(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.status == "processing":
            if not await self.scheduler.stop(job_id, "paused"):
                raise ServiceError(409, "not_here", "the job is running in another process")
        elif job.status == "queued":
            await self.store.set_status(job_id, "paused", "paused")
            self.ctx.publish(job_id, "signal", {"code": "paused", "message": "job paused"})
        elif job.status != "paused":
            raise ServiceError(409, "not_running", f"a {job.status} job cannot be paused")
        return await self.get(job_id)

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if is_final(job.status):
            raise ServiceError(409, "finished", f"the job is already {job.status}")
        if job.status == "processing":
            if not await self.scheduler.stop(job_id, "canceled"):
                raise ServiceError(409, "not_here", "the job is running in another process")
        else:
            await self.store.set_status(job_id, "canceled", "canceled")
            self.ctx.publish(job_id, "signal", {"code": "canceled", "message": "job canceled"})
        return await self.get(job_id)

    def resume_conflicts(self, job: Job, settings: dict[str, Any] | None) -> list[dict[str, Any]]:
        options = parse_options(settings, self.settings, base=job.settings)
        return conflicts(job.checkpoint_settings, options)

    async def resume(
        self, job_id: str, settings: dict[str, Any] | None = None, *, restart: bool = False
    ) -> Job:
        """Queue the job again. Locked settings are forced back to the checkpoint's unless
        `restart`, which throws the checkpoint away and starts over with the new settings."""
        job = await self.get(job_id)
        if job.status == "processing":
            raise ServiceError(409, "running", "the job is already running")
        options = parse_options(settings, self.settings, base=job.settings)
        values = options.to_dict()
        if restart:
            await self.store.reset_job(job_id)
            await asyncio.to_thread(remove_job_files, self.ctx.job_dir(job_id))
        elif job.checkpoint_settings:
            values.update({k: v for k, v in job.checkpoint_settings.items() if k in values})
        await self.store.update_settings(job_id, values)
        job = await self.store.set_status(job_id, "queued", "queued", reset_attempts=True)
        self.scheduler.wake()
        return job

    async def delete(self, job_id: str) -> None:
        job = await self.get(job_id)
        if job.status == "processing":
            await self.scheduler.stop(job_id, "canceled")
        await self.store.delete_job(job_id)
        await asyncio.to_thread(remove_job_files, self.ctx.job_dir(job_id))
        self.broker.drop_channel(f"job:{job_id}")

    # --- results -------------------------------------------------------------------------

    async def subtitles(self, job_id: str, fmt: str = "srt") -> str:
        """The subtitles in a format: the user's edited cues when saved, else the machine's."""
        if fmt not in FORMATS:
            raise ServiceError(400, "bad_format", f"format must be one of {', '.join(FORMATS)}", "format")
        job = await self.get(job_id)
        edited = await self.store.edited_cues(job_id)
        if edited is not None:
            return render(fmt, cues_from_json(edited), {"job_id": job_id, "edited": True})
        path = self.ctx.job_dir(job_id) / f"subtitles.{fmt}"
        if job.status != "completed" or not await asyncio.to_thread(path.is_file):
            raise ServiceError(409, "not_ready", "the subtitles are not ready yet")
        return await asyncio.to_thread(path.read_text, encoding="utf-8")

    async def save_edited_cues(self, job_id: str, items: Any) -> list[Cue]:
        await self.get(job_id)
        try:
            cues = cues_from_json(items)
        except ValueError as exc:
            raise ServiceError(400, "bad_cues", str(exc), "cues") from None
        await self.store.save_edited_cues(
            job_id, [{"start": c.start, "end": c.end, "text": c.text} for c in cues]
        )
        return cues

    def models_in_use(self) -> set[str]:
        """Model keys that running jobs depend on (their deletion is refused)."""
        keys: set[str] = set()
        for job_id in self.scheduler.running():
            settings = self.scheduler.settings_of(job_id)
            if settings:
                keys.add(f"whisper:{settings.get('model')}")
                if settings.get("language"):
                    keys.add(f"align:{settings['language']}")
        return keys

    def health(self) -> dict[str, Any]:
        return {"runners": self.pool.health(), "running_jobs": self.scheduler.running()}
