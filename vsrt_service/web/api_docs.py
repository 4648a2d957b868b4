"""`GET /api/openapi.json` (the merged OpenAPI description, web/openapi/) and `GET /api/docs`
(Swagger UI, vendored under static/vendor/swagger-ui, rendering it).

Both are open without the bearer token, like the UI's own page and files: the description is
the same public contract for every install, and the page holds no data; trying a route from it
needs the token like any other call (its Authorize button).
"""

from __future__ import annotations

import asyncio
import functools
import json

from aiohttp import web

from vsrt_service.web import openapi

routes = web.RouteTableDef()

#: The paths the auth middleware lets through without the token (beside /api/health).
PUBLIC_PATHS = ("/api/openapi.json", "/api/docs")

DOCS_PAGE = openapi.HERE.parent / "static" / "docs.html"


@functools.cache
def _encoded() -> bytes:
    """The description as JSON, built once (file reads: in a thread)."""
    return json.dumps(openapi.document(), indent=1).encode()


@routes.get("/api/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    body = await asyncio.to_thread(_encoded)
    return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-cache"})


@routes.get("/api/docs")
async def docs(request: web.Request) -> web.StreamResponse:
    """The page loads its script, styles and the description by relative URLs, so it works
    mounted under a prefix too."""
    return web.FileResponse(DOCS_PAGE, headers={"Cache-Control": "no-cache"})
