"""The OpenAPI description (`GET /api/openapi.json`) against the app's real routes, both ways,
validated as OpenAPI 3.1; the fragment merge; the vendored Swagger UI against its pins; and the
docs page (`/api/docs`) in real chromium: every operation shown, no request leaving the server,
no console error or CSP violation, and a call made from the page reaching this server.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from tests.conftest import ClientFactory, SettingsFactory
from tests.http_helpers import upload
from tests.media import Speech
from tests.ui_helpers import CHROMIUM, ROOT, browser, wait_for_js
from tests.vendored import check_vendored
from vsrt_service.core.options import JobOptions
from vsrt_service.web import openapi
from vsrt_service.web.app import create_app

STATIC = ROOT / "vsrt_service" / "web" / "static"
VENDOR = STATIC / "vendor" / "swagger-ui"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
TOKEN = "docs-test-token-0123456789"

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


def app_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, path) of every route the app serves, in OpenAPI's `{name}` style; without
    aiohttp's HEAD twins of GET routes and the UI's page and files."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or isinstance(resource, web.StaticResource) or route.method == "HEAD":
            continue
        path = re.sub(r"\{(\w+)(:[^}]*)?\}", r"{\1}", resource.canonical)
        if path == "/":
            continue
        found.add((route.method, path))
    return found


def described_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in METHODS}


def test_every_route_is_described_and_every_description_is_a_route(make_settings: SettingsFactory) -> None:
    routes = app_operations(create_app(make_settings()))
    described = described_operations(openapi.document())
    undescribed = sorted(routes - described)
    phantom = sorted(described - routes)
    assert not undescribed and not phantom, (
        f"routes of the app missing from the OpenAPI description: {undescribed}; "
        f"described operations the app does not serve: {phantom}"
    )
    assert ("GET", "/api/openapi.json") in routes and ("POST", "/api/jobs") in routes


def test_description_is_valid_openapi_31_with_unique_operation_ids() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # raises OpenAPIValidationError with the path at fault
    ops = [
        (f"{m.upper()} {p}", op) for p, item in doc["paths"].items() for m, op in item.items() if m in METHODS
    ]
    unnamed = [name for name, op in ops if "operationId" not in op]
    assert not unnamed, f"operations without an operationId (the docs page links by it): {unnamed}"
    ids = [op["operationId"] for _, op in ops]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
    # Every operation says how it fails: the API's error shape, or a default.
    silent = [name for name, op in ops if not any(c[0] in "45" or c == "default" for c in op["responses"])]
    assert not silent, f"operations that describe no error: {silent}"
    # The token applies everywhere but the open routes.
    assert doc["security"] == [{"bearer": []}]
    open_ops = {name.split()[1] for name, op in ops if op.get("security") == []}
    assert open_ops == {"/api/health", "/api/openapi.json", "/api/docs"}


def test_fragments_merge_and_a_duplicate_path_or_schema_is_an_error() -> None:
    a = {
        "paths": {"/a": {"get": {"responses": {"200": {"description": "ok"}}}}},
        "components": {"schemas": {"A": {"type": "object"}}},
    }
    b = {
        "paths": {"/b": {"get": {"responses": {"200": {"description": "ok"}}}}},
        "components": {"schemas": {"OpenAIB": {"type": "string"}}},
    }
    doc = openapi.merge({"api.yaml": a, "openai.yaml": b}, "1.2.3")
    assert set(doc["paths"]) == {"/a", "/b"} and set(doc["components"]["schemas"]) == {"A", "OpenAIB"}
    assert doc["info"]["version"] == "1.2.3" and "bearer" in doc["components"]["securitySchemes"]
    validate(doc)

    clash = {"paths": {"/a": {"post": {"responses": {"200": {"description": "ok"}}}}}}
    with pytest.raises(openapi.FragmentError, match=r"asr.yaml: path /a is already described by api.yaml"):
        openapi.merge({"api.yaml": a, "asr.yaml": clash}, "1")
    schema_clash = {"components": {"schemas": {"A": {"type": "string"}}}}
    with pytest.raises(openapi.FragmentError, match=r"components.schemas.A is already defined by api.yaml"):
        openapi.merge({"api.yaml": a, "asr.yaml": schema_clash}, "1")
    with pytest.raises(openapi.FragmentError, match="holds only paths and components"):
        openapi.merge({"asr.yaml": {"info": {"title": "x"}, "paths": {}}}, "1")


async def test_description_and_docs_page_are_served_without_the_token(make_client: ClientFactory) -> None:
    """Public like the UI's page: the same contract for every install, no data in it."""
    client = await make_client(server={"auth_token": TOKEN})
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200 and resp.content_type == "application/json"
    served = await resp.json()
    await asyncio.to_thread(validate, served)  # a second of CPU: off the loop
    assert served == json.loads(json.dumps(await asyncio.to_thread(openapi.document)))
    page = await client.get("/api/docs")
    assert page.status == 200 and page.content_type == "text/html"
    assert "swagger-ui-bundle.js" in await page.text()
    denied = await client.get("/api/jobs")  # the rest still needs it
    assert denied.status == 401 and (await denied.json())["error"]["code"] == "unauthorized"


