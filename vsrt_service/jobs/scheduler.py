"""The scheduler: claims queued jobs under a lease, runs them, writes their final state.

Modelled on arq's worker. Each claimed job has two tasks: the pipeline, which stop requests
cancel, and a supervisor that waits for it, is never cancelled by them, and writes the final
state (settled, so no cancellation can cut it short). Stop requests merge, the strongest
winning (a cancel after a pause cancels), and bookkeeping is dropped by a done-callback, so
it is right under any interleaving of pause, cancel, delete, lease loss and shutdown. A job
whose owner vanished (its lease ran out, or its process on this host is gone) is taken up
again.

Other processes (nodes on one database) stop a job through the store (`request_stop`); the
owner hears of it from `JobStore.watch` at once, or at its next lease renewal, and stops the
run as a local stop. `watch` also wakes an idle scheduler when a job is queued anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from vsrt_service.core.aio import settle
from vsrt_service.core.options import OptionError
from vsrt_service.core.redact import public_text
from vsrt_service.core.vocab import Phase, Signal
from vsrt_service.jobs.pipeline import JobContext, JobFailed, JobRun, Requeue
from vsrt_service.jobs.store import Job, JobStatus
from vsrt_service.runners.pool import PoolClosed

log = logging.getLogger("vsrt.scheduler")


class Stop(IntEnum):
    """Why a running job is being stopped; a stronger reason overrides a weaker one."""

    SHUTDOWN = 1  # back to the queue, resumes at the next start
    PAUSED = 2
    CANCELED = 3
    LEASE_LOST = 4  # another worker owns the job now: write nothing


@dataclass(frozen=True)
class Outcome:
    """The final state a run leaves; `status` None leaves the job to its new owner."""

    status: JobStatus | None
    message: str = ""
    code: str | None = None


REQUEUED = Outcome(JobStatus.QUEUED, "interrupted by shutdown; resumes at next start")
#: A stop request stored with a job (`Job.stop_request`) -> the stop its owner carries out.
REQUESTED_STOPS = {JobStatus.PAUSED: Stop.PAUSED, JobStatus.CANCELED: Stop.CANCELED}
STOP_OUTCOMES = {
    Stop.SHUTDOWN: REQUEUED,
    Stop.PAUSED: Outcome(JobStatus.PAUSED, "paused"),
    Stop.CANCELED: Outcome(JobStatus.CANCELED, "canceled"),
    Stop.LEASE_LOST: Outcome(None),
}


@dataclass(eq=False)
class Running:
    """One claimed job on this scheduler."""

    job: Job
    options: dict[str, Any]
    pipeline: asyncio.Task[None]
    supervisor: asyncio.Task[None] | None = None
    stop: Stop | None = None
    decided: bool = False  # the final state is chosen (maybe not yet written); stops come too late
    #: Until when (loop time) the lease surely holds: from before the claim or the last renewal.
    held_until: float = 0.0


def final_event(job: Job) -> tuple[str, dict[str, Any]] | None:
    """The event that tells a job's followers it ended (None while it is queued or runs)."""
    match job.status:
        case JobStatus.COMPLETED:
            return "signal", {"code": Signal.JOB_COMPLETE, "message": "subtitles ready"}
        case JobStatus.FAILED:
            return "error", {"code": job.error_code or "failed", "message": job.error or job.message}
        case JobStatus.PAUSED | JobStatus.CANCELED:
            return "signal", {"code": Signal(job.status), "message": f"job {job.status}"}
    return None


