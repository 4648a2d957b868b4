"""Webhooks: the SSRF guard's many cases as pure functions, then real deliveries to a real
local receiver (allowed through `webhooks.allow_private`), from a service and from a
`vsrt serve` process killed with SIGKILL while a delivery is pending."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ClientFactory, ServiceFactory, until
from tests.http_helpers import post_upload
from tests.media import Speech, make_speech
from tests.procs import Server, free_port
from vsrt_service.core import netguard
from vsrt_service.core.config import ConfigError, load_settings
from vsrt_service.core.errors import InvalidInput
from vsrt_service.core.netguard import Allowance, TargetRefused, parse_allowance
from vsrt_service.jobs.store import Delivery
from vsrt_service.jobs.webhooks import SECRET_FILE, backoff, checked_target, load_secret, signature
from vsrt_service.service import Service
from vsrt_service.web.keys import SERVICE

SECRET = "test-secret-0123456789"

# --- the guard, pure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.5.6.7", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped: judged as the IPv4
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("100.64.0.1", "not a public"),  # carrier-grade NAT
        ("192.0.2.1", "private"),  # documentation
        ("2001:db8::1", "private"),
    ],
)
def test_non_public_addresses_are_refused(address: str, kind: str) -> None:
    why = netguard.address_refusal(address)
    assert why is not None and kind in why


@pytest.mark.parametrize("address", ["93.184.215.14", "1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert netguard.address_refusal(address) is None


def test_allow_private_lets_networks_and_host_names_through() -> None:
    allow = parse_allowance(["127.0.0.1", "10.0.0.0/8", "Hooks.Internal."])
    assert netguard.address_refusal("127.0.0.1", allow) is None
    assert netguard.address_refusal("::ffff:127.0.0.1", allow) is None
    assert netguard.address_refusal("10.200.0.1", allow) is None
    assert netguard.address_refusal("127.0.0.2", allow) is not None
    assert netguard.address_refusal("192.168.0.1", allow) is not None
    assert allow.allows_host("hooks.internal") and not allow.allows_host("other.internal")
    target = netguard.parse_target("http://hooks.internal/x")
    assert netguard.checked_addresses(target, ["192.168.0.9"], allow) == ["192.168.0.9"]
    for bad in ["", "10.0.0.0/33", "a/b", "bad host"]:
        with pytest.raises(ValueError):
            parse_allowance([bad])


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.org/x", "only http"),
        ("file:///etc/passwd", "only http"),
        ("gopher://example.org", "only http"),
        ("http://", "no host"),
        ("http://user:pw@example.org/", "user name"),
        ("http://user@example.org/", "user name"),
        ("http://example.org:99999/", "not valid"),
        ("http://exa mple.org/", "spaces"),
        ("https://example.org/" + "a" * 2100, "longer"),
        ("http://127.0.0.1:8000/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://[::ffff:169.254.169.254]/", "link-local"),
        ("http://localhost:9000/", "this machine"),
        ("http://api.localhost/", "this machine"),
        ("http://2130706433/", "loopback"),  # 127.0.0.1 as one number
        ("http://0x7f.1/", "loopback"),
        ("http://127.1/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://0.0.0.0:80/", "unspecified"),
    ],
)
def test_urls_refused_before_any_lookup(url: str, reason: str) -> None:
    why = netguard.literal_refusal(url)
    assert why is not None and reason in why


def test_names_wait_for_delivery_time_resolution() -> None:
    assert netguard.literal_refusal("https://hooks.example.org/vsrt?x=1") is None
    assert netguard.literal_refusal("http://93.184.215.14:8080/") is None
    assert netguard.literal_refusal("http://localhost:9/", parse_allowance(["127.0.0.1"])) is None
    assert netguard.parse_target("HTTPS://Example.ORG./a") == netguard.Target("https", "example.org", 443)
    # Resolution to a private address only is refused; a mix keeps only the public ones.
    target = netguard.parse_target("http://rebind.example/")
    with pytest.raises(TargetRefused, match=r"10\.0\.0\.5 is a private address"):
        netguard.checked_addresses(target, ["10.0.0.5"])
    assert netguard.checked_addresses(target, ["10.0.0.5", "1.1.1.1"]) == ["1.1.1.1"]
    with pytest.raises(TargetRefused):
        netguard.checked_addresses(target, [])


async def test_delivery_time_resolution_refuses_this_machine() -> None:
    with pytest.raises(TargetRefused, match="loopback"):
        await checked_target("http://localhost:1/x", Allowance())
    with pytest.raises(TargetRefused, match="loopback"):
        await checked_target("http://[::ffff:7f00:1]:1/x", Allowance())
    # Allowed: the connection goes to the addresses that were checked.
    _, infos = await checked_target("http://localhost:1/x", parse_allowance(["127.0.0.1", "::1"]))
    assert {i["host"] for i in infos} <= {"127.0.0.1", "::1"} and infos


def test_signature_backoff_and_settings() -> None:
    body = b'{"event":"job.completed"}'
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert signature(SECRET.encode(), body) == f"sha256={expected}"
    delays = [backoff(n, 1.0, 8.0) for n in range(1, 7)]
    assert all(0.5 * min(8, 2 ** (n - 1)) <= d <= min(8, 2 ** (n - 1)) for n, d in enumerate(delays, 1))
    settings = load_settings(
        env={},
        webhooks={"allow_private": ["127.0.0.1"], "default_url": "https://h.example/x", "secret": SECRET},
    )
    assert settings.webhooks.allow_private == ("127.0.0.1",)
    for bad, words in [
        ({"default_url": "ftp://x"}, "webhooks.default_url"),
        ({"allow_private": ["nonsense/"]}, "webhooks.allow_private"),
        ({"secret": "short"}, "webhooks.secret"),
        ({"retry_for_seconds": 0}, "webhooks.retry_for_seconds"),
        ({"backoff_initial_seconds": 10, "backoff_max_seconds": 1}, "webhooks.backoff_initial"),
    ]:
        with pytest.raises(ConfigError, match=words):
            load_settings(env={}, webhooks=bad)
    with pytest.raises(ConfigError, match=r"server\.public_url"):
        load_settings(env={}, server={"public_url": "vsrt.example.org"})


async def test_an_unset_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = load_settings(env={}, data_dir=tmp_path)
    first = await load_secret(settings)
    assert len(first) == 64 and await load_secret(settings) == first
    assert (tmp_path / SECRET_FILE).stat().st_mode & 0o777 == 0o600
    # An empty file (a crash while it was made) is no key: a new one is made.
    (tmp_path / SECRET_FILE).write_text("")
    second = await load_secret(settings)
    assert len(second) == 64 and second != first
    assert await load_secret(load_settings(env={}, data_dir=tmp_path, webhooks={"secret": SECRET})) == (
        SECRET.encode()
    )


# --- a real receiver -----------------------------------------------------------------------


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    def verified(self, secret: str = SECRET) -> dict[str, Any]:
        """The JSON body, once its signature checks out with the secret."""
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(self.headers["X-Vsrt-Signature"], expected)
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """An aiohttp server on 127.0.0.1 that records every POST; `up()`/`down()` at will, on
    one port, so a delivery can meet it closed and then open."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.got: list[Received] = []
        self.arrived = asyncio.Queue[Received]()
        self._runner: web.AppRunner | None = None
        #: How long it takes to answer (a slow receiver).
        self.delay = 0.0

    async def _hook(self, request: web.Request) -> web.Response:
        got = Received(dict(request.headers), await request.read())
        self.got.append(got)
        self.arrived.put_nowait(got)
        await asyncio.sleep(self.delay)
        return web.Response(status=204)

    async def _moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/hook")

    async def up(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        app.router.add_post("/moved", self._moved)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def down(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def next(self, within: float = 60.0) -> Received:
        return await asyncio.wait_for(self.arrived.get(), within)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        await r.down()


def allowed(**webhooks: Any) -> dict[str, Any]:
    """Settings overrides for a service that may call the local receiver, retrying quickly."""
    return {
        "webhooks": {
            "allow_private": ["127.0.0.1"],
            "secret": SECRET,
            "backoff_initial_seconds": 0.2,
            "backoff_max_seconds": 0.5,
            **webhooks,
        }
    }


async def settled_delivery(svc: Service, job_id: str) -> Delivery:
    """The job's one delivery once it is no longer pending."""

    async def done() -> bool:
        rows = await svc.store.deliveries(job_id)
        return bool(rows) and rows[0].status != "pending"

    await until(done, 30, 0.05)
    [row] = await svc.store.deliveries(job_id)
    return row


@pytest.mark.slow
async def test_one_signed_delivery_per_final_state(
    make_service: ServiceFactory, receiver: Receiver, speech: Speech, tmp_path: Path
) -> None:
    await receiver.up()
    svc = await make_service(**allowed())
    hook = {"webhook_url": receiver.url}
    # Completed, with the real runner.
    done = await svc.submit(speech.path, hook)
    got = await receiver.next(120)
    data = got.verified()
    job = await svc.get(done.id)
    assert job.status == "completed"
    assert data == {
        "event": "job.completed",
        "job_id": job.id,
        "status": "completed",
        "source_name": speech.path.name,
        "duration": job.duration,
        "language": "en",
        "created_at": job.created_at,
        "finished_at": job.updated_at,
        "links": {
            "job": f"/api/status/{job.id}",
            "srt": f"/api/jobs/{job.id}/subtitles?format=srt",
            "vtt": f"/api/jobs/{job.id}/subtitles?format=vtt",
            "json": f"/api/jobs/{job.id}/subtitles?format=json",
        },
    }
    row = await settled_delivery(svc, job.id)
    assert (row.status, row.attempts) == ("delivered", 1)
    assert got.headers["X-Vsrt-Delivery"] == row.id and got.headers["X-Vsrt-Event"] == "job.completed"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["User-Agent"].startswith("vsrt/")
    # Canceled from the queue.
    queued = await svc.submit(speech.path, hook, start=False)
    await svc.cancel(queued.id)
    # The new row wakes the sender at once (it otherwise looks every 30 s).
    assert (await receiver.next(10)).verified()["event"] == "job.canceled"
    # Failed for real: its input vanished before it ran.
    doomed = tmp_path / "doomed.mp4"
    await asyncio.to_thread(shutil.copyfile, speech.path, doomed)
    failing = await svc.submit(doomed, hook, start=False)
    await asyncio.to_thread(Path(failing.input_path).unlink)
    await svc.resume(failing.id)
    failed = (await receiver.next(60)).verified()
    assert (failed["event"], failed["status"], failed["job_id"]) == ("job.failed", "failed", failing.id)
    assert failed["error"]["code"] and failed["error"]["message"] and set(failed["links"]) == {"job"}
    for job_id in (queued.id, failing.id):
        assert (await settled_delivery(svc, job_id)).status == "delivered"
    # Exactly one each: every row is delivered, so nothing is left to send again.
    assert [json.loads(g.body)["event"] for g in receiver.got] == [
        "job.completed",
        "job.canceled",
        "job.failed",
    ]


async def test_a_receiver_down_for_a_while_gets_it_once_when_back(
    make_service: ServiceFactory, receiver: Receiver, speech: Speech
) -> None:
    svc = await make_service(runners={"enabled": False}, **allowed(default_url=receiver.url))
    job = await svc.submit(speech.path, start=False)  # no webhook_url of its own: the default
    await svc.cancel(job.id)

    async def failed_twice() -> bool:
        rows = await svc.store.deliveries(job.id)
        return rows[0].attempts >= 2 and rows[0].status == "pending"

    await until(failed_twice, 30, 0.05)
    [row] = await svc.store.deliveries(job.id)
    assert row.last_error and "Connect" in row.last_error and receiver.got == []
    await receiver.up()
    assert (await receiver.next()).verified()["job_id"] == job.id
    row = await settled_delivery(svc, job.id)
    assert row.status == "delivered" and len(receiver.got) == 1


async def test_redirects_are_not_followed_and_retries_end(
    make_service: ServiceFactory, receiver: Receiver, speech: Speech
) -> None:
    """A 302 is a failed attempt (never followed: it could point anywhere); after
    retry_for_seconds the delivery is given up with the last error kept."""
    await receiver.up()
    svc = await make_service(
        runners={"enabled": False},
        **allowed(default_url=receiver.url[: -len("hook")] + "moved", retry_for_seconds=1),
    )
    job = await svc.submit(speech.path, start=False)
    await svc.cancel(job.id)
    row = await settled_delivery(svc, job.id)
    assert row.status == "failed" and row.attempts >= 2
    assert row.last_error == "HTTP 302: redirects are not followed"
    assert receiver.got == []


async def test_private_targets_are_refused(
    make_client: ClientFactory,
    make_service: ServiceFactory,
    receiver: Receiver,
    speech: Speech,
    tmp_path: Path,
) -> None:
    # At submit: a literal private address or localhost is a 400 naming the field.
    client = await make_client(runners={"enabled": False})
    for url in (
        "http://127.0.0.1:9/x",
        "http://localhost/x",
        "ftp://example.org/",
        "http://u:p@example.org/",
    ):
        resp = await post_upload(client, speech.path, {"webhook_url": url})
        assert resp.status == 400
        error = (await resp.json())["error"]
        assert error["field"] == "webhook_url" and error["code"] == "bad_settings", error
        assert error["message"].startswith("webhook_url refused: "), error
    assert await client.app[SERVICE].store.count_jobs() == 0
    # A name is checked when delivering (resolved then); the job keeps the URL in its settings.
    resp = await post_upload(
        client, speech.path, {"webhook_url": "https://hooks.example.org/vsrt"}, start=False
    )
    assert resp.status == 201, await resp.text()
    job = await client.app[SERVICE].get((await resp.json())["job_id"])
    assert job.options["webhook_url"] == "https://hooks.example.org/vsrt"
    # At delivery (a configured default is not checked at submit): refused, given up at once.
    await receiver.up()
    svc = await make_service(
        runners={"enabled": False}, webhooks={"default_url": receiver.url}, data_dir=tmp_path / "other"
    )
    job = await svc.submit(speech.path, start=False)
    await svc.cancel(job.id)
    row = await settled_delivery(svc, job.id)
    assert (row.status, row.attempts) == ("failed", 1)
    assert row.last_error == "refused: 127.0.0.1 is a loopback address (allow it in webhooks.allow_private)"
    assert receiver.got == []
    with pytest.raises(InvalidInput, match="webhook_url"):
        await svc.submit(speech.path, {"webhook_url": "http://[::1]/"})


def delivery_rows(data_dir: Path) -> list[tuple[str, int, str | None]]:
    with sqlite3.connect(data_dir / "vsrt.sqlite3") as db:
        return [tuple(r) for r in db.execute("SELECT status, attempts, last_error FROM deliveries")]


@pytest.mark.slow
async def test_sigkill_with_a_delivery_pending_then_restart_delivers_once(
    tmp_path: Path, receiver: Receiver, speech: Speech
) -> None:
    env = {
        **os.environ,
        "VSRT_RUNNERS_ENABLED": "false",
        "VSRT_WEBHOOKS_ALLOW_PRIVATE": "127.0.0.1",
        "VSRT_WEBHOOKS_SECRET": SECRET,
        "VSRT_WEBHOOKS_BACKOFF_INITIAL_SECONDS": "0.2",
        "VSRT_WEBHOOKS_BACKOFF_MAX_SECONDS": "0.5",
    }
    server = Server(tmp_path / "data", free_port(), env)
    await server.start()
    try:
        async with aiohttp.ClientSession(server.url) as http:
            form = aiohttp.FormData()
            form.add_field("settings", json.dumps({"webhook_url": receiver.url}))
            form.add_field("file", speech.path.read_bytes(), filename="a.mp4")
            async with http.post("/api/jobs?start=false", data=form) as resp:
                assert resp.status == 201, await resp.text()
                job_id = (await resp.json())["job_id"]
            async with http.post(f"/api/cancel/{job_id}") as resp:
                assert resp.status == 200, await resp.text()

        async def tried() -> bool:
            rows = await asyncio.to_thread(delivery_rows, server.data_dir)
            return bool(rows) and rows[0][1] >= 1 and rows[0][2] is not None

        await until(tried, 30, 0.05)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)
        await server.proc.wait()
        [(status, _, _)] = await asyncio.to_thread(delivery_rows, server.data_dir)
        assert status == "pending" and receiver.got == []
        await receiver.up()
        await server.start()
        got = await receiver.next()
        assert got.verified()["job_id"] == job_id and got.verified()["event"] == "job.canceled"

        async def delivered() -> bool:
            rows = await asyncio.to_thread(delivery_rows, server.data_dir)
            return rows[0][0] == "delivered"

        await until(delivered, 30, 0.05)
        assert len(receiver.got) == 1
    finally:
        await server.stop()


@pytest.mark.slow
async def test_vsrt_transcribe_sends_its_webhook_before_it_exits(receiver: Receiver, tmp_path: Path) -> None:
    """The CLI's process is short-lived: its notice is sent, and known to be, before it exits
    (not left in the outbox for a next start), even to a receiver slow to answer."""
    receiver.delay = 2.0
    await receiver.up()
    clip = await asyncio.to_thread(
        make_speech, tmp_path / "clip.wav", ["One short sentence."], video=False, lead=0.3
    )
    config = tmp_path / "vsrt.toml"
    config.write_text(f'[webhooks]\nallow_private = ["127.0.0.1"]\nsecret = "{SECRET}"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vsrt_service.cli", "transcribe", str(clip.path), "-o", str(tmp_path / "out"),
        "--webhook-url", receiver.url, "--config", str(config), "--data-dir", str(tmp_path / "data"),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 180)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    assert len(receiver.got) == 1, stderr.decode()
    notice = receiver.got[0].verified()
    assert notice["event"] == "job.completed" and notice["source_name"] == "clip.wav"
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "vsrt.sqlite3")) as db:
        assert db.execute("SELECT status FROM deliveries").fetchall() == [("delivered",)]
