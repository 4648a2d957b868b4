"""`GET /api/health`: whether the service is up, its runners and the nodes sharing its job
store; `GET /api/meta`: the service's vocabularies, so clients (the UI) read them instead of a copy.

Phases with their shares of a job's progress, job statuses, signal codes, model states and
the catalog's model types; all from core/vocab.py, the job store and the loaded catalog.
"""

from __future__ import annotations

import time
from importlib import metadata

from aiohttp import web

from vsrt_service.core.redact import public_text
from vsrt_service.core.vocab import STEPS, ModelStatus, Signal
from vsrt_service.jobs.nodes import RUNNER_KEYS
from vsrt_service.jobs.store import JobStatus
from vsrt_service.web.auth import token_matches
from vsrt_service.web.keys import SERVICE, SETTINGS, STREAMS

routes = web.RouteTableDef()


def version() -> str:
    try:
        return metadata.version("vsrt")
    except metadata.PackageNotFoundError:
        return "unknown"


@routes.get("/api/health")
async def health(request: web.Request) -> web.Response:
    """Open to load balancers: status, version and runner states. Details (pids, restarts,
    errors, versions, limits) only with the bearer token, so never without one configured.
    The nodes sharing the job store (`node`, `nodes`: public runner states, jobs, models) too,
    except to strangers of a server that has a token."""
    settings = request.app[SETTINGS]
    state = await request.app[SERVICE].health()
    runners = state["runners"]
    token = settings.server.auth_token
    authorized = token is not None and token_matches(request.headers.get("Authorization"), token)
    if not authorized:
        public = {
            "status": "ok",
            "version": version(),
            "runners": [{key: r[key] for key in RUNNER_KEYS} for r in runners],
        }
        if token is None:  # an open server: its jobs and models are anyone's to list anyway
            public.update(node=state["node"], nodes=state["nodes"])
        return web.json_response(public)
    for runner in runners:
        if runner["last_error"]:
            runner["last_error"] = public_text(runner["last_error"], settings.data_dir)
    return web.json_response(
        {
            "status": "ok",
            "version": version(),
            "time": time.time(),
            "runners": runners,
            "running_jobs": len(state["running_jobs"]),
            "open_streams": request.app[STREAMS].open_streams(),
            "limits": {"max_upload_mb": settings.server.max_upload_mb},
            "auth": True,
            "node": state["node"],
            "nodes": state["nodes"],
        }
    )


@routes.get("/api/meta")
async def meta(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "phases": [
                {"name": s.phase, "label": s.label, "share": s.share, "start": s.start, "end": s.end}
                for s in STEPS
            ],
            "job_statuses": list(JobStatus),
            "signals": list(Signal),
            "model_types": list(request.app[SERVICE].models.catalog.types),
            "model_statuses": list(ModelStatus),
            "version": version(),
        }
    )
