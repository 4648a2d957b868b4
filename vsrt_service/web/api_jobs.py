"""Job routes under /api (SPEC section 3) and the job event stream (section 4).

Each handler reads the request, calls one `Service` use case and shapes the answer; the
response shapes live here, the behaviour in the service."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from vsrt_service.core import bigjson
from vsrt_service.core.broker import job_channel
from vsrt_service.core.cues import Cue
from vsrt_service.core.errors import Forbidden, InvalidInput
from vsrt_service.core.formats import MEDIA_TYPES, cue_fields
from vsrt_service.jobs.store import Job, JobStatus
from vsrt_service.service import Service, Transcript, is_final_event
from vsrt_service.web import sse
from vsrt_service.web.keys import SERVICE, SETTINGS, STREAMS
from vsrt_service.web.uploads import receive, receive_form

routes = web.RouteTableDef()


def job_json(job: Job) -> dict[str, Any]:
    """A job as clients see it: no server paths, only what they can act on."""
    return {
        **job.status_dict(),
        "source_name": job.source_name,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "settings": job.options,
        # the track chosen at submit; None for a job from before tracks were chosen
        "audio_track": track if isinstance(track := job.options.get("audio_track"), dict) else None,
        "language": job.language,
        "alignment": job.alignment,
        "duration": job.duration,
        "attempts": job.attempts,
    }


async def read_json_value(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the request body must be JSON", code="bad_json") from None


async def read_json(request: web.Request) -> dict[str, Any]:
    body = await read_json_value(request)
    if not isinstance(body, dict):
        raise InvalidInput("the request body must be a JSON object", code="bad_json")
    return body


def _flag(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidInput(f"{field} must be true or false", field=field)


def resolve_media_path(svc: Service, raw: Any) -> Path:
    """A file named by path must lie inside a configured media root (symlinks resolved)."""
    if not isinstance(raw, str) or not raw:
        raise InvalidInput("path must be a non-empty string", field="path")
    roots = svc.settings.media_root_paths()
    if not roots:
        raise Forbidden("naming server files is disabled (no media roots)", field="path")
    for root in roots:
        candidate = (root / raw).resolve()
        if candidate.is_relative_to(root):
            return candidate
    raise Forbidden("the path is outside the configured media roots", field="path")


@routes.post("/api/jobs")
async def create_job(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    if request.content_type == "multipart/form-data":
        upload = await receive(request, svc.storage, svc.settings.server.max_upload_mb << 20)
        try:  # submit names a bad setting first, then refuses what is not media
            job = await svc.submit(
                upload.path, upload.settings, source_name=upload.name, start=upload.start, field="file"
            )
        except BaseException:
            # Shielded: a second cancellation (shutdown) must not strand the removal in the
            # thread pool's queue. Anything still left is an orphan the next start removes.
            await asyncio.shield(asyncio.to_thread(upload.path.unlink, missing_ok=True))
            raise
    else:
        body = await read_json(request)
        unknown = set(body) - {"path", "settings", "start"}
        if unknown:
            field = sorted(unknown)[0]
            raise InvalidInput(f"unknown field {field!r}", field=field)
        path = await asyncio.to_thread(resolve_media_path, svc, body.get("path"))
        job = await svc.submit(path, body.get("settings"), start=_flag(body.get("start", True), "start"))
    return web.json_response({"job_id": job.id, **job_json(job)}, status=201)


@routes.post("/api/detect-language")
async def detect_language(request: web.Request) -> web.Response:
    """The language of an upload (part `file`, optional `model`) or of a file under a media
    root (JSON `{"path", "model"?}`), with the top candidates."""
    svc = request.app[SERVICE]
    if request.content_type == "multipart/form-data":
        form = await receive_form(
            request, svc.storage, svc.settings.server.max_upload_mb << 20, allowed=("model",)
        )
        try:
            if form.path is None:
                raise InvalidInput("the form has no `file` part", code="missing_file", field="file")
            found = await svc.detect_language(
                form.path, model=form.fields.get("model"), source_name=form.name
            )
        finally:
            if form.path is not None:
                await asyncio.shield(asyncio.to_thread(form.path.unlink, missing_ok=True))
    else:
        body = await read_json(request)
        unknown = set(body) - {"path", "model"}
        if unknown:
            field = sorted(unknown)[0]
            raise InvalidInput(f"unknown field {field!r}", field=field)
        model = body.get("model")
        if model is not None and not isinstance(model, str):
            raise InvalidInput("model must be a catalog id", field="model")
        path = await asyncio.to_thread(resolve_media_path, svc, body.get("path"))
        found = await svc.detect_language(path, model=model, field="path")
    return web.json_response({"model": found.model, **found.result})


@routes.get("/api/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    try:
        limit = min(200, max(1, int(request.query.get("limit", "50"))))
        offset = max(0, int(request.query.get("offset", "0")))
    except ValueError:
        raise InvalidInput("limit and offset must be whole numbers") from None
    jobs, total = await svc.list_jobs(limit, offset)
    return web.json_response(
        {
            "jobs": [job_json(j) for j in jobs],
            "total": total,
            "limit": limit,
            "offset": offset,
        }
    )


@routes.get("/api/jobs/{job_id}")
async def get_job(request: web.Request) -> web.Response:
    return web.json_response(job_json(await request.app[SERVICE].get(request.match_info["job_id"])))


@routes.get("/api/status/{job_id}")
async def status(request: web.Request) -> web.Response:
    job = await request.app[SERVICE].get(request.match_info["job_id"])
    return web.json_response(job.status_dict())


async def job_request(request: web.Request) -> tuple[Service, str, dict[str, Any]]:
    """The service, the body's `job_id` and the body."""
    body = await read_json(request)
    job_id = body.get("job_id")
    if not isinstance(job_id, str):
        raise InvalidInput("job_id is required", field="job_id")
    return request.app[SERVICE], job_id, body


