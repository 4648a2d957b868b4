"""Durable file writes: after a crash or power loss a file holds its old or its new content.

A write is answered (a 200, a job completed) only once it would survive power loss: the
data goes to a temporary file in the same directory, which is fsynced, renamed over the
target, and then the directory is fsynced so the rename itself is on disk. Blocking:
call these through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO

#: Every temporary file ends so; a start-up sweep removes those a crash left behind.
PART_SUFFIX = ".part"


def part_name(target: Path) -> Path:
    """A fresh hidden temporary name beside `target` (two writers never share one)."""
    return target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}{PART_SUFFIX}")


def fsync_dir(path: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def close_synced(fh: BinaryIO) -> None:
    """Flush and fsync a file written in pieces, then close it."""
    fh.flush()
    os.fsync(fh.fileno())
    fh.close()


def replace_durably(tmp: Path, target: Path) -> None:
    """Rename a finished, fsynced temporary file over `target` and fsync the directory."""
    os.replace(tmp, target)
    fsync_dir(target.parent)


def write_atomic(target: Path, data: str | bytes) -> None:
    """Write `target` whole or not at all (str as UTF-8); nothing temporary is left behind."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = part_name(target)
    # O_EXCL: never write through a name someone else made; 0o666 lets the umask decide.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        replace_durably(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
