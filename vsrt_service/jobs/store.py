"""The job store's interface and records: what the rest of vsrt may ask of any store of jobs.

`JobStore` is the contract (tests/store_contract.py checks it against every implementation):
`SqliteJobStore` (jobs/sqlite_store.py, one host) and `PgJobStore` (jobs/pg_store.py, shared by
several nodes). A store is the single source of truth for jobs, their checkpoints and their
status history.

Status changes are compare-and-set: each names the statuses it may leave (and, for the
scheduler, its claim), so a request that lost a race changes nothing and learns so.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from vsrt_service.core.errors import VsrtError
from vsrt_service.core.protocol import AlignedSegment


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


STATUSES = tuple(JobStatus)
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)
#: What a job may be re-queued from (`start`/resume); a processing job never is.
RESUMABLE = (JobStatus.QUEUED, JobStatus.PAUSED, *FINAL)
#: What another node may ask of a running job's owner, weakest first (a cancel overrides a pause).
STOP_REQUESTS = (JobStatus.PAUSED, JobStatus.CANCELED)


def job_priority(options: dict[str, Any]) -> int:
    """The claim priority a job's options give it (0 when absent: jobs from before priorities)."""
    value = options.get("priority", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def job_model(options: dict[str, Any]) -> str | None:
    """The Whisper model a job's options name (what a node must be able to run to claim it)."""
    value = options.get("model")
    return value if isinstance(value, str) else None


class StoreError(VsrtError):
    code = "store"


class StoreUnavailable(StoreError):
    """The store's server cannot be reached or refuses us (a startup error, not a bug)."""

    code = "store_unavailable"


@dataclass(frozen=True)
class Job:
    id: str
    created_at: float
    updated_at: float
    status: str
    phase: str
    percent: float
    message: str
    processed: int
    total: int
    error_code: str | None
    error: str | None
    source_name: str
    input_path: str
    options: dict[str, Any]  # as requested (column `settings`)
    locked_options: dict[str, Any] | None  # what the checkpoint locked (column `checkpoint_settings`)
    language: str | None
    duration: float | None
    alignment: str | None
    lease_owner: str | None
    lease_expires: float | None
    attempts: int
    claim: str | None
    #: A stop (`paused`/`canceled`) asked for while the job runs, for its owner to carry out.
    stop_request: str | None = None

    def progress_dict(self) -> dict[str, Any]:
        """The data of a `progress` event about this job."""
        return {
            "phase": self.phase,
            "percent": round(self.percent, 2),
            "message": self.message,
            "processed": self.processed,
            "total": self.total,
        }

    def status_dict(self) -> dict[str, Any]:
        """The `GET /api/status` shape."""
        return {
            "job_id": self.id,
            "status": self.status,
            "phase": self.phase,
            "percent": round(self.percent, 2),
            "message": self.message,
            "processed": self.processed,
            "total": self.total,
            "error": {"code": self.error_code, "message": self.error} if self.error else None,
        }


@dataclass(frozen=True)
class Renewal:
    """What a lease renewal learned: whether the claim still holds the job (its truth value),
    and a stop another node asked for meanwhile (`paused`/`canceled`), for the run to carry out."""

    held: bool
    stop: str | None = None

    def __bool__(self) -> bool:
        return self.held


@dataclass(frozen=True)
class Segment:
    index: int
    start: float
    end: float
    text: str | None
    language: str | None
    transcribe_count: int
    crashes: int


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up: refused, or retried for as long as allowed


@dataclass(frozen=True)
class Notice:
    """What a job's final state sends: the event, the target and the exact body bytes (built
    once, so every retry signs and sends the same bytes)."""

    event: str
    url: str
    body: bytes


@dataclass(frozen=True)
class Delivery:
    """One row of the outbox: a notice and how its delivery goes."""

    id: str
    job_id: str
    event: str
    url: str
    body: bytes
    status: str
    attempts: int
    next_at: float | None
    delivered_at: float | None
    last_error: str | None
    created_at: float


#: Decides, from a job as its final state is committed, what to send (None: nothing).
NoticePolicy = Callable[[Job], Notice | None]


class JobStore(Protocol):
    """Jobs, their checkpoints and their transitions, shared by every process on the database.

    Every method is atomic. Writes are durable once they return. A job's claim token
    (`Job.claim`) names one run of it: leases, progress and final states given with a claim
    apply only while that claim is the job's, so a run that lost its job changes nothing.
    """

    # --- jobs ----------------------------------------------------------------------------

    async def create_job(
        self,
        *,
        source_name: str,
        input_path: str,
        options: dict[str, Any],
        status: str = "queued",
        job_id: str | None = None,
        request_key: str | None = None,
    ) -> Job:
        """Add a job (`queued`, or `paused` to start later) with phase `queued` and one
        transition; a new random id unless `job_id` is given (an existing id is an error).
        `request_key` names the request that made it (`find_request`)."""
        ...

    async def find_request(self, request_key: str) -> Job | None:
        """The newest job made for this request key that has not failed or been canceled."""
        ...

    async def create_for_request(
        self, request_key: str, *, source_name: str, input_path: str, options: dict[str, Any]
    ) -> tuple[Job, bool]:
        """`find_request`'s job, or else a new queued one made for the key: (job, created).
        Atomic for every process on the store, so identical requests reaching two nodes at
        once make one job."""
        ...

    async def get_job(self, job_id: str) -> Job | None:
        """The job as last committed; None if there is none."""
        ...

    async def list_jobs(self, limit: int = 50, offset: int = 0) -> list[Job]:
        """A page of jobs, newest first (ties by id)."""
        ...

    async def count_jobs(self) -> int: ...

    async def interrupted_jobs(self) -> list[Job]:
        """Every `processing` job, whoever holds it and whether or not its lease ran out."""
        ...

    async def claim_next(
        self,
        owner: str,
        lease_seconds: float,
        only: Collection[str] | None = None,
        exclude: Collection[str] = (),
        models: Collection[str] | None = None,
    ) -> Job | None:
        """Take the first job that is `queued`, or `processing` with its lease run out, by
        priority (its `priority` option, highest first), then creation, then id, for `owner`:
        status `processing`, a lease of `lease_seconds`, a new claim token, attempts + 1, the
        error cleared, a `claimed` transition. Among `only` when given (an empty `only` claims
        nothing), never one in `exclude` (jobs the caller still runs), and only jobs whose
        `model` option is in `models` when given (what this node can run). A pending
        `stop_request` stays on the claimed job: its new owner must carry it out. No two
        callers, in this process or any other, ever get the same claim. None if no job is
        claimable."""
        ...

    async def renew_lease(self, job_id: str, claim: str, lease_seconds: float) -> Renewal:
        """Extend the lease to `lease_seconds` from now, only while the job is `processing`
        under `claim`: a false Renewal otherwise (the run must stop working on it). Its `stop`
        is the job's pending stop request, if any (the owner learns of remote stops here even
        without `watch`)."""
        ...

    async def request_stop(self, job_id: str, stop: str) -> Job | None:
        """Ask the owner of a `processing` job to stop it (`paused` or `canceled`): compare-and-set,
        a cancel overrides a pending pause, never the reverse. None, with nothing changed, when
        the job does not run (or is gone). The request is cleared when the job leaves
        `processing`; the owner learns of it through `watch` and `renew_lease`."""
        ...

    def watch(
        self, on_stop: Callable[[str], None], on_queued: Callable[[], None]
    ) -> AbstractAsyncContextManager[None]:
        """While entered, call `on_stop(job_id)` when a stop is requested for a job (from any
        node) and `on_queued()` when a job becomes queued, so schedulers act at once instead of
        at their next poll. Callbacks run on the loop and must not block. A store that one
        process owns alone (SQLite) may do nothing: that process learns of its own changes."""
        ...

    async def update_progress(
        self,
        job_id: str,
        *,
        phase: str,
        percent: float,
        message: str,
        processed: int | None = None,
        total: int | None = None,
        claim: str | None = None,
    ) -> Job:
        """Record progress: percent never goes down, `processed`/`total` change only when given,
        a phase change adds a transition. With `claim`, only while the job is that claim's;
        StoreError when it is not (or the job is gone)."""
        ...

    async def set_status(
        self,
        job_id: str,
        status: JobStatus,
        message: str,
        *,
        expect: Collection[JobStatus],
        claim: str | None = None,
        lease_owner: str | None = None,
        error_code: str | None = None,
        error: str | None = None,
        phase: str | None = None,
        percent: float | None = None,
    ) -> Job | None:
        """Compare-and-set: move the job to `status` only if its status is one of `expect` (and,
        when given, its claim is `claim` and its lease holder `lease_owner`). The lease, claim
        and any stop request are released, the error set to the given one (or cleared), phase
        and percent (never lower) changed when given, a transition added. None, with nothing changed, when the
        job was not in such a state or is gone.

        When `status` is final and a notice policy is set (`use_outbox`), the policy's notice
        is added to the outbox in the same transaction: a final state never lacks its
        delivery, and no retry of the write makes two."""
        ...

    async def requeue(self, job_id: str, options: dict[str, Any], *, restart: bool) -> Job | None:
        """Compare-and-set to `queued` from any status but `processing` (RESUMABLE), with these
        options, the error cleared, attempts 0 and a transition. `restart` forgets every result
        first (segments, locked options, language, duration, alignment, result, speakers,
        progress).
        None, with nothing changed, when the job runs or is gone."""
        ...

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job that is not `processing`, with its segments and transitions (its
        deliveries stay: a pending one is still sent); False (nothing changed) when it is gone
        or runs (stop it first)."""
        ...

    async def transitions(self, job_id: str) -> list[dict[str, Any]]:
        """The job's status history (`at`, `status`, `phase`, `message`), oldest first: one
        entry at creation, each claim, each phase change and each status change."""
        ...

    # --- checkpoint ------------------------------------------------------------------------

    async def save_segments(
        self,
        job_id: str,
        spans: Iterable[tuple[float, float]],
        locked_options: dict[str, Any],
        duration: float,
        speech: Sequence[tuple[float, float]] = (),
        *,
        claim: str | None = None,
    ) -> int:
        """Store the split, replacing any earlier one, with the options it was made with (that
        locks them), the duration, the speech regions at full resolution, total = the number
        of spans and processed 0; returns it. With `claim`, only while the job is that claim's
        (StoreError otherwise: a late run must not wipe its successor's transcripts)."""
        ...

    async def speech(self, job_id: str) -> list[tuple[float, float]]:
        """The speech regions stored with the split, in order (empty before the split)."""
        ...

    async def segments(self, job_id: str) -> list[Segment]:
        """The job's segments by index."""
        ...

    async def save_transcript(self, job_id: str, index: int, text: str, language: str) -> bool:
        """Checkpoint one segment's text once: False, with nothing changed, if it already has
        one. Updates `processed` and sets the job's language if it had none."""
        ...

    async def record_crash(self, job_id: str, indexes: Sequence[int]) -> int:
        """Count a runner crash against each segment in flight; the highest count among them
        (0 for none)."""
        ...

    async def save_result(
        self,
        job_id: str,
        segments: list[AlignedSegment],
        alignment: str,
        language: str | None,
        *,
        claim: str | None = None,
    ) -> None:
        """Store the aligned result (megabytes for hours of speech: never encoded on the loop);
        with `claim`, only while the job is that claim's (StoreError otherwise)."""
        ...

    async def result(self, job_id: str) -> list[AlignedSegment] | None:
        """The stored result exactly as saved; None when there is none."""
        ...

    async def save_speakers(self, job_id: str, speakers: dict[str, Any]) -> None:
        """Checkpoint the diarization (a small JSON object: its turns and what made them),
        replacing an earlier one; a restart forgets it."""
        ...

    async def speakers(self, job_id: str) -> dict[str, Any] | None:
        """The stored diarization exactly as saved; None before the diarize phase ran."""
        ...

    async def save_edited_cues(
        self, job_id: str, cues: list[dict[str, Any]] | None, expected_version: int | None = None
    ) -> int | None:
        """Store the user's cues as given (None removes them) and raise the job's edits
        version by one, returning the new version. With `expected_version`, only if the
        version is still that one (compare-and-set); None when it was not, or no such job."""
        ...

    async def edited_cues(self, job_id: str) -> list[dict[str, Any]] | None: ...

    async def edits_version(self, job_id: str) -> int:
        """How many times the user's cues were saved or removed (0: never; 0 for no job)."""
        ...

    # --- outbox (webhook deliveries) --------------------------------------------------------

    def use_outbox(self, policy: NoticePolicy | None, added: Callable[[], None] | None = None) -> None:
        """Set what `set_status` adds to the outbox on a final state; `added` is called after
        each commit that added a delivery (to wake the sender in this process). The policy
        runs inside the write: it must be quick and pure; if it raises, the state is still
        written, without a delivery."""
        ...

    async def claim_deliveries(self, limit: int, lease_seconds: float) -> list[Delivery]:
        """Take up to `limit` pending deliveries that are due (next_at <= now), oldest due
        first: attempts + 1 and next_at pushed `lease_seconds` ahead, so no other sender takes
        them meanwhile and an attempt that died (crash) is made again after the lease."""
        ...

    async def record_attempt(
        self,
        delivery_id: str,
        attempt: int,
        status: DeliveryStatus,
        *,
        error: str | None = None,
        next_at: float | None = None,
    ) -> bool:
        """The outcome of attempt number `attempt` (the claim's `attempts`): delivered (stamps
        delivered_at), pending again at `next_at`, or failed (given up); `error` is kept as
        last_error. False, with nothing changed, when the row is gone, no longer pending or
        was claimed again since (a late sender changes nothing)."""
        ...

    async def next_delivery_at(self) -> float | None:
        """When the earliest pending delivery is due (None: none pending)."""
        ...

    async def deliveries(self, job_id: str | None = None) -> list[Delivery]:
        """The deliveries of a job (or all), oldest first."""
        ...