def _owner_alive(owner: str | None, me: str, lease_expires: float | None = None) -> bool:
    """Whether the holder of a lease still runs (knowable only on this host)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True  # another host: trust its lease until it expires
    if int(pid) == os.getpid():
        # Another scheduler of this process (two services on one shared store) renews its
        # lease while it lives; an earlier one that is gone stopped renewing.
        return owner == me or (lease_expires is not None and lease_expires > time.time())
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


class Scheduler:
    def __init__(self, ctx: JobContext, restrict_to: set[str] | None = None) -> None:
        self.ctx = ctx
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[str, Running] = {}
        #: Held while a claim is between the database and `_running`, so a stop request
        #: never finds a job claimed by this scheduler but not yet known to it.
        self._claiming = asyncio.Lock()
        self._wake = asyncio.Event()
        self._watching = contextlib.AsyncExitStack()
        #: Reads of the store after a stop request was announced, kept until they are done.
        self._lookups: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closing = False
        #: When set, only these jobs are taken (the CLI runs its own files, not the queue).
        self.restrict_to = restrict_to

    @property
    def capacity(self) -> int:
        return len(self.ctx.pool.slots)

    def running(self) -> list[str]:
        return list(self._running)

    def options_of(self, job_id: str) -> dict[str, Any] | None:
        """The options a running job uses (with its detected language once known)."""
        run = self._running.get(job_id)
        return run.options if run else None

    async def start(self) -> None:
        await self._watching.enter_async_context(self.ctx.store.watch(self._stop_asked, self.wake))
        try:
            await self._take_over_orphans()
        except BaseException:  # not started, so never closed: give the listening connection back
            await asyncio.shield(self._watching.aclose())
            raise
        self._loop_task = asyncio.create_task(self._loop(), name="scheduler")

    async def close(self) -> None:
        """Stop claiming; interrupt running jobs, which go back to the queue for next time."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            await asyncio.wait({self._loop_task})
        await self._watching.aclose()
        for lookup in list(self._lookups):
            lookup.cancel()
        if self._lookups:
            await asyncio.wait(set(self._lookups))
        runs = list(self._running.values())
        for run in runs:
            self._request_stop(run, Stop.SHUTDOWN)
        supervisors = {run.supervisor for run in runs if run.supervisor is not None}
        if supervisors:
            await asyncio.wait(supervisors)

    def wake(self) -> None:
        self._wake.set()

    async def _take_over_orphans(self) -> None:
        """Jobs left `processing` by a dead process on this host resume at once (or take the
        stop someone asked of them meanwhile)."""
        for job in await self.ctx.store.interrupted_jobs():
            if _owner_alive(job.lease_owner, self.owner, job.lease_expires):
                continue
            status, message = JobStatus.QUEUED, "interrupted; resuming from the checkpoint"
            if job.stop_request in REQUESTED_STOPS:
                status = message = JobStatus(job.stop_request)
            done = await self.ctx.store.set_status(
                job.id, status, message, expect=(JobStatus.PROCESSING,), claim=job.claim
            )
            if done is not None and (event := final_event(done)) is not None:
                self.ctx.publish(job.id, *event)

    async def _loop(self) -> None:
        lease, poll = self.ctx.settings.jobs.lease_seconds, self.ctx.settings.jobs.poll_seconds
        while not self._closing:
            try:
                await self._claim_while_free(lease)
            except Exception:  # the store failed (locked, disk): say so, and try again shortly
                log.exception("could not claim jobs; trying again")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=min(poll, lease / 3))

    def _models(self) -> Collection[str] | None:
        """The models a claim may ask for: what this node can run (the CLI's own jobs: any,
        so that a missing model fails the job instead of leaving it queued)."""
        return None if self.restrict_to is not None else self.ctx.models.claimable_models()

    async def _claim_while_free(self, lease: float) -> None:
        while len(self._running) < self.capacity:
            async with self._claiming:
                asked = asyncio.get_running_loop().time()
                job = await self.ctx.store.claim_next(
                    self.owner, lease, self.restrict_to, exclude=list(self._running), models=self._models()
                )
                if job is None:
                    return
                self._launch(job, held_until=asked + lease)

    def _launch(self, job: Job, held_until: float) -> None:
        language = job.language or job.options.get("language")
        run = Running(
            job,
            {**job.options, "language": language},
            asyncio.create_task(self._pipeline(job), name=f"job-{job.id}"),
            held_until=held_until,
        )
        run.supervisor = asyncio.create_task(self._supervise(run), name=f"job-{job.id}-supervisor")
        self._running[job.id] = run

        def forget(_: asyncio.Task[None]) -> None:
            if self._running.get(job.id) is run:
                del self._running[job.id]
            if not self._closing:
                self.wake()

        run.supervisor.add_done_callback(forget)
        if job.stop_request in REQUESTED_STOPS:  # asked of its dead owner: carried out here
            self._request_stop(run, REQUESTED_STOPS[JobStatus(job.stop_request)])

    # --- control ---------------------------------------------------------------------------

    async def stop(self, job_id: str, reason: Stop) -> Stop | None:
        """Stop a job running here and wait until its final state is written.

        Returns the reason that took effect (a stronger one asked for meanwhile wins, so it
        may differ from `reason`), or None if the job does not run here, or its final state
        was already chosen when the request came (it is written by the time this returns, so
        the caller can act on it). The caller's own cancellation is not swallowed; the job
        still stops.
        """
        async with self._claiming:
            run = self._running.get(job_id)
        if run is None:
            return None
        late = run.decided
        self._request_stop(run, reason)
        assert run.supervisor is not None
        await asyncio.wait({run.supervisor})
        return None if late else run.stop

    def _stop_asked(self, job_id: str) -> None:
        """A stop was requested for a job (maybe one running here): look it up in the store."""
        if job_id not in self._running or self._closing:
            return
        lookup = asyncio.create_task(self._apply_requested_stop(job_id), name=f"job-{job_id}-stop")
        self._lookups.add(lookup)
        lookup.add_done_callback(self._lookups.discard)

    async def _apply_requested_stop(self, job_id: str) -> None:
        try:
            job = await self.ctx.store.get_job(job_id)
        except Exception:  # the renewal finds the request too
            log.exception("job %s: could not read its stop request", job_id)
            return
        run = self._running.get(job_id)
        if job is not None and run is not None and job.claim == run.job.claim:
            self._carry_out(run, job.stop_request)

    def _carry_out(self, run: Running, request: str | None) -> None:
        """Stop a run as asked through the store (a pause or a cancel from another process)."""
        reason = REQUESTED_STOPS.get(JobStatus(request)) if request in REQUESTED_STOPS else None
        if reason is not None and (run.stop is None or reason > run.stop):  # once, not every renewal
            log.info("job %s: %s on request", run.job.id, request)
            self._request_stop(run, reason)

    def _request_stop(self, run: Running, reason: Stop) -> None:
        if not run.decided and (run.stop is None or reason > run.stop):
            run.stop = reason
        run.pipeline.cancel()

    # --- one job ---------------------------------------------------------------------------

    async def _pipeline(self, job: Job) -> None:
        if job.attempts > self.ctx.settings.jobs.max_attempts:
            raise JobFailed(
                "too_many_attempts",
                f"gave up after {job.attempts - 1} attempts (the job keeps being interrupted)",
            )
        await JobRun(self.ctx, job).run()

    async def _renew(self, run: Running) -> None:
        """Renew every third of a lease. A renewal that fails or hangs is tried again, but only
        while the lease surely holds: past it another node may own the job, so the run stops
        (and writes nothing) rather than work on beside the new owner."""
        lease = self.ctx.settings.jobs.lease_seconds
        loop = asyncio.get_running_loop()
        assert run.job.claim is not None
        while True:
            await asyncio.sleep(max(0.0, min(lease / 3, run.held_until - loop.time())))
            asked = loop.time()
            try:
                async with asyncio.timeout_at(run.held_until):
                    renewed = await self.ctx.store.renew_lease(run.job.id, run.job.claim, lease)
            except Exception as exc:  # a failed write is not a lost lease, until the lease is out
                if loop.time() < run.held_until:
                    log.warning("job %s: could not renew its lease (%s); trying again", run.job.id, exc)
                    continue
                log.warning("job %s: its lease ran out unrenewed; stopping here", run.job.id)
                self._request_stop(run, Stop.LEASE_LOST)
                return
            run.held_until = asked + lease
            if not renewed:
                log.warning("job %s: lease lost to another worker; stopping here", run.job.id)
                self._request_stop(run, Stop.LEASE_LOST)
                return
            self._carry_out(run, renewed.stop)

    async def _supervise(self, run: Running) -> None:
        renewer = asyncio.create_task(self._renew(run), name=f"job-{run.job.id}-lease")
        try:
            await asyncio.wait({run.pipeline})
        except asyncio.CancelledError:  # only a torn-down loop cancels a supervisor
            self._request_stop(run, Stop.SHUTDOWN)
            await settle(asyncio.wait({run.pipeline}))
            raise
        finally:
            renewer.cancel()
            await settle(asyncio.wait({renewer}))
            outcome = self._outcome(run)
            run.decided = True
            await settle(self._finish(run, outcome))

    def _outcome(self, run: Running) -> Outcome:
        pipeline = run.pipeline
        if not pipeline.done():
            return STOP_OUTCOMES[run.stop or Stop.SHUTDOWN]
        error = None if pipeline.cancelled() else pipeline.exception()
        if not pipeline.cancelled() and error is None:
            if run.stop is Stop.LEASE_LOST:
                return STOP_OUTCOMES[Stop.LEASE_LOST]
            return Outcome(JobStatus.COMPLETED, "done")
        if run.stop is not None:
            return STOP_OUTCOMES[run.stop]
        match error:
            case None:  # cancelled by nobody we know of: treat as an interruption
                return REQUEUED
            case Requeue():
                return Outcome(JobStatus.QUEUED, str(error))
            case JobFailed():
                return Outcome(JobStatus.FAILED, str(error), error.code)
            case OptionError():
                return Outcome(JobStatus.FAILED, f"invalid setting {error.field}: {error}", "bad_settings")
            case PoolClosed():
                return REQUEUED
        log.error("job %s failed", run.job.id, exc_info=error)
        message = public_text(f"internal error: {type(error).__name__}: {error}", self.ctx.settings.data_dir)
        return Outcome(JobStatus.FAILED, message, "internal")

    async def _finish(self, run: Running, outcome: Outcome) -> None:
        """Commit the final state (if the job is still this run's), then tell subscribers."""
        if outcome.status is None:
            return
        ctx, job_id, status = self.ctx, run.job.id, outcome.status
        completed = status is JobStatus.COMPLETED
        try:
            job = await ctx.store.set_status(
                job_id,
                status,
                outcome.message,
                expect=(JobStatus.PROCESSING,),
                claim=run.job.claim,
                error_code=outcome.code,
                error=outcome.message if status is JobStatus.FAILED else None,
                phase=Phase.SRT if completed else None,
                percent=100.0 if completed else None,
            )
        except Exception:
            log.exception("job %s: could not record its final state %s", job_id, status)
            return
        if job is None:
            log.info(
                "job %s: not this run's any more (deleted or taken over); %s not recorded", job_id, status
            )
            return
        if completed:
            ctx.publish(job_id, "progress", job.progress_dict())
        if (event := final_event(job)) is not None:
            ctx.publish(job_id, *event)
        else:
            ctx.publish(job_id, "signal", {"code": Signal.REQUEUED, "message": outcome.message})
