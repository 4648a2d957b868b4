"""Model routes under /api/models (SPEC sections 3 and 5) and the models event stream."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from vsrt_service.core.broker import Event
from vsrt_service.models.manager import CHANNEL
from vsrt_service.service import ServiceError
from vsrt_service.web import sse
from vsrt_service.web.keys import MODELS, SERVICE, SETTINGS, STREAMS

routes = web.RouteTableDef()


def _kind(request: web.Request) -> str:
    kind, types = request.match_info["type"], request.app[MODELS].catalog.types
    if kind not in types:
        raise ServiceError(404, "not_found", f"model type must be one of {', '.join(types)}")
    return kind


@routes.get("/api/models/progress")
async def progress(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODELS].snapshot())


@routes.post("/api/models/{type}/{model_id}/download")
async def download(request: web.Request) -> web.Response:
    models, kind = request.app[MODELS], _kind(request)
    status = await models.request(kind, request.match_info["model_id"])
    st = models.state(kind, request.match_info["model_id"])
    return web.json_response({"status": status, "model": models.info(st)},
                             status=200 if status == "ready" else 202)


@routes.post("/api/models/{type}/{model_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    models, kind = request.app[MODELS], _kind(request)
    canceled = await models.cancel(kind, request.match_info["model_id"])
    return web.json_response({"canceled": canceled})


@routes.delete("/api/models/{type}/{model_id}")
async def delete(request: web.Request) -> web.Response:
    models, kind = request.app[MODELS], _kind(request)
    model_id = request.match_info["model_id"]
    await models.delete(kind, model_id, request.app[SERVICE].models_in_use())
    return web.json_response({"deleted": True, "model": models.info(models.state(kind, model_id))})


@routes.get("/api/models/preload/status")
async def preload_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[MODELS].preload_status())


@routes.post("/api/models/preload/start")
async def preload_start(request: web.Request) -> web.Response:
    models = request.app[MODELS]
    return web.json_response({"status": await models.preload(), **models.preload_status()})


@routes.post("/api/models/preload/reset")
async def preload_reset(request: web.Request) -> web.Response:
    models = request.app[MODELS]
    models.reset_preload()
    return web.json_response(models.preload_status())


@routes.get("/api/models/cache/status")
async def cache_status(request: web.Request) -> web.Response:
    return web.json_response({"runners": await request.app[MODELS].cache_status()})


@routes.post("/api/models/cache/clear")
async def cache_clear(request: web.Request) -> web.Response:
    return web.json_response({"unloaded": await request.app[MODELS].clear_cache()})


async def _stream(request: web.Request, accept: Any = None, one: tuple[str, str] | None = None
                  ) -> web.StreamResponse:
    models = request.app[MODELS]

    async def snapshot() -> tuple[str, dict[str, Any]]:
        if one is None:
            return "initial_state", models.snapshot()
        return "initial_state", {"models": [models.info(models.state(*one))]}

    try:
        with request.app[STREAMS].hold(CHANNEL, request) as gone:
            return await sse.stream(
                request, models.broker, CHANNEL, snapshot, gone,
                settings=request.app[SETTINGS].sse, heartbeat_event="heartbeat",
                accept=accept or (lambda ev: True),
            )
    except sse.TooManyStreams as exc:
        raise ServiceError(429, "too_many_streams", str(exc)) from None


@routes.get("/api/models/events/progress")
async def events_all(request: web.Request) -> web.StreamResponse:
    return await _stream(request)


@routes.get("/api/models/events/{type}/{model_id}")
async def events_one(request: web.Request) -> web.StreamResponse:
    kind, model_id = _kind(request), request.match_info["model_id"]
    request.app[MODELS].state(kind, model_id)  # 404 for an unknown model

    def accept(ev: Event) -> bool:
        return ev.data.get("type") == kind and ev.data.get("model_id") == model_id

    return await _stream(request, accept, (kind, model_id))


# Last: the fixed routes above (`/api/models/progress`) match first.
@routes.get("/api/models/{type}")
async def catalog(request: web.Request) -> web.Response:
    """`/api/models/whisper`, `/api/models/align`: one route for each catalog type."""
    kind = _kind(request)
    return web.json_response({"type": kind, "models": request.app[MODELS].catalog_state(kind)})
