"""Uploads: multipart streamed to disk in chunks, never held whole in memory.

The stored name is ours (a random id plus a sanitised extension) whatever the client sends,
and an upload over the limit leaves nothing on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web

from vsrt_service.core.files import close_synced, replace_durably

CHUNK = 1 << 20
MAX_SETTINGS_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[^\w.\- ()\[\]]+")


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.field = status, code, field


@dataclass(frozen=True)
class Upload:
    path: Path  # where it was stored
    name: str  # the client's name, made safe for display
    settings: dict[str, Any] | None
    start: bool


def display_name(raw: str | None) -> str:
    """The last path component of a client file name, without control or odd characters."""
    # Some clients percent-encode the name (aiohttp does): decode before taking the last part.
    raw = unicodedata.normalize("NFC", unquote(raw or ""))
    base = PureWindowsPath(PurePosixPath(raw).name).name  # strips both / and \\ paths
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    base = _UNSAFE.sub("_", base).strip(" .")
    return base[:200] or "upload"


def stored_name(name: str) -> str:
    suffix = Path(name).suffix.lower()
    suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else ""
    return f"{uuid.uuid4().hex}{suffix}"


def _parse_bool(value: str, field: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UploadError(400, "bad_request", f"{field} must be true or false", field)


async def receive(request: web.Request, upload_dir: Path, max_bytes: int) -> Upload:
    """Read a multipart job upload: parts `file`, optional `settings` (JSON) and `start`."""
    if request.content_length is not None and request.content_length > max_bytes + MAX_SETTINGS_BYTES:
        raise UploadError(413, "too_large", f"the upload is over the {max_bytes // 2**20} MB limit")
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise UploadError(400, "bad_request", f"expected multipart/form-data: {exc}") from None
    settings: dict[str, Any] | None = None
    start = _parse_bool(request.query.get("start", "true"), "start")
    stored: Path | None = None
    name = ""
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise UploadError(400, "bad_request", "nested multipart is not supported")
            if part.name == "file":
                if stored is not None:
                    raise UploadError(400, "bad_request", "one file per job", "file")
                name = display_name(part.filename)
                stored = upload_dir / stored_name(name)
                await _save(part, stored, max_bytes)
            elif part.name == "settings":
                raw = await part.read(decode=True)
                if len(raw) > MAX_SETTINGS_BYTES:
                    raise UploadError(400, "bad_settings", "settings are too large", "settings")
                try:
                    settings = json.loads(raw or b"{}")
                except ValueError:
                    raise UploadError(400, "bad_settings", "settings must be JSON", "settings") from None
            elif part.name == "start":
                start = _parse_bool((await part.read(decode=True)).decode(errors="replace"), "start")
            else:
                raise UploadError(400, "bad_request", f"unexpected form field {part.name!r}", part.name)
    except BaseException:
        if stored is not None:
            await asyncio.to_thread(_unlink, stored)
        raise
    if stored is None:
        raise UploadError(400, "missing_file", "the form has no `file` part", "file")
    return Upload(stored, name, settings, start)


async def _save(part: BodyPartReader, target: Path, max_bytes: int) -> None:
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    fh = await asyncio.to_thread(open, tmp, "wb")
    size = 0
    try:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise UploadError(413, "too_large", f"the upload is over the {max_bytes // 2**20} MB limit")
            await asyncio.to_thread(fh.write, chunk)
        await asyncio.to_thread(close_synced, fh)  # on disk before a job can point at it
        if size == 0:
            raise UploadError(400, "empty_file", "the uploaded file is empty", "file")
        await asyncio.to_thread(replace_durably, tmp, target)
    except BaseException:
        await asyncio.to_thread(fh.close)
        await asyncio.to_thread(_unlink, tmp)
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
