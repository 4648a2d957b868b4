"""The scheduler: claims queued jobs under a lease, runs them, writes their final state.

Modelled on arq's worker: one task per job, explicit (Exception, CancelledError) handling,
the final state written under `asyncio.shield` so a cancellation cannot lose it. A job whose
owner vanished (its lease ran out, or its process on this host is gone) is taken up again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from typing import Any

from .options import OptionError
from .pipeline import JobContext, JobFailed, JobRun, Requeue
from .pool import PoolClosed
from .store import FINAL, Job

log = logging.getLogger("vsrt.scheduler")


def _owner_alive(owner: str | None, me: str) -> bool:
    """Whether the holder of a lease still runs (knowable only on this host)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host: trust its lease until it expires
    if int(pid) == os.getpid():
        return owner == me  # an earlier service object in this same process is gone
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Scheduler:
    def __init__(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._settings: dict[str, dict[str, Any]] = {}
        self._stop_reason: dict[str, str] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        #: When set, only these jobs are taken (the CLI runs its own files, not the queue).
        self.only: set[str] | None = None

    @property
    def capacity(self) -> int:
        return len(self.ctx.pool.slots)

    def running(self) -> list[str]:
        return list(self._tasks)

    def settings_of(self, job_id: str) -> dict[str, Any] | None:
        """The settings a running job uses (with its detected language once known)."""
        return self._settings.get(job_id)

    async def start(self) -> None:
        await self._take_over_orphans()
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def close(self) -> None:
        """Stop claiming; interrupt running jobs, which go back to the queue for next time."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for job_id, task in list(self._tasks.items()):
            self._stop_reason.setdefault(job_id, "shutdown")
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    def wake(self) -> None:
        self._wake.set()

    async def _take_over_orphans(self) -> None:
        """Jobs left `processing` by a dead process on this host resume at once."""
        for job_id in await self.ctx.store.interrupted_jobs():
            job = await self.ctx.store.get_job(job_id)
            if job is not None and not _owner_alive(job.lease_owner, self.owner):
                await self.ctx.store.set_status(
                    job_id, "queued", "interrupted; resuming from the checkpoint"
                )

    async def _loop(self) -> None:
        lease = self.ctx.settings.jobs.lease_seconds
        while not self._closing:
            while len(self._tasks) < self.capacity:
                job = await self.ctx.store.claim_next(self.owner, lease, self.only)
                if job is None:
                    break
                language = job.language or job.settings.get("language")
                self._settings[job.id] = {**job.settings, "language": language}
                self._tasks[job.id] = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(1.0, lease / 3))

    # --- control ---------------------------------------------------------------------------

    async def stop(self, job_id: str, reason: str) -> bool:
        """Pause or cancel a running job; returns False if it was not running here."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        self._stop_reason[job_id] = reason
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(task)
        return True

    # --- one job ---------------------------------------------------------------------------

    async def _renew(self, job_id: str, task: asyncio.Task[None]) -> None:
        lease = self.ctx.settings.jobs.lease_seconds
        while True:
            await asyncio.sleep(lease / 3)
            if not await self.ctx.store.renew_lease(job_id, self.owner, lease):
                log.warning("job %s: lease lost to another worker; stopping here", job_id)
                self._stop_reason[job_id] = "lease_lost"
                task.cancel()
                return

    async def _run(self, job: Job) -> None:
        task = asyncio.current_task()
        assert task is not None
        renewer = asyncio.create_task(self._renew(job.id, task))
        outcome: tuple[str, str, str | None] = ("failed", "internal error", "internal")
        try:
            if job.attempts > self.ctx.settings.jobs.max_attempts:
                raise JobFailed(
                    "too_many_attempts",
                    f"gave up after {job.attempts - 1} attempts (the job keeps being interrupted)",
                )
            await JobRun(self.ctx, job).run()
            outcome = ("completed", "done", None)
        except Requeue as exc:
            outcome = ("queued", str(exc), None)
        except JobFailed as exc:
            outcome = ("failed", str(exc), exc.code)
        except OptionError as exc:
            outcome = ("failed", f"invalid setting {exc.field}: {exc}", "bad_settings")
        except PoolClosed:
            outcome = ("queued", "interrupted by shutdown; resumes at next start", None)
        except asyncio.CancelledError:
            reason = self._stop_reason.get(job.id, "shutdown")
            outcome = {
                "paused": ("paused", "paused", None),
                "canceled": ("canceled", "canceled", None),
                "lease_lost": ("", "", None),
            }.get(reason, ("queued", "interrupted by shutdown; resumes at next start", None))
            raise
        except Exception as exc:
            log.exception("job %s failed", job.id)
            outcome = ("failed", f"internal error: {type(exc).__name__}: {exc}", "internal")
        finally:
            renewer.cancel()
            await asyncio.shield(self._finish(job.id, *outcome))
            self._tasks.pop(job.id, None)
            self._settings.pop(job.id, None)
            self._stop_reason.pop(job.id, None)
            if not self._closing:
                self.wake()

    async def _finish(self, job_id: str, status: str, message: str, code: str | None) -> None:
        """Commit the final state, then tell subscribers."""
        if not status:
            return
        store = self.ctx.store
        try:
            if await store.get_job(job_id) is None:
                return  # deleted while running
            if status == "completed":
                job = await store.set_status(job_id, "completed", "done", phase="srt", percent=100.0)
                self.ctx.publish(job_id, "progress", {
                    "phase": "srt", "percent": 100.0, "message": "done",
                    "processed": job.processed, "total": job.total,
                })
                self.ctx.publish(job_id, "signal", {"code": "job_complete", "message": "subtitles ready"})
            elif status == "failed":
                await store.set_status(job_id, "failed", message, error_code=code, error=message)
                self.ctx.publish(job_id, "error", {"code": code or "failed", "message": message})
            elif status in ("paused", "canceled"):
                await store.set_status(job_id, status, status)
                self.ctx.publish(job_id, "signal", {"code": status, "message": f"job {status}"})
            else:
                await store.set_status(job_id, "queued", message)
                self.ctx.publish(job_id, "signal", {"code": "requeued", "message": message})
        except Exception:
            log.exception("job %s: could not record its final state %s", job_id, status)


def is_final(status: str) -> bool:
    return status in FINAL
