"""Helpers for the browser tests: a real `vsrt serve` subprocess, headless Debian chromium
through Playwright (no browser download), and nginx in front from config/nginx.conf.example.

Everything that blocks (process waits, HTTP polling) runs in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP: Any = {"width": 1280, "height": 800}
PHONE: Any = {"width": 390, "height": 844}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


async def get_json(url: str) -> Any:
    status, body = await asyncio.to_thread(_get, url, 10.0)
    assert status == 200, f"GET {url}: {status} {body[:200]!r}"
    return json.loads(body)


class Server:
    """`vsrt serve` on a port and data directory; can be killed and started again on both."""

    def __init__(self, data_dir: Path, port: int | None = None, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir.parent / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def start(self, seconds: float = 60.0) -> None:
        cmd = [
            str(Path(sys.executable).parent / "vsrt"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        # Its own session, so kill() can take its runners down with it, as a crash would.
        self.proc = await asyncio.to_thread(self._spawn, cmd)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vsrt serve exited {self.proc.returncode}:\n{self._tail()}")
            status, _ = await asyncio.to_thread(_get, self.url + "api/health", 1.0)
            if status in (200, 401):  # 401: up, with a token configured
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"vsrt serve did not answer /api/health:\n{self._tail()}")

    def _spawn(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            return subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )

    def _tail(self) -> str:
        return self.log.read_text()[-3000:]

    async def kill(self) -> None:
        """SIGKILL the whole process group: the server and its runners, as a crash would."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await asyncio.to_thread(self.proc.wait, 10)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 20)
        except subprocess.TimeoutExpired:
            await self.kill()
        with contextlib.suppress(ProcessLookupError):  # any runner left in its group
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def running_server(data_dir: Path, **kw: Any) -> AsyncIterator[Server]:
    server = Server(data_dir, **kw)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()


def nginx_config(upstream_port: int, listen_port: int, prefix: Path) -> str:
    """config/nginx.conf.example made runnable unprivileged: our ports, paths under prefix."""
    site = (ROOT / "config" / "nginx.conf.example").read_text()
    site = site.replace("127.0.0.1:8000", f"127.0.0.1:{upstream_port}")
    site = re.sub(r"listen\s+80;", f"listen 127.0.0.1:{listen_port};", site)
    site = re.sub(r"^\s*(access_log|error_log)\s+[^;]*;", "", site, flags=re.M)
    return f"""
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    default_type application/octet-stream;
{site}
}}
"""


def _spawn_nginx(prefix: Path, conf: Path) -> subprocess.Popen[bytes]:
    with (prefix / "stderr.log").open("wb") as err:
        return subprocess.Popen(
            [NGINX, "-p", str(prefix), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=err
        )


@contextlib.asynccontextmanager
async def running_nginx(upstream_port: int) -> AsyncIterator[str]:
    """nginx in the foreground with config/nginx.conf.example; yields its base URL."""
    prefix = Path(tempfile.mkdtemp(prefix="vsrt-nginx-"))
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_config(upstream_port, port, prefix))
    proc = await asyncio.to_thread(_spawn_nginx, prefix, conf)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(100):
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {(prefix / 'stderr.log').read_text()}")
            status, _ = await asyncio.to_thread(_get, url + "api/health", 1.0)
            if status == 200:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError("nginx did not come up")
        yield url
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
        shutil.rmtree(prefix, ignore_errors=True)


@contextlib.asynccontextmanager
async def browser() -> AsyncIterator[Any]:
    """A fresh headless chromium (Debian's package) as a Playwright BrowserContext.

    Fails the test if any page broke the server's Content-Security-Policy (chromium reports
    each refused script, style or connection on the console)."""
    from playwright.async_api import async_playwright

    profile = tempfile.mkdtemp(prefix="vsrt-chromium-")
    violations: list[str] = []

    def on_console(message: Any) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    try:
        async with async_playwright() as pw:
            ctx = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=DESKTOP,
                accept_downloads=True,
            )
            ctx.on("console", on_console)
            try:
                yield ctx
                assert not violations, (
                    f"the UI broke its Content-Security-Policy {len(violations)}x; first: {violations[0]}"
                )
            finally:
                await ctx.close()
    finally:
        await asyncio.to_thread(shutil.rmtree, profile, True)


async def wait_for_js(page: Any, expression: str, ms: float = 30_000) -> None:
    """Playwright's page.wait_for_function, but without `eval` in the page, which the UI's
    Content-Security-Policy refuses: the expression is polled through the DevTools protocol
    (page.evaluate), which the page's policy does not govern."""
    try:
        async with asyncio.timeout(ms / 1000):
            while not await page.evaluate(expression):  # noqa: ASYNC110 - the browser's state
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise TimeoutError(f"waited {ms / 1000:.0f} s for {expression}") from None


async def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=False)
    return path