def response_schema(doc: dict[str, Any], method: str, template: str, status: int, mime: str) -> Any:
    """The described schema of one response (its status, else `default`), or a failure naming
    what the description lacks."""
    responses = doc["paths"][template][method.lower()]["responses"]
    described = responses.get(str(status)) or responses.get("default")
    assert described, (
        f"{method} {template} answered {status}, which it does not describe: {sorted(responses)}"
    )
    if "$ref" in described:
        described = doc["components"]["responses"][described["$ref"].rsplit("/", 1)[1]]
    content = described.get("content", {})
    assert mime in content, f"{method} {template} {status} answered {mime}, described: {sorted(content)}"
    # Refs point into the document: resolve them against it.
    return {**content[mime]["schema"], "components": doc["components"]}


def schema_errors(body: Any, schema: Any) -> list[tuple[str, list[Any]]]:
    return [(e.message, list(e.path)) for e in OAS31Validator(schema).iter_errors(body)]


async def test_real_answers_match_the_described_responses(make_client: ClientFactory, speech: Speech) -> None:
    """The routes that need no transcription answer what the description says, errors included
    (the shapes are checked with the OpenAPI 3.1 schema dialect)."""
    doc = await asyncio.to_thread(openapi.document)
    client = await make_client(server={"auth_token": TOKEN})
    auth = {"Authorization": f"Bearer {TOKEN}"}
    job = (await upload(client, speech.path, start=False, headers=auth))["job_id"]
    calls: list[tuple[str, str, str, dict[str, Any]]] = [
        ("GET", "/api/health", "/api/health", {}),
        ("GET", "/api/health", "/api/health", {"headers": auth}),
        ("GET", "/api/meta", "/api/meta", {"headers": auth}),
        ("GET", "/api/jobs", "/api/jobs", {}),  # 401
        ("GET", "/api/jobs", "/api/jobs", {"headers": auth}),
        ("GET", "/api/jobs", "/api/jobs?limit=many", {"headers": auth}),  # 400
        ("POST", "/api/auth/ticket", "/api/auth/ticket", {"headers": auth}),
        ("GET", "/api/jobs/{job_id}", f"/api/jobs/{job}", {"headers": auth}),
        ("GET", "/api/status/{job_id}", f"/api/status/{job}", {"headers": auth}),
        ("GET", "/api/status/{job_id}", "/api/status/nope", {"headers": auth}),  # 404
        ("GET", "/api/checkpoint-settings/{job_id}", f"/api/checkpoint-settings/{job}", {"headers": auth}),
        ("GET", "/api/transcription-text/{job_id}", f"/api/transcription-text/{job}", {"headers": auth}),
        ("GET", "/api/jobs/{job_id}/media/info", f"/api/jobs/{job}/media/info", {"headers": auth}),
        ("POST", "/api/jobs/{job_id}/media/grant", f"/api/jobs/{job}/media/grant", {"headers": auth}),
        (
            "POST",
            "/api/validate-resume-settings",
            "/api/validate-resume-settings",
            {"headers": auth, "json": {"job_id": job, "settings": {"task": "translate"}}},
        ),
        ("POST", "/api/jobs", "/api/jobs", {"headers": auth, "json": {"path": "x.mp4", "bogus": 1}}),  # 400
        ("GET", "/api/models/{type}", "/api/models/whisper", {"headers": auth}),
        ("GET", "/api/models/{type}", "/api/models/nope", {"headers": auth}),  # 404
        ("GET", "/api/models/progress", "/api/models/progress", {"headers": auth}),
        ("GET", "/api/models/preload/status", "/api/models/preload/status", {"headers": auth}),
        ("GET", "/api/models/cache/status", "/api/models/cache/status", {"headers": auth}),
        ("DELETE", "/api/jobs/{job_id}", f"/api/jobs/{job}", {"headers": auth}),
    ]
    for method, template, url, kw in calls:
        resp = await client.request(method, url, **kw)
        body = await resp.json()
        schema = response_schema(doc, method, template, resp.status, resp.content_type)
        wrong = await asyncio.to_thread(schema_errors, body, schema)
        assert not wrong, f"{method} {url} -> {resp.status} differs from its description: {wrong}"


