"""`GET /api/meta`: the service's vocabularies, so clients (the UI) read them instead of a copy.

Phases with their shares of a job's progress, job statuses, signal codes, model states and
the catalog's model types; all from core/vocab.py, the job store and the loaded catalog.
"""

from __future__ import annotations

from importlib import metadata

from aiohttp import web

from vsrt_service.core.vocab import STEPS, ModelStatus, Signal
from vsrt_service.jobs.store import JobStatus
from vsrt_service.web.keys import SERVICE

routes = web.RouteTableDef()


def version() -> str:
    try:
        return metadata.version("vsrt")
    except metadata.PackageNotFoundError:
        return "unknown"


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
