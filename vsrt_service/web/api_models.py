"""Model routes under /api/models (SPEC sections 3 and 5) and the models event stream.

The model use cases are the service's model manager (`svc.models`); those that involve jobs
too (a download, a delete refused while a job uses the model) are `Service` methods."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from vsrt_service.core.broker import MODELS_CHANNEL, Event
from vsrt_service.core.errors import NotFound
from vsrt_service.models.manager import ModelManager
from vsrt_service.web import sse
from vsrt_service.web.keys import SERVICE, SETTINGS, STREAMS

routes = web.RouteTableDef()


def _models(request: web.Request) -> ModelManager:
    return request.app[SERVICE].models


def _kind(request: web.Request) -> str:
    kind, types = request.match_info["type"], _models(request).catalog.types
    if kind not in types:
        raise NotFound(f"model type must be one of {', '.join(types)}")
    return kind


@routes.get("/api/models/progress")
async def progress(request: web.Request) -> web.Response:
    return web.json_response(_models(request).snapshot())


@routes.post("/api/models/{type}/{model_id}/download")
async def download(request: web.Request) -> web.Response:
    status, info = await request.app[SERVICE].download_model(_kind(request), request.match_info["model_id"])
    return web.json_response({"status": status, "model": info}, status=200 if status == "ready" else 202)


@routes.post("/api/models/{type}/{model_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    models, kind = _models(request), _kind(request)
    canceled = await models.cancel(kind, request.match_info["model_id"])
    return web.json_response({"canceled": canceled})


@routes.delete("/api/models/{type}/{model_id}")
async def delete(request: web.Request) -> web.Response:
    info = await request.app[SERVICE].delete_model(_kind(request), request.match_info["model_id"])
    return web.json_response({"deleted": True, "model": info})


@routes.get("/api/models/preload/status")
async def preload_status(request: web.Request) -> web.Response:
    return web.json_response(_models(request).preload_status())


@routes.post("/api/models/preload/start")
async def preload_start(request: web.Request) -> web.Response:
    models = _models(request)
    return web.json_response({"status": await models.preload(), **models.preload_status()})


@routes.post("/api/models/preload/reset")
async def preload_reset(request: web.Request) -> web.Response:
    models = _models(request)
    models.reset_preload()
    return web.json_response(models.preload_status())


@routes.get("/api/models/cache/status")
async def cache_status(request: web.Request) -> web.Response:
    return web.json_response({"runners": await _models(request).cache_status()})


@routes.post("/api/models/cache/clear")
async def cache_clear(request: web.Request) -> web.Response:
    return web.json_response({"unloaded": await _models(request).clear_cache()})


async def _stream(
    request: web.Request, accept: Any = None, one: tuple[str, str] | None = None
) -> web.StreamResponse:
    models = _models(request)

    async def snapshot() -> tuple[str, dict[str, Any]]:
        if one is None:
            return "initial_state", models.snapshot()
        return "initial_state", {"models": [models.info(models.state(*one))]}

    return await sse.serve(
        request,
        request.app[STREAMS],
        models.broker,
        MODELS_CHANNEL,
        snapshot,
        settings=request.app[SETTINGS].sse,
        heartbeat_event="heartbeat",
        accept=accept or (lambda ev: True),
    )


@routes.get("/api/models/events/progress")
async def events_all(request: web.Request) -> web.StreamResponse:
    return await _stream(request)


@routes.get("/api/models/events/{type}/{model_id}")
async def events_one(request: web.Request) -> web.StreamResponse:
    kind, model_id = _kind(request), request.match_info["model_id"]
    _models(request).state(kind, model_id)  # 404 for an unknown model

    def accept(ev: Event) -> bool:
        return ev.data.get("type") == kind and ev.data.get("model_id") == model_id

    return await _stream(request, accept, (kind, model_id))


# Last: the fixed routes above (`/api/models/progress`) match first.
@routes.get("/api/models/{type}")
async def catalog(request: web.Request) -> web.Response:
    """`/api/models/whisper`, `/api/models/align`: one route for each catalog type."""
    kind = _kind(request)
    return web.json_response({"type": kind, "models": _models(request).catalog_state(kind)})