@routes.post("/api/start")
async def start(request: web.Request) -> web.Response:
    svc, job_id, body = await job_request(request)
    settings = body.get("settings")
    restart = _flag(body.get("restart", False), "restart")
    forced = [] if restart else (await svc.resume_conflicts(job_id, settings))[1]
    job = await svc.resume(job_id, settings, restart=restart)
    return web.json_response({**job_json(job), "forced_settings": forced})


@routes.post("/api/pause/{job_id}")
async def pause(request: web.Request) -> web.Response:
    return web.json_response(job_json(await request.app[SERVICE].pause(request.match_info["job_id"])))


@routes.post("/api/cancel/{job_id}")
async def cancel(request: web.Request) -> web.Response:
    return web.json_response(job_json(await request.app[SERVICE].cancel(request.match_info["job_id"])))


@routes.delete("/api/jobs/{job_id}")
async def delete(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    await request.app[SERVICE].delete(job_id)
    return web.json_response({"job_id": job_id, "deleted": True})


def transcript_json(t: Transcript) -> dict[str, Any]:
    job = t.job
    return {
        "job_id": job.id,
        "source": t.source,
        "language": job.language,
        "alignment": job.alignment,
        "text": " ".join(s["text"] for s in t.segments if s["text"]),
        "segments": t.segments,
        "edited_cues": t.edited_cues,
        "progress": {
            "processed": job.processed,
            "total": job.total,
            "percent": round(job.percent, 2),
            "status": job.status,
            "phase": job.phase,
        },
    }


@routes.get("/api/transcription-text/{job_id}")
async def transcription_text(request: web.Request) -> web.Response:
    transcript = await request.app[SERVICE].transcript(request.match_info["job_id"])
    # Megabytes for hours of speech: shaped and encoded in a thread, a segment at a time.
    text = await asyncio.to_thread(lambda: bigjson.dumps(transcript_json(transcript), 2))
    return web.Response(text=text, content_type="application/json")


@routes.get("/api/checkpoint-settings/{job_id}")
async def checkpoint_settings(request: web.Request) -> web.Response:
    job = await request.app[SERVICE].get(request.match_info["job_id"])
    return web.json_response(
        {
            "job_id": job.id,
            "has_checkpoint": job.locked_options is not None,
            "settings": job.locked_options,
            "locked": sorted(job.locked_options or {}),
        }
    )


@routes.post("/api/validate-resume-settings")
async def validate_resume_settings(request: web.Request) -> web.Response:
    svc, job_id, body = await job_request(request)
    job, found = await svc.resume_conflicts(job_id, body.get("settings"))
    return web.json_response(
        {
            "job_id": job.id,
            "valid": not found,
            "conflicts": found,
            "checkpoint_settings": job.locked_options,
        }
    )


@routes.get("/api/jobs/{job_id}/subtitles")
async def download(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    fmt = request.query.get("format", "srt")
    job = await svc.get(request.match_info["job_id"])
    text = await svc.subtitles(job.id, fmt)
    stem = Path(job.source_name).stem or "subtitles"
    return web.Response(
        text=text,
        content_type=MEDIA_TYPES[fmt].split(";")[0],
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{stem}.{fmt}"'},
    )


def cue_dicts(cues: list[Cue]) -> list[dict[str, Any]]:
    return [cue_fields(c) for c in cues]


@routes.put("/api/jobs/{job_id}/subtitles")
async def save_subtitles(request: web.Request) -> web.Response:
    """Save the user's cues. `version` (from the last load) makes a save made meanwhile by
    someone else a 409 `version_conflict`; without it the save always lands."""
    svc = request.app[SERVICE]
    body = await read_json_value(request)
    items = body.get("cues") if isinstance(body, dict) else body
    version = body.get("version") if isinstance(body, dict) else None
    saved = await svc.save_edited_cues(request.match_info["job_id"], items, version)
    return web.json_response(
        {
            "job_id": request.match_info["job_id"],
            "cues": len(saved.cues),
            "edited": True,
            "version": saved.version,
            "warnings": saved.warnings,
        }
    )


@routes.delete("/api/jobs/{job_id}/subtitles")
async def discard_edits(request: web.Request) -> web.Response:
    """Revert to the machine's cues (`?version=N` as for a save)."""
    raw = request.query.get("version")
    if raw is not None and not raw.isdigit():
        raise InvalidInput("version must be a whole number from the last load", field="version")
    job_id = request.match_info["job_id"]
    version = await request.app[SERVICE].discard_edits(job_id, int(raw) if raw is not None else None)
    return web.json_response({"job_id": job_id, "edited": False, "version": version})


@routes.post("/api/jobs/{job_id}/reflow")
async def reflow(request: web.Request) -> web.Response:
    """A selection of cues re-split by the server's cue builder; nothing is saved."""
    body = await read_json(request)
    cues = await request.app[SERVICE].reflow(request.match_info["job_id"], body.get("cues"))
    return web.json_response({"job_id": request.match_info["job_id"], "cues": cue_dicts(cues)})


@routes.get("/api/stream/{job_id}")
async def stream(request: web.Request) -> web.StreamResponse:
    svc = request.app[SERVICE]
    job_id = request.match_info["job_id"]
    await svc.get(job_id)  # 404 before the stream starts

    ended_before = False  # the snapshot told it: nothing more to tell

    async def snapshot() -> tuple[str, dict[str, Any]]:
        nonlocal ended_before
        data = await svc.snapshot(job_id)
        ended_before = data["status"] not in (JobStatus.QUEUED, JobStatus.PROCESSING)
        return "connected", data

    async def ended() -> tuple[str, dict[str, Any]] | None:
        return None if ended_before else await svc.ended(job_id)

    return await sse.serve(
        request,
        request.app[STREAMS],
        svc.broker,
        job_channel(job_id),
        snapshot,
        settings=request.app[SETTINGS].sse,
        ended=ended,
        final=is_final_event,
    )
