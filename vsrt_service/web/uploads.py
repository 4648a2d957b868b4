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
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import unquote

from aiohttp import BodyPartReader, web
from multidict import MultiDict

from vsrt_service.core.config import parse_flag
from vsrt_service.core.errors import InvalidInput, TooLarge
from vsrt_service.core.files import close_synced, replace_durably
from vsrt_service.jobs.storage import Storage

CHUNK = 1 << 20
MAX_SETTINGS_BYTES = 64 * 1024
_UNSAFE = re.compile(r"[^\w.\- ()\[\]]+")


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
    flag = parse_flag(value)
    if flag is None:
        raise InvalidInput(f"{field} must be true or false", field=field)
    return flag


@dataclass(frozen=True)
class Form:
    """A multipart form with one file part: where the file was stored, and the other fields
    as text, repeated keys kept in order (`timestamp_granularities[]=word&...`)."""

    path: Path | None
    name: str
    fields: MultiDict[str]


async def receive_form(
    request: web.Request,
    storage: Storage,
    max_bytes: int,
    *,
    file_field: str = "file",
    allowed: Collection[str] | None = None,
) -> Form:
    """Stream the file part `file_field` into the storage's uploads; other parts are read as
    short text.

    A field outside `allowed` (when given) is refused; nothing is left on disk when the form
    is refused. The caller owns the stored file from then on.
    """
    if request.content_length is not None and request.content_length > max_bytes + MAX_SETTINGS_BYTES:
        raise TooLarge(f"the upload is over the {max_bytes // 2**20} MB limit", code="too_large")
    try:
        reader = await request.multipart()
    except (AssertionError, ValueError, KeyError) as exc:
        raise InvalidInput(f"expected multipart/form-data: {exc}") from None
    fields: MultiDict[str] = MultiDict()
    stored: Path | None = None
    name = ""
    try:
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise InvalidInput("nested multipart is not supported")
            field = part.name or ""
            if field == file_field:
                if stored is not None:
                    raise InvalidInput(f"one file per request ({file_field})", field=file_field)
                name = display_name(part.filename or file_field)
                stored = storage.upload_path(stored_name(name))
                await _save(part, stored, max_bytes)
                await asyncio.to_thread(storage.put_upload, stored)
            elif allowed is not None and field not in allowed:
                raise InvalidInput(f"unexpected form field {field!r}", field=field)
            else:
                raw = await part.read(decode=True)
                if len(raw) > MAX_SETTINGS_BYTES:
                    raise InvalidInput(f"{field} is too large", field=field)
                fields.add(field, raw.decode(errors="replace"))
    except BaseException:
        if stored is not None:
            await asyncio.to_thread(_unlink, stored)
        raise
    return Form(stored, name, fields)


async def receive(request: web.Request, storage: Storage, max_bytes: int) -> Upload:
    """Read a multipart job upload: parts `file`, optional `settings` (JSON) and `start`."""
    start = _parse_bool(request.query.get("start", "true"), "start")
    form = await receive_form(request, storage, max_bytes, allowed=("settings", "start"))
    try:
        if form.path is None:
            raise InvalidInput("the form has no `file` part", code="missing_file", field="file")
        for field in ("settings", "start"):
            if len(form.fields.getall(field, [])) > 1:
                raise InvalidInput(f"one {field} part per job", field=field)
        settings: dict[str, Any] | None = None
        if "settings" in form.fields:
            try:
                settings = json.loads(form.fields["settings"] or "{}")
            except ValueError:
                raise InvalidInput("settings must be JSON", code="bad_settings", field="settings") from None
        if "start" in form.fields:
            start = _parse_bool(form.fields["start"], "start")
    except BaseException:
        if form.path is not None:
            await asyncio.to_thread(_unlink, form.path)
        raise
    return Upload(form.path, form.name, settings, start)


async def _save(part: BodyPartReader, target: Path, max_bytes: int) -> None:
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    fh = await asyncio.to_thread(open, tmp, "wb")
    size = 0
    try:
        while chunk := await part.read_chunk(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"the upload is over the {max_bytes // 2**20} MB limit", code="too_large")
            await asyncio.to_thread(fh.write, chunk)
        await asyncio.to_thread(close_synced, fh)  # on disk before a job can point at it
        if size == 0:
            raise InvalidInput("the uploaded file is empty", code="empty_file", field="file")
        await asyncio.to_thread(replace_durably, tmp, target)
    except BaseException:
        await asyncio.to_thread(fh.close)
        await asyncio.to_thread(_unlink, tmp)
        raise


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
