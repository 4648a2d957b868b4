"""The player's routes under /api/jobs/{id}: the job's media (or its audio proxy) with HTTP
Range, what the browser needs to know to play it, the waveform peaks, and media grants.

Files are served by aiohttp's FileResponse (Range, If-Range, HEAD, 416); which file is the
service's business: only the job's own input or the files made in its folder, never a path
from the request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from multidict import CIMultiDict

from vsrt_service.web.keys import GRANTS, SERVICE

routes = web.RouteTableDef()

#: The player fetches these again on every visit and seek; they change only with the job.
CACHE = "private, max-age=3600"


class _File(web.FileResponse):
    """A FileResponse that may be told to ignore the request's Range (`whole`)."""

    whole = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self.whole:
            kept = CIMultiDict(
                (k, v) for k, v in request.headers.items() if k.lower() not in ("range", "if-range")
            )
            request = request.clone(headers=kept)
        return await super().prepare(request)


async def _file(request: web.Request, path: Path, mime: str, disposition: bool = True) -> web.FileResponse:
    """The file with Range. aiohttp compares If-Range only as a date and sends the range for
    an entity tag; RFC 9110 (13.1.5) wants the whole file unless the tag matches strongly
    (a proxy made again is another file), so then the range is dropped here."""
    headers = {"Content-Type": mime, "Cache-Control": CACHE}
    if disposition:
        headers["Content-Disposition"] = "inline"
    response = _File(path, headers=headers)
    if_range = request.headers.get(hdrs.IF_RANGE, "")
    if hdrs.RANGE in request.headers and if_range.startswith(('"', "W/")):
        st = await asyncio.to_thread(path.stat)
        response.whole = if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"'  # aiohttp's ETag
    return response


@routes.get("/api/jobs/{job_id}/media")
async def media(request: web.Request) -> web.StreamResponse:
    """The job's file as uploaded, or `?variant=audio`: the AAC proxy, made when first asked for."""
    found = await request.app[SERVICE].media(request.match_info["job_id"], request.query.get("variant"))
    return await _file(request, found.path, found.mime)


@routes.get("/api/jobs/{job_id}/media/info")
async def media_info(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SERVICE].media_info(request.match_info["job_id"]))


@routes.get("/api/jobs/{job_id}/peaks")
async def peaks(request: web.Request) -> web.StreamResponse:
    """audiowaveform's binary format v1, 8-bit, 50 pairs a second (`jobs/peaks.py`)."""
    path = await request.app[SERVICE].peaks(request.match_info["job_id"])
    return await _file(request, path, "application/octet-stream", disposition=False)


@routes.post("/api/jobs/{job_id}/media/grant")
async def grant(request: web.Request) -> web.Response:
    """A query string that lets `<video src>` and `<audio src>` fetch this job's media without
    the bearer token (the auth middleware checks it); reusable until it expires."""
    job = await request.app[SERVICE].get(request.match_info["job_id"])
    grants = request.app[GRANTS]
    return web.json_response({"query": f"grant={grants.issue(job.id)}", "expires_in": grants.lifetime})
