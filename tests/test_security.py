"""Web exposure over real sockets: cross-site requests, DNS rebinding, security headers, the
client address behind proxies, stream limits, what health tells strangers, and no server path
in any answer."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory, SettingsFactory
from tests.http_helpers import is_complete, open_stream, upload
from tests.media import Speech
from tests.sse_client import SseReader
from vsrt_service.web.keys import STREAMS

ROOT = Path(__file__).resolve().parent.parent
EVIL = "https://evil.example"
FRIEND = "https://app.example"


def own_origin(client: TestClient[Any, Any]) -> str:
    return f"http://{client.server.host}:{client.server.port}"


async def media_form(speech: Speech) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(
        "file",
        await asyncio.to_thread(speech.path.read_bytes),
        filename="talk.mp4",
        content_type="application/octet-stream",
    )
    return form


async def error_of(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


# --- cross-site requests -----------------------------------------------------------------------


async def test_cross_site_upload_is_refused_same_site_and_scripts_are_not(
    make_client: ClientFactory, make_settings: SettingsFactory, speech: Speech
) -> None:
    client = await make_client(server={"cors_origins": [FRIEND]})
    for headers in (
        {"Origin": EVIL},
        {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},
    ):
        resp = await client.post("/api/jobs?start=false", data=await media_form(speech), headers=headers)
        assert resp.status == 403, headers
        error = await error_of(resp)
        assert error["code"] == "cross_origin" and "server.cors_origins" in error["message"], error
    # Nothing was stored or created by the refused uploads.
    uploads = make_settings().uploads_dir
    assert not uploads.exists() or not any(uploads.iterdir())
    assert (await (await client.get("/api/jobs")).json())["total"] == 0
    # The UI's own page, an allowed CORS origin, and scripts (no Origin at all) may upload.
    same = await upload(
        client,
        speech.path,
        start=False,
        headers={"Origin": own_origin(client), "Sec-Fetch-Site": "same-origin"},
    )
    friend = await upload(
        client, speech.path, start=False, headers={"Origin": FRIEND, "Sec-Fetch-Site": "cross-site"}
    )
    script = await upload(client, speech.path, start=False)
    assert len({same["job_id"], friend["job_id"], script["job_id"]}) == 3
    # Other state-changing requests are refused from another site too; reads are not.
    job = same["job_id"]
    for method, path in [
        ("POST", f"/api/cancel/{job}"),
        ("DELETE", f"/api/jobs/{job}"),
        ("POST", "/api/models/cache/clear"),
        ("POST", "/api/models/whisper/large-v3/download"),
    ]:
        resp = await client.request(method, path, headers={"Origin": EVIL})
        assert resp.status == 403, path
    assert (await client.get(f"/api/status/{job}", headers={"Origin": EVIL})).status == 200
    assert (await (await client.get(f"/api/status/{job}")).json())["status"] == "paused"


async def test_json_bodies_need_the_json_content_type(make_client: ClientFactory, speech: Speech) -> None:
    """A page can POST text/plain or a form without a preflight; such a body is never JSON here."""
    client = await make_client()
    job = (await upload(client, speech.path, start=False))["job_id"]
    body = json.dumps({"job_id": job, "settings": {"model": "tiny.en"}})
    cues = json.dumps({"cues": [{"start": 0.5, "end": 2.0, "text": "planted"}]})
    for method, path, data, kind in [
        ("POST", "/api/start", body, "text/plain"),
        ("POST", "/api/start", body, None),
        ("POST", "/api/validate-resume-settings", body, "text/plain;charset=UTF-8"),
        ("POST", "/api/jobs", json.dumps({"path": "x.mp4"}), "text/plain"),
        ("PUT", f"/api/jobs/{job}/subtitles", cues, "text/plain"),
        ("POST", "/api/start", f"job_id={job}", "application/x-www-form-urlencoded"),
    ]:
        headers = {"Content-Type": kind} if kind else {}
        resp = await client.request(
            method, path, data=data.encode(), headers=headers, skip_auto_headers=["Content-Type"]
        )
        assert resp.status == 415, (path, kind)
        error = await error_of(resp)
        assert error["code"] == "unsupported_media_type" and "application/json" in error["message"]
    status = await (await client.get(f"/api/status/{job}")).json()
    assert status["status"] == "paused"  # nothing started
    text = await (await client.get(f"/api/transcription-text/{job}")).json()
    assert text["edited_cues"] is None  # nothing saved
    ok = await client.post("/api/validate-resume-settings", json={"job_id": job})
    assert ok.status == 200


# --- DNS rebinding -----------------------------------------------------------------------------


async def test_rebinding_host_is_refused_everywhere(make_client: ClientFactory) -> None:
    client = await make_client(server={"allowed_hosts": ["vsrt.example", ".lan.example"]})
    port = client.server.port
    for host in ("attacker.example", f"attacker.example:{port}", "vsrt.example.attacker.example"):
        for path in ("/api/jobs", "/", "/static/app.js", "/api/health", "/api/nope"):
            resp = await client.get(path, headers={"Host": host})
            assert resp.status == 421, (host, path)
            error = await error_of(resp)
            assert error["code"] == "host_not_allowed" and "server.allowed_hosts" in error["message"]
    for host in (
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"[::1]:{port}",
        "vsrt.example",
        f"VSRT.example.:{port}",
        "box.lan.example",
        "lan.example",
    ):
        resp = await client.get("/api/jobs", headers={"Host": host})
        assert resp.status == 200, host


def test_host_rules() -> None:
    from vsrt_service.web.security import host_allowed

    names = frozenset({"vsrt.example", ".lan.example"})
    assert host_allowed("10.1.2.3:8000", names) and host_allowed("[fe80::1]", names)
    assert host_allowed("localhost", names) and host_allowed("Vsrt.Example:443", names)
    assert host_allowed("a.b.lan.example", names)
    assert not host_allowed("rebind.attacker.example", names)
    assert not host_allowed("127.0.0.1.attacker.example", names)
    assert not host_allowed("xlan.example", names)
    assert host_allowed("anything.example", frozenset({"*"}))


# --- security headers --------------------------------------------------------------------------


def check_security_headers(resp: aiohttp.ClientResponse, what: str) -> None:
    headers = resp.headers
    assert headers.get("X-Content-Type-Options") == "nosniff", what
    assert headers.get("X-Frame-Options") == "DENY", what
    assert headers.get("Referrer-Policy") == "no-referrer", what
    csp = {
        d.split()[0]: d.split()[1:]
        for d in headers.get("Content-Security-Policy", "").split(";")
        if d.strip()
    }
    assert csp.get("default-src") == ["'self'"], (what, csp)
    assert csp.get("frame-ancestors") == ["'none'"], (what, csp)
    assert "'unsafe-inline'" not in str(csp) and "'unsafe-eval'" not in str(csp), (what, csp)


async def test_security_headers_on_every_response(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client()
    job = (await upload(client, speech.path, start=False))["job_id"]
    checks: list[tuple[str, aiohttp.ClientResponse]] = [
        ("page", await client.get("/")),
        ("static file", await client.get("/static/app.js")),
        ("api", await client.get("/api/jobs")),
        ("api 404", await client.get("/api/jobs/nope")),
        ("unrouted 404", await client.get("/nope")),
        ("400", await client.post("/api/start", json=[])),
        ("405", await client.put("/api/health", json={})),
        ("refused host", await client.get("/", headers={"Host": "evil.example"})),
        ("refused origin", await client.post(f"/api/pause/{job}", headers={"Origin": EVIL})),
    ]
    assert [resp.status for _, resp in checks] == [200, 200, 200, 404, 404, 400, 405, 421, 403]
    for what, resp in checks:
        check_security_headers(resp, what)
    stream = await open_stream(client, job)
    check_security_headers(stream.resp, "event stream")
    assert (await stream.next()).event == "connected"
    stream.resp.close()


# --- the client address behind proxies ---------------------------------------------------------


def test_client_address_rules() -> None:
    from vsrt_service.web.security import client_address, parse_networks

    trusted = parse_networks(["10.0.0.0/8", "127.0.0.1", "::1"])
    assert client_address("127.0.0.1", ["203.0.113.5"], trusted) == "203.0.113.5"
    # The right-most address no trusted proxy vouches for; what the client wrote is further left.
    assert client_address("127.0.0.1", ["6.6.6.6, 203.0.113.5, 10.1.2.3"], trusted) == "203.0.113.5"
    assert client_address("127.0.0.1", ["6.6.6.6", "203.0.113.5"], trusted) == "203.0.113.5"
    assert client_address("::1", ["2001:DB8::7"], trusted) == "2001:db8::7"
    assert client_address("127.0.0.1", ["10.0.0.2, 10.0.0.3"], trusted) == "10.0.0.2"
    assert client_address("127.0.0.1", [], trusted) == "127.0.0.1"
    assert client_address("127.0.0.1", [" , "], trusted) == "127.0.0.1"
    # A peer that is not a trusted proxy is the client, whatever it claims.
    assert client_address("198.51.100.1", ["203.0.113.5"], trusted) == "198.51.100.1"
    assert client_address("127.0.0.1", ["203.0.113.5"], ()) == "127.0.0.1"


async def test_forwarded_for_counts_clients_behind_a_trusted_proxy_only(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client(
        server={"trusted_proxies": ["127.0.0.1"]}, sse={"max_connections_per_client": 2}
    )
    job = (await upload(client, speech.path, start=False))["job_id"]
    a = "203.0.113.5"
    b = "203.0.113.6"
    held = [await open_stream(client, job, **{"X-Forwarded-For": ip}) for ip in (a, a, b, b)]
    for ip in (a, b, f"{b}, {a}"):  # the last one: a client claiming b, forwarded for a
        resp = await client.get(f"/api/stream/{job}", headers={"X-Forwarded-For": ip})
        assert resp.status == 429, ip
        assert "address" in (await error_of(resp))["message"]
    # 127.0.0.2 is not a trusted proxy: its X-Forwarded-For is ignored, it is one client.
    url = client.make_url(f"/api/stream/{job}")
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as other:
        mine = [await other.get(url, headers={"X-Forwarded-For": f"198.51.100.{i}"}) for i in range(3)]
        assert [r.status for r in mine] == [200, 200, 429]
        for r in mine:
            r.close()
    for stream in held:
        stream.resp.close()


# --- stream limits -----------------------------------------------------------------------------


async def test_models_streams_have_their_own_limit(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client(
        sse={"max_connections_per_job": 2, "max_connections_models": 5, "max_connections_per_client": 20}
    )
    opened = [await client.get("/api/models/events/progress") for _ in range(4)]
    opened.append(await client.get("/api/models/events/whisper/tiny.en"))
    assert [r.status for r in opened] == [200] * 5  # more than the per-job limit
    for resp in opened:
        assert (await SseReader(resp).next()).event == "initial_state"
    over = await client.get("/api/models/events/progress")
    assert over.status == 429 and (await error_of(over))["code"] == "too_many_streams"
    # Job streams keep their own limit, unaffected by the open models streams.
    job = (await upload(client, speech.path, start=False))["job_id"]
    streams = [await open_stream(client, job) for _ in range(2)]
    assert (await client.get(f"/api/stream/{job}")).status == 429
    for resp in opened:
        resp.close()
    for stream in streams:
        stream.resp.close()


async def test_closing_streams_keeps_the_callers_own_cancellation(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client()
    job = (await upload(client, speech.path, start=False))["job_id"]
    stream = await open_stream(client, job)  # starts the streams' disconnect watcher
    assert (await stream.next()).event == "connected"
    closing = asyncio.create_task(client.app[STREAMS].close())
    await asyncio.sleep(0)  # one loop turn: `closing` has cancelled the watcher and awaits it
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert closing.cancelled()
    await client.app[STREAMS].close()  # the watcher's own cancellation is not an error
    stream.resp.close()


# --- health ------------------------------------------------------------------------------------

PUBLIC_RUNNER_KEYS = {"name", "role", "device", "state", "warm", "busy"}


async def test_health_tells_strangers_only_status_version_and_runner_states(
    make_client: ClientFactory,
) -> None:
    token = "health-token-0123456789"
    client = await make_client(server={"auth_token": token})
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}):
        resp = await client.get("/api/health", headers=headers)
        assert resp.status == 200
        public = await resp.json()
        assert set(public) == {"status", "version", "runners"}, public
        assert public["status"] == "ok" and public["runners"]
        assert all(set(r) == PUBLIC_RUNNER_KEYS for r in public["runners"]), public["runners"]
    full = await (await client.get("/api/health", headers={"Authorization": f"Bearer {token}"})).json()
    assert {"open_streams", "running_jobs", "limits"} <= set(full)
    assert all({"pid", "restarts", "last_error", "versions"} <= set(r) for r in full["runners"])


# --- no server path in any answer --------------------------------------------------------------


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


async def resample_audio(source: Path, target: Path) -> None:
    """A readable WAV of the same speech that is not the 16 kHz mono the runner expects."""
    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
    proc = await asyncio.create_subprocess_exec(
        "ffmpeg",
        "-v",
        "error",
        "-y",
        "-i",
        str(source),
        "-ar",
        "44100",
        "-ac",
        "2",
        str(target),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()


def test_messages_lose_server_paths() -> None:
    from vsrt_service.core.redact import public_text

    data = Path("/srv/vsrt/data")
    assert (
        public_text("split failed: /srv/vsrt/data/jobs/ab12/audio.wav: expected 16 kHz mono audio", data)
        == "split failed: jobs/ab12/audio.wav: expected 16 kHz mono audio"
    )
    assert public_text('File "/usr/lib/python3.11/wave.py", line 5', data) == 'File "wave.py", line 5'
    assert public_text("cannot load /opt/venv/lib/pkg/model (bad)", data) == "cannot load model (bad)"
    kept = "see https://huggingface.co/org/repo/tree/main, 16/9 and/or N/A"
    assert public_text(kept, data) == kept


@pytest.mark.slow
async def test_no_server_path_in_any_answer(
    make_client: ClientFactory, make_settings: SettingsFactory, speech: Speech, tmp_path: Path
) -> None:
    token = "walker-token-0123456789"
    client = await make_client(server={"auth_token": token})
    auth = {"Authorization": f"Bearer {token}"}
    settings = make_settings()
    done = await upload(client, speech.path, headers=auth)
    stream = await open_stream(client, done["job_id"], **auth)
    await stream.until(is_complete, wait=180)
    stream.resp.close()
    # A job whose extracted audio on disk is not what the runner reads: the runner's error
    # names the file by its full path.
    failed = await upload(client, speech.path, start=False, headers=auth)
    await resample_audio(speech.path, settings.jobs_dir / failed["job_id"] / "audio.wav")
    stream = await open_stream(client, failed["job_id"], **auth)
    resp = await client.post("/api/start", json={"job_id": failed["job_id"]}, headers=auth)
    assert resp.status == 200
    await stream.until(lambda ev: ev.event == "error", wait=120)
    stream.resp.close()
    status = await (await client.get(f"/api/status/{failed['job_id']}", headers=auth)).json()
    assert status["status"] == "failed" and "audio.wav" in status["error"]["message"], status

    forbidden = {
        str(settings.data_dir),
        str(tmp_path),
        tempfile.gettempdir(),
        sys.prefix,
        str(ROOT),
        "/home",
        "/root",
        "/tmp",
    }
    values = {
        "job_id": [done["job_id"], failed["job_id"]],
        "type/model_id": [("whisper", "tiny.en"), ("align", "en")],
    }
    seen: list[str] = []
    for route in client.app.router.routes():
        if route.method != "GET" or isinstance(route.resource, web.StaticResource):
            continue
        assert route.resource is not None
        pattern = route.resource.canonical
        for url in fill(pattern, values):
            resp = await client.get(url, headers=auth)
            assert resp.status < 500, (url, resp.status)  # a 404 or 409 body is checked too
            if resp.content_type == "text/event-stream":
                body: Any = (await SseReader(resp).next(wait=10)).data
                resp.close()
            elif resp.content_type == "application/json":
                body = await resp.json()
            else:  # media and peaks are binary: their bytes are searched too
                body = (await resp.read()).decode("utf-8", "replace")
            for text in strings(body):
                leaked = [f for f in forbidden if f in text]
                assert not leaked, f"{url} answers {text!r}, which names {leaked}"
            seen.append(url)
    assert len(seen) >= 20, seen


def fill(pattern: str, values: dict[str, Any]) -> list[str]:
    """Concrete URLs for a route pattern; a placeholder without values fails the test, so a
    new route with a new parameter gets values here instead of being skipped."""
    names = re.findall(r"\{(\w+)\}", pattern)
    if not names:
        return [pattern]
    if names == ["job_id"]:
        return [pattern.replace("{job_id}", job) for job in values["job_id"]]
    if names == ["type", "model_id"]:
        return [
            pattern.replace("{type}", kind).replace("{model_id}", model)
            for kind, model in values["type/model_id"]
        ]
    if names == ["type"]:
        return sorted({pattern.replace("{type}", kind) for kind, _ in values["type/model_id"]})
    if names == ["id"]:  # the OpenAI API's models: an id, a repo name, one that is not there
        return [
            pattern.replace("{id}", name) for name in ("tiny.en", "Systran/faster-whisper-tiny.en", "nope")
        ]
    raise AssertionError(f"no test values for the parameters of {pattern}")
