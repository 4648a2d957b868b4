"""Shared media: where uploads and job folders live, behind one interface.

Uploads, a job's extracted audio, its outputs and the player's files live under the storage
root (`storage.root`, else the data directory), which every node of a PostgreSQL cluster sees
at the same path; the database, models and lock stay per host. `Storage` is what the service,
the pipeline and the housekeeping (jobs/datadir.py) do on that media; `FileStorage` does it on
a directory, and `storage_for(settings)` is the one place that picks it.

An S3-compatible store could implement the same protocol later. ffmpeg and the runners need
local files, so it would keep a per-host cache directory: `upload_path` and `workdir` name
places in that cache; `input_file` would download the object into the cache first (the caller
runs it in a thread), `put_upload` would upload the finished file, `remove_job`/`remove_upload`
/`remove` would delete the objects (and the cached copies), and the listings would come from
ListObjectsV2 (LastModified as the mtime). The pipeline would also need a hook to upload a
job's outputs when it ends; none exists yet because the file store needs none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from vsrt_service.core.config import Settings


@dataclass(frozen=True)
class Stored:
    """One entry the housekeeping may look at: where it is, its name, when it last changed."""

    path: Path
    name: str
    mtime: float


class Storage(Protocol):
    """The operations on shared media. Methods that touch the files block: call them in a
    thread (`asyncio.to_thread`); the ones that only name a place do not."""

    #: Whether other nodes use the same files (a storage root other than the data directory):
    #: housekeeping then leaves fresh files alone, as another node may be writing them.
    shared: bool

    def workdir(self, job_id: str) -> Path:
        """The local folder of a job's work files and outputs (made by whoever writes first)."""
        ...

    def upload_path(self, name: str) -> Path:
        """Where an upload stored under `name` (a name vsrt gave it) is written and read."""
        ...

    def is_upload(self, path: Path) -> bool:
        """Whether a job's input file is an upload of ours (removed with its job)."""
        ...

    def input_key(self, file: Path) -> str:
        """What a job stores as `input_path` for this resolved file: relative to the root
        when inside it (so every node finds it at its own mount), else the absolute path."""
        ...

    def input_file(self, input_path: str) -> Path:
        """The local file a job's `input_path` names."""
        ...

    def put_upload(self, path: Path) -> None:
        """Store an upload written whole at `upload_path(...)`; blocking."""
        ...

    def remove_job(self, job_id: str) -> None:
        """Remove a job's folder and everything in it; blocking."""
        ...

    def remove_upload(self, path: Path) -> None:
        """Remove one upload; blocking."""
        ...

    def remove(self, paths: Iterable[Path]) -> None:
        """Remove what the housekeeping listed (files or job folders); blocking."""
        ...

    def uploads(self) -> list[Stored]:
        """Every file in the uploads area, `.part` files included; blocking."""
        ...

    def job_folders(self) -> list[Stored]:
        """Every job folder (its name is the job id); blocking."""
        ...

    def job_files(self, job_id: str) -> list[Stored]:
        """The files in one job's folder; blocking."""
        ...


def _entries(directory: Path, dirs: bool) -> list[Stored]:
    """Plain files (or plain directories), no symlinks, with their mtime; [] if it is gone."""
    found: list[Stored] = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                try:
                    ok = entry.is_dir(follow_symlinks=False) if dirs else entry.is_file(follow_symlinks=False)
                    if ok:
                        found.append(
                            Stored(Path(entry.path), entry.name, entry.stat(follow_symlinks=False).st_mtime)
                        )
                except FileNotFoundError:  # removed while listed (another node, or a job)
                    continue
    except (FileNotFoundError, NotADirectoryError):
        return []
    return found


def remove_paths(paths: Iterable[Path]) -> None:
    """Remove files and folders (not what a symlink points to); gone already is fine."""
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


class FileStorage:
    """Storage on a directory: `<root>/<uploads>` and `<root>/<jobs>/<job id>`."""

    def __init__(self, root: Path, uploads_dir: Path, jobs_dir: Path, shared: bool) -> None:
        self.root, self.uploads_dir, self.jobs_dir, self.shared = root, uploads_dir, jobs_dir, shared

    def workdir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def upload_path(self, name: str) -> Path:
        return self.uploads_dir / name

    def is_upload(self, path: Path) -> bool:
        return path.parent == self.uploads_dir

    def input_key(self, file: Path) -> str:
        try:
            return str(file.relative_to(self.root))
        except ValueError:
            return str(file)

    def input_file(self, input_path: str) -> Path:
        path = Path(input_path)
        return path if path.is_absolute() else self.root / path

    def put_upload(self, path: Path) -> None:
        """Written in place already (uploads are streamed into the root)."""

    def remove_job(self, job_id: str) -> None:
        shutil.rmtree(self.workdir(job_id), ignore_errors=True)

    def remove_upload(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def remove(self, paths: Iterable[Path]) -> None:
        remove_paths(paths)

    def uploads(self) -> list[Stored]:
        return _entries(self.uploads_dir, dirs=False)

    def job_folders(self) -> list[Stored]:
        return _entries(self.jobs_dir, dirs=True)

    def job_files(self, job_id: str) -> list[Stored]:
        return _entries(self.workdir(job_id), dirs=False)


def storage_for(settings: Settings) -> Storage:
    """The storage the settings name (the one place that maps settings to a `Storage`)."""
    root = settings.storage_root
    return FileStorage(root, settings.uploads_dir, settings.jobs_dir, shared=root != settings.data_dir)
