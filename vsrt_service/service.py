"""The application: `Service` holds every use case, and the HTTP APIs, the CLI and library
users only translate to and from it.

`async with Service(settings) as svc:` opens the resources in dependency order (store, broker,
runner pool, model manager, scheduler) and closes them in reverse; a command that needs no
work runners or no scheduler says so (`work_runners=False`, `run_jobs=False`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import uuid
import wave
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from vsrt_service.core import protocol as p
from vsrt_service.core.broker import Broker, Event, job_channel
from vsrt_service.core.config import POSTGRES_SCHEMES, CueSettings, Settings, load_settings
from vsrt_service.core.cue_rules import CueWarning, check_cues, cue_rules, rules_json
from vsrt_service.core.cues import Cue
from vsrt_service.core.errors import Conflict, InvalidInput, JobFailedError, NotFound, Unavailable
from vsrt_service.core.files import write_atomic
from vsrt_service.core.formats import FORMATS, cue_fields, cues_from_json, render, to_json
from vsrt_service.core.integrity import file_sha256
from vsrt_service.core.options import (
    RULE_OPTIONS,
    JobOptions,
    OptionError,
    conflicts,
    parse_options,
    track_choice,
)
from vsrt_service.core.redact import public_text
from vsrt_service.core.reflow import reflow
from vsrt_service.jobs.datadir import AUDIO_NAME, keep_tidy, lock_data_dir
from vsrt_service.jobs.media import (
    PROXY_CODECS,
    PROXY_MIME,
    MediaError,
    MediaInfo,
    Playback,
    check_media,
    choose_track,
    extract_audio,
    make_audio_proxy,
    probe_playback,
)
from vsrt_service.jobs.nodes import RUNNER_KEYS, LocalNodes, NodeRegistry, registered
from vsrt_service.jobs.peaks import PEAKS_NAME, decoded_peaks, write_peaks
from vsrt_service.jobs.pipeline import JobContext, live_lines
from vsrt_service.jobs.scheduler import Scheduler, Stop, final_event
from vsrt_service.jobs.sqlite_store import SqliteJobStore
from vsrt_service.jobs.storage import Storage, storage_for
from vsrt_service.jobs.store import FINAL, Job, JobStatus, JobStore
from vsrt_service.jobs.webhooks import Sender, open_sender
from vsrt_service.models.manager import ModelManager
from vsrt_service.models.state_store import ModelStateStore
from vsrt_service.runners.pool import RunnerError, RunnerLost, RunnerPool, new_id

log = logging.getLogger("vsrt.service")

#: Signals after which a job's event stream has nothing more to say.
FINAL_SIGNALS = frozenset({"job_complete", "paused", "canceled"})
#: The most cues one reflow request may re-split (a selection, not a whole film).
REFLOW_MAX_CUES = 500
#: How often a control request looks again at a job whose state changed under it.
CONTROL_ATTEMPTS = 5
#: How often a stop of a job running in another process looks whether it took effect.
REMOTE_STOP_POLL = 0.1
#: How long it waits for that, in lease lengths: a dead owner's lease runs out, and the
#: scheduler that takes the job over carries the request out.
REMOTE_STOP_LEASES = 3
#: Files the player's routes make once per job, in its folder (removed with it).
MEDIA_INFO_NAME = "media.json"
PROXY_NAME = "proxy.m4a"

T = TypeVar("T")


def is_final_event(ev: Event) -> bool:
    return ev.event == "error" or (ev.event == "signal" and ev.data.get("code") in FINAL_SIGNALS)


@dataclass(frozen=True)
class Transcript:
    """A job's whole current text, best source first: the aligned result, else the
    checkpoint's unaligned segments (`source` says which), and the user's edits if saved."""

    job: Job
    source: str  # "aligned", "checkpoint" or "none"
    segments: list[dict[str, Any]]
    edited_cues: list[dict[str, Any]] | None


@dataclass(frozen=True)
class CueDocument:
    """What the editor edits: the cues downloads serve now and the version to save against."""

    job: Job
    version: int
    edited: bool
    cues: list[Cue]
    rules: CueSettings
    meta: dict[str, Any]  # the machine file's (job, model, language, segments...), else job_id
    speech: list[tuple[float, float]]

    def json(self) -> str:
        """The JSON download: the machine file's fields, the version, rules and warnings."""
        return to_json(
            self.cues,
            {
                **self.meta,
                "job_id": self.job.id,
                "edited": self.edited,
                "version": self.version,
                "rules": rules_json(self.rules),
                "warnings": check_cues(self.cues, self.rules),
                "speech": [[round(a, 3), round(b, 3)] for a, b in self.speech],
            },
        )


@dataclass(frozen=True)
class MediaFile:
    """A file of a job the player may fetch, and the type to serve it as."""

    path: Path
    mime: str


@dataclass(frozen=True)
class SharedJob:
    """The job a synchronous request follows; `attached`: an identical request's job."""

    job: Job
    attached: bool


@dataclass(frozen=True)
class DetectedLanguage:
    model: str
    result: p.DetectLanguageResult


