"""The player's routes under /api/jobs/{id}: the job's media (or its audio proxy) with HTTP
Range, what the browser needs to know to play it, the waveform peaks, and media grants.

Files are served by aiohttp's FileResponse (Range, If-Range, HEAD, 416); which file is the
service's business: only the job's own input or the files made in its folder, never a path
from the request.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from vsrt_service.web.keys import GRANTS, SERVICE

routes = web.RouteTableDef()

#: The player fetches these again on every visit and seek; they change only with the job.
CACHE = "private, max-age=3600"


def _file(path: Path, mime: str) -> web.FileResponse:
    return web.FileResponse(
        path,
        headers={
            "Content-Type": mime,
            "Content-Disposition": "inline",
            "Cache-Control": CACHE,
        },
    )


@routes.get("/api/jobs/{job_id}/media")
async def media(request: web.Request) -> web.StreamResponse:
    """The job's file as uploaded, or `?variant=audio`: the AAC proxy, made when first asked for."""
    found = await request.app[SERVICE].media(request.match_info["job_id"], request.query.get("variant"))
    return _file(found.path, found.mime)


@routes.get("/api/jobs/{job_id}/media/info")
async def media_info(request: web.Request) -> web.Response:
    return web.json_response(await request.app[SERVICE].media_info(request.match_info["job_id"]))


@routes.get("/api/jobs/{job_id}/peaks")
async def peaks(request: web.Request) -> web.StreamResponse:
    """audiowaveform's binary format v1, 8-bit, 50 pairs a second (`jobs/peaks.py`)."""
    path = await request.app[SERVICE].peaks(request.match_info["job_id"])
    response = _file(path, "application/octet-stream")
    del response.headers["Content-Disposition"]
    return response


@routes.post("/api/jobs/{job_id}/media/grant")
async def grant(request: web.Request) -> web.Response:
    """A query string that lets `<video src>` and `<audio src>` fetch this job's media without
    the bearer token (the auth middleware checks it); reusable until it expires."""
    job = await request.app[SERVICE].get(request.match_info["job_id"])
    grants = request.app[GRANTS]
    return web.json_response({"query": f"grant={grants.issue(job.id)}", "expires_in": grants.lifetime})
