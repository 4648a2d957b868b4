"""The aiohttp application: `create_app(settings)` only wires the service, middlewares, routes.

One `Service` is entered by one cleanup_ctx (it opens and closes its own resources in order);
each API is a module of routes that calls it. What the app lets in and out (Host, Origin,
proxies, headers) is `security.py`'s business, error bodies are `errors.py`'s. The app works
standalone or mounted as a sub-app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from vsrt_service.core.broker import MODELS_CHANNEL
from vsrt_service.core.config import Settings, load_settings
from vsrt_service.core.errors import VsrtError
from vsrt_service.service import Service
from vsrt_service.web.api_asr import PREFIXES as ASR_PREFIXES
from vsrt_service.web.api_asr import asr_error
from vsrt_service.web.api_asr import routes as asr_routes
from vsrt_service.web.api_docs import PUBLIC_PATHS
from vsrt_service.web.api_docs import routes as docs_routes
from vsrt_service.web.api_jobs import routes as job_routes
from vsrt_service.web.api_media import routes as media_routes
from vsrt_service.web.api_meta import routes as meta_routes
from vsrt_service.web.api_models import routes as model_routes
from vsrt_service.web.api_openai import openai_error
from vsrt_service.web.api_openai import routes as openai_routes
from vsrt_service.web.auth import MediaGrants, Tickets, token_matches
from vsrt_service.web.errors import ErrorShape, error_response, vsrt_error_response
from vsrt_service.web.keys import GRANTS, SERVICE, SETTINGS, STREAMS, TICKETS
from vsrt_service.web.security import Exposure, add_security_headers
from vsrt_service.web.sse import Streams

STATIC_DIR = Path(__file__).resolve().parent / "static"

#: Streams authenticate with a one-use ticket in the query, since EventSource sends no headers.
STREAM_PREFIXES = ("/api/stream/", "/api/models/events/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Api:
    """One API the app serves: where its routes live and how it words an error. A prefix
    ending in "/" holds routes under it; another is a route of its own."""

    prefix: str
    error: ErrorShape


#: The APIs, first match wins (so `/api/detect-language` is vsrt's, `/detect-language` not).
#: Each has the bearer token (when configured) and its own error bodies.
APIS = (
    Api("/api/", error_response),
    Api("/v1/", openai_error),
    *(Api(prefix, asr_error) for prefix in ASR_PREFIXES),
)


def _api(request: web.Request) -> tuple[Api, str] | None:
    """The API a request is for and its path from the API's prefix on, also when the app is
    mounted under a prefix; None for the UI's pages and files."""
    for api in APIS:
        index = request.path.find(api.prefix)
        if index < 0:
            continue
        path = request.path[index:]
        if api.prefix.endswith("/") or path.rstrip("/") == api.prefix:
            return api, path
    return None


def _api_path(request: web.Request) -> str | None:
    found = _api(request)
    return found[1] if found else None


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every API failure in that API's shape (`{"error": {"code", "message", "field"?}}` for /api)."""
    try:
        return await handler(request)
    except VsrtError as exc:
        found = _api(request)
        return vsrt_error_response(exc, found[0].error if found else error_response)
    except web.HTTPException as exc:
        found = _api(request)
        if found is None or exc.status < 400:
            raise
        return found[0].error(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason, None)


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.app[SETTINGS].server.auth_token
    found = _api(request)
    if token is None or found is None or request.method == "OPTIONS" or found[1] == "/api/health":
        return await handler(request)  # health stays open for load balancers
    if found[1] in PUBLIC_PATHS:
        return await handler(request)  # the API's description and docs page, public like the UI
    path = found[1]
    if token_matches(request.headers.get("Authorization"), token):
        return await handler(request)
    ticket = request.query.get("ticket")
    if ticket and path.startswith(STREAM_PREFIXES) and request.app[TICKETS].redeem(ticket):
        return await handler(request)
    grant = request.query.get("grant")
    if grant and request.app[GRANTS].allows(grant, request.method, path):
        return await handler(request)
    return found[0].error(
        401,
        "unauthorized",
        "an expired or used ticket"
        if ticket
        else "an expired grant, or one for another job's media"
        if grant
        else "a bearer token is required (Authorization header)",
        None,
    )


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    allowed = request.app[SETTINGS].server.cors_origins
    origin = request.headers.get("Origin")
    if not allowed or not origin or _api_path(request) is None:
        return await handler(request)
    echo = origin if origin in allowed else ("*" if "*" in allowed else None)
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        resp: web.StreamResponse = web.Response(status=204)
        if echo:
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, Last-Event-ID"
            resp.headers["Access-Control-Max-Age"] = "600"
    else:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            resp = exc
    if echo:
        resp.headers["Access-Control-Allow-Origin"] = echo
        if echo != "*":
            resp.headers["Access-Control-Allow-Credentials"] = "true"
            resp.headers.add("Vary", "Origin")
    if isinstance(resp, web.HTTPException):
        raise resp
    return resp


# --- resources ---------------------------------------------------------------------------------


async def service_ctx(app: web.Application) -> AsyncIterator[None]:
    async with Service(app[SETTINGS]) as svc:
        app[SERVICE] = svc
        yield


async def streams_ctx(app: web.Application) -> AsyncIterator[None]:
    s = app[SETTINGS].sse
    app[STREAMS] = streams = Streams(
        s.max_connections_per_job, s.max_connections_per_client, {MODELS_CHANNEL: s.max_connections_models}
    )
    yield
    await streams.close()


async def end_streams(app: web.Application) -> None:
    """On shutdown, end every open event stream so the server can stop at once."""
    app[SERVICE].broker.close()


# --- small routes ------------------------------------------------------------------------------


async def ticket(request: web.Request) -> web.Response:
    tickets = request.app[TICKETS]
    return web.json_response({"ticket": tickets.issue(), "expires_in": tickets.lifetime})


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return web.Response(text="vsrt is running; the browser UI is not installed.\n")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or load_settings()
    guard = Exposure.of(settings.server).middleware()
    app = web.Application(middlewares=[guard, cors, errors, auth], client_max_size=1 << 20)
    app.on_response_prepare.append(add_security_headers)
    app[SETTINGS] = settings
    app[TICKETS] = Tickets(settings.server.ticket_seconds)
    app[GRANTS] = MediaGrants()
    app.cleanup_ctx.extend([service_ctx, streams_ctx])
    app.on_shutdown.append(end_streams)
    app.router.add_post("/api/auth/ticket", ticket)
    app.router.add_routes(job_routes)
    app.router.add_routes(media_routes)
    app.router.add_routes(model_routes)
    app.router.add_routes(meta_routes)
    app.router.add_routes(asr_routes)
    app.router.add_routes(docs_routes)
    app.router.add_routes(openai_routes)
    app.router.add_get("/", index)
    if STATIC_DIR.is_dir():
        app.router.add_static("/static/", STATIC_DIR, append_version=True)
    return app