#: How much of a file language detection decodes, looking for its first 30 s of speech.
LISTEN_SECONDS = 180.0


@dataclass(frozen=True)
class SavedCues:
    version: int
    cues: list[Cue]
    warnings: list[CueWarning]


def _version(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput("version must be a whole number from the last load", field="version")
    return value


def _version_conflict(current: int) -> Conflict:
    return Conflict(
        f"the subtitles were saved elsewhere since you loaded them (now version {current});"
        " load theirs, or save yours over them",
        code="version_conflict",
        field="version",
    )


# --- resources, each opened and closed by one context manager ------------------------------


@contextlib.asynccontextmanager
async def open_store(settings: Settings, storage: Storage | None = None) -> AsyncIterator[JobStore]:
    """The data directory, locked for this process first (DataDirLocked if another holds it),
    and the storage root kept tidy (leftovers, expired audio) while open."""
    if urlsplit(settings.store.url).scheme in POSTGRES_SCHEMES and not settings.storage.root:
        log.warning(
            "the job store is PostgreSQL but storage.root is not set: uploads and job files stay in"
            " this node's data directory, and other nodes cannot open them; set storage.root"
            " (VSRT_STORAGE_ROOT) to a directory every node mounts at the same path"
        )
    async with lock_data_dir(settings.data_dir):
        for d in (settings.jobs_dir, settings.uploads_dir, settings.models_dir):
            await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
        async with open_job_store(settings) as store, keep_tidy(settings, store, storage):
            yield store


def open_job_store(settings: Settings) -> contextlib.AbstractAsyncContextManager[JobStore]:
    """The backend `store.url` names by its scheme: empty, the SQLite file in the data
    directory; postgresql://, a server shared by every node (StoreUnavailable if it cannot be
    reached)."""
    if urlsplit(settings.store.url).scheme in POSTGRES_SCHEMES:
        from vsrt_service.jobs.pg_store import PgJobStore  # asyncpg: 0.1 s to import, only if used

        return PgJobStore.open(settings.store.url)
    return SqliteJobStore.open(settings.database_path)


@contextlib.asynccontextmanager
async def open_model_state(settings: Settings) -> AsyncIterator[ModelStateStore]:
    """This host's model state; opened inside `open_store`, which holds the data directory's lock."""
    async with ModelStateStore.open(settings.database_path) as state:
        yield state


@contextlib.asynccontextmanager
async def open_broker(settings: Settings, store: JobStore | None = None) -> AsyncIterator[Broker]:
    """The broker; on PostgreSQL, with the event log that shares job events with every node."""
    broker = Broker(
        settings.sse.replay_buffer, settings.sse.subscriber_queue, settings.sse.idle_channel_seconds
    )
    try:
        if store is not None and urlsplit(settings.store.url).scheme in POSTGRES_SCHEMES:
            from vsrt_service.jobs.pg_events import PgEventLog
            from vsrt_service.jobs.pg_store import PgJobStore

            assert isinstance(store, PgJobStore)
            retention = settings.sse.event_retention_hours * 3600
            async with PgEventLog.open(store.url, broker, pool=store.pool, retention_seconds=retention):
                yield broker
        else:
            yield broker
    finally:
        broker.close()


@contextlib.asynccontextmanager
async def open_pool(
    settings: Settings, env: dict[str, str] | None = None, work_runners: bool = True
) -> AsyncIterator[RunnerPool]:
    pool = RunnerPool(settings, env, work_runners=work_runners)
    await pool.start()
    try:
        yield pool
    finally:
        await asyncio.shield(pool.close())


@contextlib.asynccontextmanager
async def open_models(
    settings: Settings, state: ModelStateStore, broker: Broker, pool: RunnerPool, validate: bool = True
) -> AsyncIterator[ModelManager]:
    manager = ModelManager(settings, state, broker, pool)
    await manager.start(validate)
    try:
        if settings.models.preload_on_start and pool.slots:
            await manager.preload()
        yield manager
    finally:
        await asyncio.shield(manager.close())


@contextlib.asynccontextmanager
async def open_scheduler(
    ctx: JobContext, run: bool = True, restrict_to: set[str] | None = None
) -> AsyncIterator[Scheduler]:
    """The scheduler; with `run` False it claims nothing (commands that run no jobs)."""
    scheduler = Scheduler(ctx, restrict_to)
    if run:
        await scheduler.start()
    try:
        yield scheduler
    finally:
        await asyncio.shield(scheduler.close())


@contextlib.asynccontextmanager
async def open_nodes(
    settings: Settings,
    store: JobStore,
    scheduler: Scheduler,
    describe: Callable[[], dict[str, Any]],
    run: bool,
) -> AsyncIterator[NodeRegistry]:
    """This node in the node registry, named by its scheduler's lease owner id (so a lease
    names its node): the shared `nodes` table on PostgreSQL, else just itself in memory. It
    beats every third of a lease and counts as gone after a lease, when its jobs may be taken
    over too. A service that runs no jobs (the models commands) is listed nowhere else."""
    lease = settings.jobs.lease_seconds
    registry: NodeRegistry = LocalNodes(scheduler.owner, lease)
    if run and urlsplit(settings.store.url).scheme in POSTGRES_SCHEMES:
        from vsrt_service.jobs.nodes import PgNodes
        from vsrt_service.jobs.pg_store import PgJobStore

        assert isinstance(store, PgJobStore)
        registry = PgNodes(store.pool, scheduler.owner, lease)
    async with registered(registry, describe, lease / 3) as nodes:
        yield nodes


class Service:
    """Every use case of vsrt, over the resources it opens."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        work_runners: bool = True,
        run_jobs: bool = True,
        own_jobs_only: bool = False,
        validate_models: bool = True,
    ) -> None:
        """`own_jobs_only`: run only the jobs this object submits, not the data directory's
        queue (the CLI's files). `run_jobs=False`: claim nothing (the models commands)."""
        self.settings = settings or load_settings()
        self._work_runners = work_runners
        self._run_jobs = run_jobs
        self._own_jobs_only = own_jobs_only
        self._validate_models = validate_models
        self._stack: contextlib.AsyncExitStack | None = None
        self.models: ModelManager
        self.store: JobStore
        self.broker: Broker
        self.pool: RunnerPool
        self.ctx: JobContext
        #: Uploads and job folders (under the storage root every node sees).
        self.storage: Storage = storage_for(self.settings)
        self.scheduler: Scheduler
        self.webhooks: Sender
        self.nodes: NodeRegistry
        #: Media work in progress per (what, job id): concurrent requests share one run.
        self._flights: dict[tuple[str, str], asyncio.Task[Any]] = {}
        #: How many times media work really ran, by kind ("info", "proxy", "peaks").
        self.media_runs: Counter[str] = Counter()

    async def __aenter__(self) -> Service:
        s = self.settings
        async with contextlib.AsyncExitStack() as stack:
            self.store = await stack.enter_async_context(open_store(s, self.storage))
            self.broker = await stack.enter_async_context(open_broker(s, self.store))
            self.pool = await stack.enter_async_context(open_pool(s, work_runners=self._work_runners))
            state = await stack.enter_async_context(open_model_state(s))
            self.models = await stack.enter_async_context(
                open_models(s, state, self.broker, self.pool, self._validate_models)
            )
            self.ctx = JobContext(s, self.store, self.broker, self.pool, self.models, self.storage)
            self.webhooks = await stack.enter_async_context(open_sender(s, self.store, self._run_jobs))
            self.scheduler = await stack.enter_async_context(
                open_scheduler(self.ctx, self._run_jobs, set() if self._own_jobs_only else None)
            )
            self.nodes = await stack.enter_async_context(
                open_nodes(s, self.store, self.scheduler, self.node_info, self._run_jobs)
            )
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for task in list(self._flights.values()):
            task.cancel()
        await asyncio.gather(*self._flights.values(), return_exceptions=True)
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
        field: str = "path",
    ) -> Job:
        """Create a job for a file on this machine; queued unless `start` is False.

        What is not media with sound is refused before a job exists, whether it came as an
        upload (`field` "file"), a `path` job or from the CLI.
        """
        file = Path(path)
        name = source_name or file.name
        options = await self._checked_options(file, settings, name, field)
        return await self._create(file, name, options, start=start)

    async def submit_shared(
        self, path: str | Path, settings: dict[str, Any] | None, *, source_name: str, field: str = "file"
    ) -> SharedJob:
        """Submit an upload of a synchronous request (the OpenAI and whisper-asr-webservice
        APIs), or attach to the job of an identical one (same audio bytes and settings).

        Clients such as Bazarr and subgen retry after a disconnect: the retry follows the
        job still running, or gets the finished result at once, instead of transcribing the
        same audio twice. A paused match is started; a failed or canceled one is not reused.
        The attached request's own upload is removed.
        """
        file = Path(path)
        options = await self._checked_options(file, settings, source_name, field)
        digest = await asyncio.to_thread(file_sha256, file)
        key = hashlib.sha256(
            f"{digest}\n{json.dumps(options.to_dict(), sort_keys=True)}".encode()
        ).hexdigest()
        found, created = await self.store.create_for_request(
            key, source_name=source_name, input_path=await self._input_key(file), options=options.to_dict()
        )
        if created:
            self._created(found, start=True)
            return SharedJob(found, False)
        if self.ctx.input_file(found) != file and self.storage.is_upload(file):
            await asyncio.to_thread(self.storage.remove_upload, file)
        if found.status == JobStatus.PAUSED:
            with contextlib.suppress(Conflict):  # started meanwhile by someone else: fine too
                found = await self.resume(found.id)
        return SharedJob(found, True)

    async def _checked_options(
        self, file: Path, settings: dict[str, Any] | None, name: str, field: str
    ) -> JobOptions:
        """Parsed settings for a file that exists and is media with the chosen audio track.

        What is not self-contained media with sound is refused here, before a job exists.
        The track is chosen now too: the job shows the one it uses (`{index, language, title}`).
        """
        options = parse_options(settings, self.settings, catalog=self.models.catalog)
        info = await self._media_info(file, name, field)
        track = choose_track(info, track_choice(options.audio_track), name)
        return replace(options, audio_track=track.public())

    async def _media_info(self, file: Path, name: str, field: str) -> MediaInfo:
        if not await asyncio.to_thread(file.is_file):
            raise InvalidInput(f"{name}: no such file", code="not_found", field=field)
        try:
            return await check_media(file, name, self.settings.media)
        except MediaError as exc:
            raise self._media_error(exc, field) from None

    async def _create(self, file: Path, name: str, options: JobOptions, *, start: bool = True) -> Job:
        job = await self.store.create_job(
            source_name=name,
            input_path=await self._input_key(file),
            options=options.to_dict(),
            status="queued" if start else "paused",
        )
        self._created(job, start=start)
        return job

    async def _input_key(self, file: Path) -> str:
        """How a job names its input in the store (relative to the storage root inside it)."""
        return self.storage.input_key(await asyncio.to_thread(file.resolve))

    def _created(self, job: Job, *, start: bool) -> None:
        """A new job: the CLI's own, and the scheduler woken when it is queued."""
        if self.scheduler.restrict_to is not None:
            self.scheduler.restrict_to.add(job.id)
        if start:
            self.scheduler.wake()

    async def send_notices(self, job_ids: Collection[str]) -> bool:
        """Give these jobs' webhooks their first attempt before a short-lived caller exits
        (a notice not sent by then stays in the outbox for the next start)."""
        return await self.webhooks.tried(job_ids, self.settings.webhooks.timeout_seconds + 5.0)

    async def finished(self, job_id: str) -> Job:
        """Wait for the job to end and return it completed; any other end is raised, so a
        synchronous API answers it with an error status and never an empty success."""
        job = await self.wait(job_id)
        if job.status == JobStatus.COMPLETED:
            return job
        if job.status == JobStatus.FAILED:
            raise JobFailedError(job.error or "the job failed", code=job.error_code or "failed")
        raise Conflict(f"the job was {job.status} before it finished", code=str(job.status))

    async def detect_language(
        self,
        path: str | Path,
        *,
        model: str | None = None,
        source_name: str | None = None,
        field: str = "file",
    ) -> DetectedLanguage:
        """The language a file speaks, from its first 30 s of speech (what precedes the
        speech is skipped, up to `LISTEN_SECONDS` of the file), with the top candidates."""
        file = Path(path)
        name = source_name or file.name
        options = parse_options(
            {"model": model} if model else None, self.settings, catalog=self.models.catalog
        )
        ref = self.models.whisper_ref(options.model)
        if ref is None:
            raise Unavailable(
                f"Whisper model {options.model} is not downloaded; download it in the model manager",
                code="model_missing",
                field="model",
            )
        await self._media_info(file, name, field)
        wav = self.storage.upload_path(f"{uuid.uuid4().hex}.wav")
        try:
            try:
                await extract_audio(file, wav, name=name, limits=self.settings.media, seconds=LISTEN_SECONDS)
            except MediaError as exc:
                raise self._media_error(exc, field) from None
            async with self.pool.lease() as runner:
                try:
                    result = await runner.call(p.DetectLanguage(id=new_id(), audio_path=str(wav), model=ref))
                except RunnerLost as exc:
                    raise Unavailable(f"the runner was lost ({exc}); try again", code="runner_lost") from None
                except RunnerError as exc:
                    kind = InvalidInput if exc.code == "no_speech" else Unavailable
                    raise kind(public_text(str(exc), self.settings.data_dir), code=exc.code) from None
        finally:
            await asyncio.shield(asyncio.to_thread(wav.unlink, missing_ok=True))
        return DetectedLanguage(options.model, result)

    async def get(self, job_id: str) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    async def list_jobs(self, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
        """A page of jobs, newest first, and how many there are in all."""
        return await self.store.list_jobs(limit, offset), await self.store.count_jobs()

    async def snapshot(self, job_id: str) -> dict[str, Any]:
        """The job's state as a stream's `connected` event carries it."""
        job = await self.get(job_id)
        return {"job_id": job.id, "status": job.status, **job.progress_dict()}

    async def events(self, job_id: str, last_event_id: int | None = None) -> AsyncIterator[Event]:
        """The job's events, a `connected` snapshot first, until it ends (or is paused)."""
        channel = job_channel(job_id)
        sub, replayed = await self.broker.open(channel, last_event_id)
        try:
            snapshot = await self.snapshot(job_id)
            if not replayed:
                yield Event(channel, sub.opened_at, "connected", snapshot)
                if snapshot["status"] not in (JobStatus.QUEUED, JobStatus.PROCESSING):
                    return
            while True:
                if not await sub.wait(self.settings.sse.heartbeat_interval):
                    # Quiet: a node that committed the final state and died before writing its
                    # event leaves a final job and no event, so look at the job itself.
                    if (event := await self.ended(job_id)) is not None:
                        yield Event(channel, sub.position, *event)
                        return
                    continue
                batch = sub.drain()
                if not batch:  # closed: shutdown, or the job was deleted
                    return
                for ev in batch:
                    yield ev
                    if is_final_event(ev):
                        return
        finally:
            sub.close()

    async def ended(self, job_id: str) -> tuple[str, dict[str, Any]] | None:
        """The event that tells followers the job ended, from its state (None: it has not)."""
        return final_event(await self.get(job_id))

    async def wait(self, job_id: str) -> Job:
        """Wait until the job completes, fails, is canceled or paused; returns it."""
        async for _ in self.events(job_id):
            pass
        return await self.get(job_id)

    async def pause(self, job_id: str) -> Job:
        """Pause a queued or running job (a paused one stays paused)."""
        return await self._stop(job_id, Stop.PAUSED)

    async def cancel(self, job_id: str) -> Job:
        """Cancel a queued, paused or running job; a later cancel wins over a pause."""
        return await self._stop(job_id, Stop.CANCELED)

    async def _stop(self, job_id: str, reason: Stop) -> Job:
        """Move the job to the stop's state, or refuse with 409 saying which state won.

        Every change is a compare-and-set, so a request that loses a race to a claim, another
        stop or the job's end looks again instead of answering for a state the job is not in.
        """
        target = JobStatus.PAUSED if reason is Stop.PAUSED else JobStatus.CANCELED
        from_states = (JobStatus.QUEUED,) if reason is Stop.PAUSED else (JobStatus.QUEUED, JobStatus.PAUSED)
        for _ in range(CONTROL_ATTEMPTS):
            job = await self.get(job_id)
            if job.status == target:
                return job
            if job.status == JobStatus.PROCESSING:
                took = await self.scheduler.stop(job_id, reason)
                if took is None:
                    stopped = await self._stop_elsewhere(job, target)
                    if stopped is None or stopped.status == JobStatus.QUEUED:
                        continue  # it ended meanwhile, or went back to the queue: look again
                    if stopped.status != target:
                        raise Conflict(
                            f"the job was {stopped.status} instead (a stronger request or the job's end"
                            " came first)"
                        )
                    return stopped
                job = await self.get(job_id)
                if took is not reason or job.status != target:
                    raise Conflict(
                        f"the job was {job.status} instead (a stronger request or the job's end came first)"
                    )
                return job
            if job.status in from_states:
                done = await self.store.set_status(job_id, target, target, expect=(JobStatus(job.status),))
                if done is None:
                    continue
                if (event := final_event(done)) is not None:
                    self.ctx.publish(job_id, *event)
                return done
            if job.status in FINAL and reason is Stop.CANCELED:
                raise Conflict(f"the job is already {job.status}", code="finished")
            raise Conflict(f"a {job.status} job cannot be {target}", code="not_running")
        raise Conflict("the job kept changing state; try again", code="busy")

    async def _stop_elsewhere(self, job: Job, target: JobStatus) -> Job | None:
        """Ask the process that runs the job (another node) to stop it, through the store, and
        wait until the job leaves `processing`: the job then, or None when it ended meanwhile.
        An owner that died leaves its lease to run out; then whoever claims the job first
        stops it: a scheduler taking it over, or this request itself (when no node takes it,
        all busy or none able to run its model). 409 `busy` if nothing stops it in time."""
        if await self.store.request_stop(job.id, target) is None:
            return None
        lease = self.settings.jobs.lease_seconds
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REMOTE_STOP_LEASES * lease + 1.0
        while (job := await self.get(job.id)).status == JobStatus.PROCESSING:
            # Claimable only once its lease ran out (on the store's clock).
            mine = await self.store.claim_next(self.scheduler.owner, lease, only={job.id})
            if mine is not None:
                done = await self.store.set_status(
                    job.id, target, target, expect=(JobStatus.PROCESSING,), claim=mine.claim
                )
                if done is not None and (event := final_event(done)) is not None:
                    self.ctx.publish(job.id, *event)
                continue
            if loop.time() > deadline:
                raise Conflict(
                    "the job's node has not stopped it yet; it will when it next renews its lease",
                    code="busy",
                )
            await asyncio.sleep(REMOTE_STOP_POLL)
        return job

    async def resume_conflicts(
        self, job_id: str, settings: dict[str, Any] | None
    ) -> tuple[Job, list[dict[str, Any]]]:
        """Which of these requested options a resume would force back to the checkpoint's."""
        job = await self.get(job_id)
        options = parse_options(settings, self.settings, base=job.options, catalog=self.models.catalog)
        options = await self._track_asked(job, settings, options)
        return job, conflicts(job.locked_options, options)

    async def _track_asked(self, job: Job, settings: Any, options: JobOptions) -> JobOptions:
        """An `audio_track` asked for on resume is checked against the job's file, as at submit."""
        if not isinstance(settings, dict) or "audio_track" not in settings:
            return options
        try:
            info = await check_media(self.ctx.input_file(job), job.source_name, self.settings.media)
        except MediaError as exc:
            raise OptionError("audio_track", f"the audio tracks cannot be checked: {exc}") from None
        track = choose_track(info, track_choice(options.audio_track), job.source_name)
        return replace(options, audio_track=track.public())

    async def resume(
        self, job_id: str, settings: dict[str, Any] | None = None, *, restart: bool = False
    ) -> Job:
        """Queue the job again. Locked options are forced back to the checkpoint's unless
        `restart`, which throws the checkpoint away (segments, transcript, locked options) and
        starts over with the new options; the extracted audio is kept, as it comes from the
        same file and is checked against it before use."""
        job = await self.get(job_id)
        if job.status == JobStatus.PROCESSING:
            raise Conflict("the job is already running", code="running")
        options = parse_options(settings, self.settings, base=job.options, catalog=self.models.catalog)
        values = (await self._track_asked(job, settings, options)).to_dict()
        if not restart and job.locked_options:
            values.update({k: v for k, v in job.locked_options.items() if k in values})
        queued = await self.store.requeue(job_id, values, restart=restart)
        if queued is None:
            await self.get(job_id)  # 404 when it was deleted meanwhile
            raise Conflict("the job is already running", code="running")
        self.scheduler.wake()
        return queued

    async def delete(self, job_id: str) -> None:
        """Delete the job, its files and its upload; a running job is canceled first."""
        for _ in range(CONTROL_ATTEMPTS):
            job = await self.get(job_id)
            if job.status == JobStatus.PROCESSING:
                if await self.scheduler.stop(job_id, Stop.CANCELED) is None:
                    await self._stop_elsewhere(job, JobStatus.CANCELED)
                continue
            if await self.store.delete_job(job_id):
                break
        else:
            raise Conflict("the job kept changing state; try again", code="busy")
        await asyncio.to_thread(self.storage.remove_job, job_id)
        upload = self.ctx.input_file(job)
        if self.storage.is_upload(upload):
            await asyncio.to_thread(self.storage.remove_upload, upload)
        await self.broker.delete_channel(job_channel(job_id))

    # --- results -------------------------------------------------------------------------

    async def subtitles(self, job_id: str, fmt: str = "srt") -> str:
        """The subtitles in a format: the user's edited cues when saved, else the machine's.
        JSON also carries the editor's document (`CueDocument.json`)."""
        if fmt not in FORMATS:
            raise InvalidInput(
                f"format must be one of {', '.join(FORMATS)}", code="bad_format", field="format"
            )
        if fmt == "json":
            return await asyncio.to_thread((await self.cue_document(job_id)).json)
        job = await self.get(job_id)
        edited = await self.store.edited_cues(job.id)
        if edited is not None:
            labels = job.options.get("speaker_labels") is True  # the job option, as its own files
            return render(
                fmt, cues_from_json(edited), {"job_id": job.id, "edited": True}, speaker_labels=labels
            )
        path = self.ctx.job_dir(job.id) / f"subtitles.{fmt}"  # written whole at completion
        if job.status != JobStatus.COMPLETED or not await asyncio.to_thread(path.is_file):
            raise Conflict("the subtitles are not ready yet", code="not_ready")
        return await asyncio.to_thread(path.read_text, encoding="utf-8")

    async def cue_document(self, job_id: str) -> CueDocument:
        """The cues downloads serve now (the user's if saved, else the machine's), with the
        edits version a save must name, the job's cue rules and what the cues break."""
        job = await self.get(job_id)
        # The version is read before the cues: a save landing in between makes the next
        # save of this reader a conflict, never a silent overwrite.
        version = await self.store.edits_version(job.id)
        edited = await self.store.edited_cues(job.id)
        machine = self.ctx.job_dir(job.id) / "subtitles.json"
        meta: dict[str, Any] = {"job_id": job.id}
        if job.status == JobStatus.COMPLETED and await asyncio.to_thread(machine.is_file):
            meta = await asyncio.to_thread(lambda: json.loads(machine.read_text(encoding="utf-8")))
        elif edited is None:
            raise Conflict("the subtitles are not ready yet", code="not_ready")
        cues = cues_from_json(edited if edited is not None else meta.pop("cues"))
        meta.pop("cues", None)
        speech = await self.store.speech(job.id)
        return CueDocument(job, version, edited is not None, cues, self.cue_rules(job), meta, speech)

    def cue_rules(self, job: Job) -> CueSettings:
        """The rules the job's cues were built with (its options over the config)."""
        picked = {k: job.options[k] for k in RULE_OPTIONS if k in job.options}
        try:
            options = parse_options(picked, self.settings, catalog=self.models.catalog)
        except OptionError:  # stored by an older vsrt with other bounds: the defaults
            options = parse_options({}, self.settings, catalog=self.models.catalog)
        return cue_rules(self.settings, options)

    async def transcript(self, job_id: str) -> Transcript:
        job = await self.get(job_id)
        aligned = await self.store.result(job.id)
        if aligned is not None and job.alignment:
            segments = [
                {"id": i, "start": s["start"], "end": s["end"], "text": s["text"], "words": s["words"]}
                for i, s in enumerate(aligned)
            ]
            source = "aligned"
        else:
            stored = [s for s in await self.store.segments(job.id) if s.text is not None]
            speech = await self.store.speech(job.id) if stored else []
            # The same sentence lines (and ids) the `fragment` events carried.
            segments = await asyncio.to_thread(
                lambda: [
                    line for s in stored for line in live_lines(s.index, s.start, s.end, s.text or "", speech)
                ]
            )
            source = "checkpoint" if stored else "none"
        return Transcript(job, source, segments, await self.store.edited_cues(job.id))

    async def save_edited_cues(self, job_id: str, items: Any, version: Any = None) -> SavedCues:
        """Keep the user's cues apart from the machine's; downloads serve them from now on.
        With `version` (the edits version the editor loaded) a save made meanwhile by
        someone else is a `version_conflict`, not overwritten. Broken cue rules are
        warnings, never refusals: the user has the last word on their subtitles."""
        job = await self.get(job_id)
        expected = _version(version)
        try:
            cues = cues_from_json(items)
        except ValueError as exc:
            raise InvalidInput(str(exc), code="bad_cues", field="cues") from None
        cues.sort(key=lambda c: (c.start, c.end))
        stored = [cue_fields(c) for c in cues]  # speakers too: a rename is an edit like any
        saved = await self.store.save_edited_cues(job.id, stored, expected)
        if saved is None:
            raise _version_conflict(await self.store.edits_version(job.id))
        return SavedCues(saved, cues, check_cues(cues, self.cue_rules(job)))

    async def discard_edits(self, job_id: str, version: Any = None) -> int:
        """Back to the machine's cues ("revert"); returns the new edits version."""
        job = await self.get(job_id)
        saved = await self.store.save_edited_cues(job.id, None, _version(version))
        if saved is None:
            raise _version_conflict(await self.store.edits_version(job.id))
        return saved

    async def reflow(self, job_id: str, items: Any) -> list[Cue]:
        """A run of cues re-split by the cue builder with the job's rules, reusing the
        aligned word times where the text still has the same words."""
        job = await self.get(job_id)
        try:
            selection = cues_from_json(items)
        except ValueError as exc:
            raise InvalidInput(str(exc), code="bad_cues", field="cues") from None
        if len(selection) > REFLOW_MAX_CUES:
            raise InvalidInput(f"reflow at most {REFLOW_MAX_CUES} cues at a time", field="cues")
        result = await self.store.result(job.id)
        speech = await self.store.speech(job.id)
        rules = self.cue_rules(job)
        return await asyncio.to_thread(reflow, selection, result, rules, speech)

    # --- media: the player's file, its audio proxy, waveform peaks ------------------------

    async def _once(self, key: tuple[str, str], make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Single flight: the first caller starts `make`, later ones wait for the same run.
        Shielded, so one caller going away does not stop the run the others wait for."""
        task = self._flights.get(key)
        if task is None:
            task = asyncio.create_task(make())
            self._flights[key] = task

            def done(t: asyncio.Task[Any]) -> None:
                if self._flights.get(key) is t:
                    del self._flights[key]
                if not t.cancelled():
                    t.exception()  # retrieved: a failure nobody waits for any more is not logged

            task.add_done_callback(done)
        result: T = await asyncio.shield(task)
        return result

    def _media_error(self, exc: MediaError, field: str | None = None) -> InvalidInput | Unavailable:
        """A missing ffmpeg is the server's fault, not the file's."""
        kind = Unavailable if exc.code == "ffmpeg_missing" else InvalidInput
        return kind(public_text(str(exc), self.settings.data_dir), code=exc.code, field=field)

    async def _media_input(self, job: Job) -> Path:
        """The job's own input file (the upload or the media-root file); 404 once it is gone."""
        path = self.ctx.input_file(job)
        if not await asyncio.to_thread(path.is_file):
            raise NotFound("the job's media file is no longer on the server", code="no_media")
        return path

    @staticmethod
    def _track(job: Job) -> int | None:
        chosen = job.options.get("audio_track")
        index = chosen.get("index") if isinstance(chosen, dict) else None
        return index if isinstance(index, int) else None

    async def playback(self, job_id: str) -> Playback:
        """What the player needs to know of the job's file: probed once, kept in `media.json`."""
        job = await self.get(job_id)
        src = await self._media_input(job)
        cached = self.ctx.job_dir(job.id) / MEDIA_INFO_NAME

        def read() -> Playback | None:
            try:
                return Playback(**json.loads(cached.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                return None

        async def make() -> Playback:
            self.media_runs["info"] += 1
            try:
                info = await probe_playback(src, job.source_name, self.settings.media, self._track(job))
            except MediaError as exc:
                raise self._media_error(exc) from None
            await asyncio.to_thread(cached.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomic, cached, json.dumps(info.json()))
            return info

        known = await asyncio.to_thread(read)
        # media.json holds the track it was probed for; a restart may have chosen another.
        if known is not None and self._track(job) in (None, known.audio_track):
            return known
        return await self._once(("info", job.id), make)

    async def media_info(self, job_id: str) -> dict[str, Any]:
        """`playback` and whether the audio proxy is made yet."""
        info = await self.playback(job_id)
        ready = await asyncio.to_thread((self.ctx.job_dir(job_id) / PROXY_NAME).is_file)
        return {**info.json(), "proxy": {"mime": PROXY_MIME, "codecs": PROXY_CODECS, "ready": ready}}

    async def media(self, job_id: str, variant: str | None = None) -> MediaFile:
        """The job's file as it is (`variant` None), or its audio proxy (`"audio"`), made once
        when first asked for: AAC in MP4, which every browser plays."""
        if variant not in (None, "original", "audio"):
            raise InvalidInput("variant must be original or audio", code="bad_variant", field="variant")
        job = await self.get(job_id)
        if variant != "audio":
            info = await self.playback(job.id)
            return MediaFile(await self._media_input(job), info.mime)
        proxy = self.ctx.job_dir(job.id) / PROXY_NAME
        if await asyncio.to_thread(proxy.is_file):
            return MediaFile(proxy, PROXY_MIME)

        async def make() -> Path:
            if await asyncio.to_thread(proxy.is_file):
                return proxy
            src = await self._media_input(job)
            await asyncio.to_thread(proxy.parent.mkdir, parents=True, exist_ok=True)
            self.media_runs["proxy"] += 1
            log.info("job %s: making the audio proxy", job.id)
            try:
                await make_audio_proxy(src, proxy, job.source_name, self.settings.media, self._track(job))
            except MediaError as exc:
                raise self._media_error(exc) from None
            return proxy

        return MediaFile(await self._once(("proxy", job.id), make), PROXY_MIME)

    async def peaks(self, job_id: str) -> Path:
        """The job's waveform peaks file (`jobs/peaks.py`): written by the pipeline after
        extraction, else made here once from the extracted audio or the input file."""
        job = await self.get(job_id)
        folder = self.ctx.job_dir(job.id)
        peaks = folder / PEAKS_NAME
        if await asyncio.to_thread(peaks.is_file):
            return peaks

        async def make() -> Path:
            if await asyncio.to_thread(peaks.is_file):
                return peaks
            self.media_runs["peaks"] += 1
            audio = folder / AUDIO_NAME
            if await asyncio.to_thread(audio.is_file):
                try:
                    await write_peaks(audio, peaks)
                    return peaks
                except (OSError, EOFError, ValueError, wave.Error) as exc:  # removed meanwhile, or cut
                    log.warning("job %s: no peaks from audio.wav (%s); decoding the input", job.id, exc)
            src = self.ctx.input_file(job)
            if not await asyncio.to_thread(src.is_file):
                raise Conflict(
                    "the waveform is not ready yet (the job's audio is not extracted)", code="not_ready"
                )
            try:
                data = await decoded_peaks(src, job.source_name, self.settings.media, self._track(job))
            except MediaError as exc:
                raise self._media_error(exc) from None
            await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(write_atomic, peaks, data)
            return peaks

        return await self._once(("peaks", job.id), make)

    # --- models --------------------------------------------------------------------------

    def models_in_use(self) -> set[str]:
        """Model keys that running jobs depend on (their deletion is refused)."""
        keys: set[str] = set()
        for job_id in self.scheduler.running():
            options = self.scheduler.options_of(job_id)
            if options:
                keys.add(f"whisper:{options.get('model')}")
                if options.get("language"):
                    keys.add(f"align:{options['language']}")
                if options.get("diarize"):
                    keys.add(f"diarize:{self.settings.models.default_diarize}")
        return keys

    async def download_model(self, kind: str, model_id: str) -> tuple[str, dict[str, Any]]:
        """Queue a download (idempotent): its answer and the model's state."""
        answer = await self.models.request(kind, model_id)
        return answer, self.models.info(self.models.state(kind, model_id))

    async def delete_model(self, kind: str, model_id: str) -> dict[str, Any]:
        """Delete a model's files and unload it; refused while a running job uses it."""
        await self.models.delete(kind, model_id, self.models_in_use())
        return self.models.info(self.models.state(kind, model_id))

    # --- health --------------------------------------------------------------------------

    def node_info(self) -> dict[str, Any]:
        """What this node tells the others (and /api/health) of itself: no server paths."""
        return {
            "runners": [{k: r[k] for k in RUNNER_KEYS} for r in self.pool.health()],
            "running_jobs": self.scheduler.running(),
            "capacity": self.scheduler.capacity,
            "models": self.models.statuses(),
        }

    async def health(self) -> dict[str, Any]:
        """Each runner's state and the jobs running here; `node`: this node now, `nodes`:
        every live node sharing the job store (this one as it is now), sorted by id."""
        me = self.nodes.me or await self.nodes.beat(self.node_info())
        me = replace(me, info=self.node_info())  # seen at its last heartbeat; the rest now
        others = [n for n in await self.nodes.nodes() if n.id != me.id]
        return {
            "runners": self.pool.health(),
            "running_jobs": self.scheduler.running(),
            "node": me.json(),
            "nodes": sorted([me.json(), *(n.json() for n in others)], key=lambda n: str(n["id"])),
        }
