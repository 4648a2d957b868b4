"""Owning a data directory: one process at a time holds it, and keeps it tidy.

Two processes on one data directory (a `vsrt serve` and a `vsrt transcribe`, or two
servers) would share the database but not their memory: each claims the other's jobs and
keeps its own stale model states. So whoever opens a data directory first takes
`fcntl.flock(LOCK_EX | LOCK_NB)` on `<data>/vsrt.lock` and writes its pid and command
line into it; a second process fails at once with `DataDirLocked`, naming the holder. The
kernel drops a flock when its holder exits, even by SIGKILL, so a stale file never blocks.

The holder also removes what nobody will use again (`keep_tidy`): at start, the `.part`
files a crash left, uploads no job refers to and job folders without a job (on a storage
root shared with other nodes, only those past a grace period: jobs/storage.py); and, at
start and every few minutes, the extracted audio of jobs past its retention
(`jobs.keep_audio_hours`, `jobs.keep_resumable_audio_hours`).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from vsrt_service.core.config import Settings
from vsrt_service.core.errors import Conflict
from vsrt_service.core.files import PART_SUFFIX
from vsrt_service.jobs.storage import Storage, Stored, storage_for
from vsrt_service.jobs.store import Job, JobStore

log = logging.getLogger("vsrt.datadir")

LOCK_NAME = "vsrt.lock"
#: The audio a job extracts into its folder (pipeline.JobRun.audio).
AUDIO_NAME = "audio.wav"
#: Which audio track audio.wav was extracted from; it goes with the audio.
TRACK_NAME = "audio.track"


def audio_files(job_dir: Path) -> list[Path]:
    """A job's extracted audio and what describes it: removed together."""
    return [job_dir / AUDIO_NAME, job_dir / TRACK_NAME]


#: How often the audio retention is applied while the service runs.
SWEEP_SECONDS = 300.0
#: Names vsrt gives uploads (uploads.stored_name) and job folders (store job ids): nothing
#: else is ever removed, whatever the configured directories hold.
_UPLOAD_NAME = re.compile(r"[0-9a-f]{32}(?:\.[a-z0-9]{1,8})?")
_JOB_ID = re.compile(r"[0-9a-f]{32}")
#: On a shared storage root, how old a leftover must be before a node's start removes it:
#: younger, another node may still be writing it or about to create its job.
SHARED_GRACE_SECONDS = 3600.0
#: status -> the retention setting that applies to its audio.
_AUDIO_RETENTION = {
    "completed": "keep_audio_hours",
    "canceled": "keep_audio_hours",
    "failed": "keep_resumable_audio_hours",
    "paused": "keep_resumable_audio_hours",
}


class DataDirLocked(Conflict):
    """The data directory is held by another process (or another service in this one)."""

    code = "data_dir_locked"

    def __init__(self, data_dir: Path, pid: int | None, command: str) -> None:
        self.data_dir, self.pid, self.command = data_dir, pid, command
        holder = f"process {pid}" if pid else "another process"
        if command:
            holder += f" ({command})"
        super().__init__(
            f"the data directory {data_dir} is in use by {holder}; stop it, or give this "
            "command a data directory of its own with --data-dir"
        )


def _holder_line() -> str:
    """What this process writes into the lock file: its pid, then its command line."""
    command = shlex.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.orig_argv))
    return f"{os.getpid()}\n{command[:300]}\n"


def _acquire(data_dir: Path) -> int:
    """The lock file's descriptor, locked and naming this process; or DataDirLocked."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        first, _, rest = text.partition("\n")
        pid = int(first) if first.strip().isdigit() else None
        raise DataDirLocked(data_dir, pid, rest.strip()) from None
    except BaseException:
        os.close(fd)
        raise
    line = _holder_line().encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, line, 0)
    return fd


def _release(fd: int) -> None:
    """Empty the file (nobody holds it now) and close it, which drops the lock."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
    os.close(fd)


@contextlib.asynccontextmanager
async def lock_data_dir(data_dir: Path) -> AsyncIterator[None]:
    """Hold the data directory's lock for the duration of the block."""
    pending = asyncio.ensure_future(asyncio.to_thread(_acquire, data_dir))
    try:
        fd = await asyncio.shield(pending)
    except asyncio.CancelledError:
        # Cancelled while the thread took the lock: drop it once it is taken.
        pending.add_done_callback(
            lambda f: _release(f.result()) if not f.cancelled() and f.exception() is None else None
        )
        raise
    try:
        yield
    finally:
        await asyncio.shield(asyncio.to_thread(_release, fd))


# --- leftovers and retention ----------------------------------------------------------------


