"""Jobs and models over a test client's HTTP API: upload, open the event streams, spot completion."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient

from tests.sse_client import SseEvent, SseReader


async def post_upload(
    client: TestClient[Any, Any],
    path: Path,
    settings: dict[str, Any] | None = None,
    name: str | None = None,
    start: bool = True,
    headers: dict[str, str] | None = None,
) -> aiohttp.ClientResponse:
    """POST /api/jobs with `path` as the `file` part; the response, whatever its status."""
    form = aiohttp.FormData()
    if settings is not None:
        form.add_field("settings", json.dumps(settings), content_type="application/json")
    form.add_field(
        "file",
        await asyncio.to_thread(path.read_bytes),
        filename=name or path.name,
        content_type="application/octet-stream",
    )
    return await client.post(f"/api/jobs?start={'true' if start else 'false'}", data=form, headers=headers)


async def upload(
    client: TestClient[Any, Any],
    path: Path,
    settings: dict[str, Any] | None = None,
    name: str | None = None,
    start: bool = True,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    resp = await post_upload(client, path, settings, name, start, headers)
    body = await resp.json()
    assert resp.status == 201, body
    return body


async def open_stream(client: TestClient[Any, Any], job_id: str, **headers: str) -> SseReader:
    resp = await client.get(f"/api/stream/{job_id}", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    return SseReader(resp)


def is_complete(ev: SseEvent) -> bool:
    return ev.event == "signal" and ev.data["code"] == "job_complete"


async def model_events(client: TestClient[Any, Any]) -> SseReader:
    resp = await client.get("/api/models/events/progress")
    assert resp.status == 200
    reader = SseReader(resp)
    first = await reader.next()
    assert first.event == "initial_state"
    return reader


def done_for(kind: str, model_id: str) -> Callable[[SseEvent], bool]:
    def check(ev: SseEvent) -> bool:
        return (
            ev.event in ("model_complete", "model_error")
            and ev.data["type"] == kind
            and ev.data["model_id"] == model_id
        )

    return check


async def catalog_entry(client: TestClient[Any, Any], kind: str, model_id: str) -> dict[str, Any]:
    body = await (await client.get(f"/api/models/{kind}")).json()
    return next(m for m in body["models"] if m["id"] == model_id)