def test_vendored_swagger_ui_matches_its_pins_and_checksums() -> None:
    check_vendored(VENDOR, "swagger-ui-dist", 5)
    # Nothing the page loads points elsewhere: no font or stylesheet import, no source map.
    css = (VENDOR / "swagger-ui.css").read_text()
    assert "@import" not in css and not re.search(r"url\(\s*['\"]?(https?:)?//", css)
    assert "sourceMappingURL" not in (VENDOR / "swagger-ui-bundle.js").read_text()[-500:]


@needs_chromium
@pytest.mark.timeout(120)
@pytest.mark.block_limit(5.0)  # the loop only drives Playwright and serves files (test_ui.py)
async def test_docs_page_renders_offline_under_the_csp(
    aiohttp_client: Any, make_settings: SettingsFactory
) -> None:
    """Mounted as a sub-app under a prefix, the hardest case for the page's relative URLs (its
    files, the description, the description's relative server); at the root they are the same."""
    parent = web.Application()
    parent.add_subapp("/subtitles/", create_app(make_settings(server={"auth_token": TOKEN})))
    client = await aiohttp_client(parent)
    origin = str(client.make_url("/")).rstrip("/")
    base = f"{origin}/subtitles"
    operations = described_operations(await asyncio.to_thread(openapi.document))
    async with browser() as ctx:  # fails the test on any CSP violation
        page = await ctx.new_page()
        requests: list[str] = []
        errors: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        await page.goto(f"{base}/api/docs")  # no token: the page and description are open
        await wait_for_js(page, f"document.querySelectorAll('.opblock').length >= {len(operations)}")
        shown = await page.evaluate(
            """[...document.querySelectorAll('.opblock')].map(b => [
                b.querySelector('.opblock-summary-method').textContent,
                b.querySelector('.opblock-summary-path').dataset.path])"""
        )
        assert {(m, p) for m, p in shown} == operations
        assert await page.title() == "vsrt — API"

        # A call from the page goes to this server, under the prefix (the relative server).
        health = page.locator("#operations-meta-health")
        await health.locator(".opblock-summary").click()
        await health.get_by_role("button", name="Try it out").click()
        await health.get_by_role("button", name="Execute").click()
        await wait_for_js(page, "!!document.querySelector('#operations-meta-health .live-responses-table')")
        status = await health.locator(".live-responses-table tbody .response-col_status").first.text_content()
        assert status and status.strip() == "200", status
        assert f"{base}/api/health" in requests

        assert not errors, errors
        elsewhere = [u for u in requests if not u.startswith((base + "/", "data:", "blob:"))]
        assert not elsewhere, (
            f"the docs page made requests off the server (or outside its prefix): {elsewhere}"
        )


def test_job_settings_schema_names_every_setting() -> None:
    """The described settings are exactly the job options the service accepts."""
    described = set(openapi.document()["components"]["schemas"]["JobSettings"]["properties"])
    assert described == {f.name for f in dataclasses.fields(JobOptions)}