async def all_jobs(store: JobStore, page: int = 500) -> list[Job]:
    """Every job, a page at a time (the store has no unbounded listing)."""
    jobs: list[Job] = []
    while True:
        batch = await store.list_jobs(page, len(jobs))
        jobs.extend(batch)
        if len(batch) < page:
            return jobs


def find_leftovers(
    storage: Storage, jobs: Iterable[Job], now: float | None = None
) -> tuple[list[Path], list[Path]]:
    """(`.part` files, orphans): temporaries a crash left in uploads and job folders; and
    uploads no job refers to, job folders without a job. Only names vsrt gives are listed.

    On a shared root another node may be writing a `.part`, or have stored an upload whose
    job it has not created yet: there only what is older than `SHARED_GRACE_SECONDS` goes."""
    now = time.time() if now is None else now
    jobs = list(jobs)
    referenced = {os.path.normpath(storage.input_file(job.input_path)) for job in jobs}
    ids = {job.id for job in jobs}

    def stale(entry: Stored) -> bool:
        return not storage.shared or now - entry.mtime >= SHARED_GRACE_SECONDS

    parts: list[Path] = []
    orphans: list[Path] = []
    for entry in storage.uploads():
        name = entry.name
        if not stale(entry):
            continue
        if name.endswith(PART_SUFFIX) and _UPLOAD_NAME.fullmatch(name[: -len(PART_SUFFIX)]):
            parts.append(entry.path)
        elif _UPLOAD_NAME.fullmatch(name) and os.path.normpath(entry.path) not in referenced:
            orphans.append(entry.path)
    for entry in storage.job_folders():
        if not _JOB_ID.fullmatch(entry.name):
            continue
        if entry.name not in ids:
            if stale(entry):
                orphans.append(entry.path)
            continue
        parts.extend(
            f.path for f in storage.job_files(entry.name) if f.name.endswith(PART_SUFFIX) and stale(f)
        )
    return parts, orphans


async def expire_audio(
    settings: Settings, store: JobStore, now: float | None = None, storage: Storage | None = None
) -> list[str]:
    """Remove the audio of jobs past its retention; the ids of the jobs whose audio went.

    A job that changed since the list was read (a resume) is left alone: only the state the
    decision was made on may lose its audio. A later run extracts it again if needed. It goes
    by the job's status in the store, which every node on a shared root shares, and never
    touches a job that is processing (on whichever node)."""
    now = time.time() if now is None else now
    files = storage_for(settings) if storage is None else storage
    due = []
    for job in await all_jobs(store):
        setting = _AUDIO_RETENTION.get(job.status)
        if setting is not None and now - job.updated_at >= getattr(settings.jobs, setting) * 3600:
            due.append(job)

    def present() -> list[Job]:
        return [job for job in due if (files.workdir(job.id) / AUDIO_NAME).is_file()]

    removed = []
    for job in await asyncio.to_thread(present):
        current = await store.get_job(job.id)
        if current is None or (current.status, current.updated_at) != (job.status, job.updated_at):
            continue
        await asyncio.to_thread(files.remove, audio_files(files.workdir(job.id)))
        removed.append(job.id)
    if removed:
        log.info("removed the extracted audio of %d finished job(s)", len(removed))
    return removed


@contextlib.asynccontextmanager
async def keep_tidy(
    settings: Settings, store: JobStore, storage: Storage | None = None
) -> AsyncIterator[None]:
    """Clean up at start, and sweep expired audio every SWEEP_SECONDS while open.

    `.part` files go before the block starts (a resumed job may write the same name next);
    orphans and expired audio go in the background, and that first pass is finished on
    exit. Nothing can refer to an orphan meanwhile: new uploads and jobs get new names (on a
    shared root, only leftovers past the grace period are taken: see `find_leftovers`)."""
    files = storage_for(settings) if storage is None else storage
    parts, orphans = await asyncio.to_thread(find_leftovers, files, await all_jobs(store))
    await asyncio.to_thread(files.remove, parts)
    if parts or orphans:
        log.info(
            "removing %d temporary file(s) and %d orphaned upload(s) or job folder(s)",
            len(parts),
            len(orphans),
        )

    async def first_pass() -> None:
        await asyncio.to_thread(files.remove, orphans)
        await expire_audio(settings, store, storage=files)

    async def every_few_minutes() -> None:
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await expire_audio(settings, store, storage=files)
            except Exception:
                log.exception("audio retention sweep failed")

    first = asyncio.create_task(first_pass(), name="vsrt-cleanup")
    periodic = asyncio.create_task(every_few_minutes(), name="vsrt-audio-retention")
    try:
        yield
    finally:
        periodic.cancel()
        await asyncio.wait([first, periodic])
        if not first.cancelled() and first.exception() is not None:
            log.error("clean-up at start failed", exc_info=first.exception())
