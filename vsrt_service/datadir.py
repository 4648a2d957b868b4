"""Owning a data directory: one process at a time holds it, under an exclusive lock.

Two processes on one data directory (a `vsrt serve` and a `vsrt transcribe`, or two
servers) would share the database but not their memory: each claims the other's jobs and
keeps its own stale model states. So whoever opens a data directory first takes
`fcntl.flock(LOCK_EX | LOCK_NB)` on `<data>/vsrt.lock` and writes its pid and command
line into it; a second process fails at once with `DataDirLocked`, naming the holder. The
kernel drops a flock when its holder exits, even by SIGKILL, so a stale file never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shlex
import sys
from collections.abc import AsyncIterator
from pathlib import Path

LOCK_NAME = "vsrt.lock"


class DataDirLocked(Exception):
    """The data directory is held by another process (or another service in this one)."""

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
