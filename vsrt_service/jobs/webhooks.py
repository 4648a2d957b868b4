"""Webhooks: what a job's final state sends, and the sender that empties the store's outbox.

The notice (`notice_policy`) is built once, inside the store's final-state write, so the row
and the state commit together. `Sender` then POSTs due rows, signed with HMAC-SHA256, retried
with exponential backoff and jitter until `webhooks.retry_for_seconds` after the job ended.
Delivery is at least once: an attempt cut short (shutdown, crash) is made again later, with
the same `X-Vsrt-Delivery` id so a receiver can drop a repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from vsrt_service.core import netguard
from vsrt_service.core.config import Settings
from vsrt_service.jobs.store import Delivery, DeliveryStatus, Job, JobStatus, JobStore, Notice, NoticePolicy

log = logging.getLogger(__name__)

SECRET_FILE = "webhook-secret"
EVENTS = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}
#: Rows one pass of the sender takes at once.
BATCH = 8
#: The sender looks at the outbox at least this often (rows written by another process).
POLL_SECONDS = 30.0


def notice_policy(settings: Settings) -> NoticePolicy:
    """The store's notice policy: a job's own `webhook_url`, else `webhooks.default_url`."""
    base = (settings.server.public_url or "").rstrip("/")
    default = settings.webhooks.default_url

    def notice(job: Job) -> Notice | None:
        url = job.options.get("webhook_url") or default
        event = EVENTS.get(JobStatus(job.status))
        if not url or event is None:
            return None
        return Notice(event, url, body(job, event, base))

    return notice


def body(job: Job, event: str, base: str = "") -> bytes:
    """The JSON summary of a finished job; subtitle links only when it completed."""
    links = {"job": f"{base}/api/status/{job.id}"}
    if job.status == JobStatus.COMPLETED:
        for fmt in ("srt", "vtt", "json"):
            links[fmt] = f"{base}/api/jobs/{job.id}/subtitles?format={fmt}"
    data: dict[str, Any] = {
        "event": event,
        "job_id": job.id,
        "status": job.status,
        "source_name": job.source_name,
        "duration": job.duration,
        "language": job.language,
        "created_at": job.created_at,
        "finished_at": job.updated_at,
        "links": links,
    }
    if job.status == JobStatus.FAILED:
        data["error"] = {"code": job.error_code, "message": job.error}
    return json.dumps(data, separators=(",", ":")).encode()


def signature(secret: bytes, payload: bytes) -> str:
    """The `X-Vsrt-Signature` value: `sha256=` and the hex HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret, payload, hashlib.sha256).hexdigest()


def backoff(attempt: int, initial: float, maximum: float) -> float:
    """Seconds before attempt `attempt + 1`: doubling from `initial`, capped, with jitter
    (between half and all of it) so many failed deliveries do not return at one instant."""
    delay = min(maximum, initial * 2 ** max(0, attempt - 1))
    return delay * random.uniform(0.5, 1.0)


async def load_secret(settings: Settings) -> bytes:
    """The configured secret, else the data directory's (generated once and kept, 0600):
    signing with an empty key would prove nothing."""
    if settings.webhooks.secret:
        return settings.webhooks.secret.encode()
    path = settings.data_dir / SECRET_FILE

    def read_or_make() -> bytes:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return text.encode()
        # Readable by this user only, from its first byte (the data directory's lock makes
        # this process the only one here).
        text = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        log.info("generated a webhook secret into %s (set webhooks.secret to choose one)", SECRET_FILE)
        return text.encode()

    return await asyncio.to_thread(read_or_make)


class _PinnedResolver(AbstractResolver):
    """Answers with the addresses the guard checked, so the connection goes to one of them."""

    def __init__(self, host: str, infos: list[ResolveResult]) -> None:
        self._host, self._infos = host, infos

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host != self._host:
            raise OSError(f"{host} was not checked")
        return self._infos

    async def close(self) -> None:
        return None


async def checked_target(url: str, allow: netguard.Allowance) -> tuple[netguard.Target, list[ResolveResult]]:
    """Parse and resolve the URL, keeping only addresses the guard allows: TargetRefused when
    it may not be called at all, OSError when the name does not resolve (try again later)."""
    target = netguard.parse_target(url)
    literal = netguard.literal_address(target.host)
    if literal is not None:
        why = netguard.address_refusal(literal, allow)
        if why is not None:
            raise netguard.TargetRefused(f"{why} (allow it in webhooks.allow_private)")
        return target, []
    if netguard.is_local_name(target.host) and not allow.allows_host(target.host):
        addresses = ["127.0.0.1"]  # whatever DNS would say: this machine
        netguard.checked_addresses(target, addresses, allow)
    infos = await asyncio.get_running_loop().getaddrinfo(
        target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    by_address = {str(info[4][0]): info for info in infos}
    good = netguard.checked_addresses(target, list(by_address), allow)
    return target, [
        ResolveResult(
            hostname=target.host,
            host=address,
            port=target.port,
            family=by_address[address][0],
            proto=by_address[address][2],
            flags=socket.AI_NUMERICHOST,
        )
        for address in good
    ]


class Sender:
    """Sends the outbox's due deliveries; `wake()` when a row was added in this process."""

    def __init__(self, settings: Settings, store: JobStore, secret: bytes) -> None:
        self.settings, self.store, self._secret = settings, store, secret
        self._allow = netguard.parse_allowance(settings.webhooks.allow_private)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._agent = f"vsrt/{_version()}"
        #: A claimed row is left alone by other senders for this long (an attempt's limit).
        self._lease = settings.webhooks.timeout_seconds + 30.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="webhooks")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        """Stop sending; a delivery in flight is tried again after the next start."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                batch = await self.store.claim_deliveries(BATCH, self._lease)
                if batch:
                    await asyncio.gather(*(self._send(d) for d in batch))
                    continue
                due = await self.store.next_delivery_at()
            except Exception:  # the store failed (locked, disk): say so, and try again shortly
                log.exception("webhooks: could not read the outbox; trying again")
                due = time.time() + 5.0
            wait = POLL_SECONDS if due is None else min(POLL_SECONDS, max(0.0, due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)

    async def _send(self, d: Delivery) -> None:
        """One attempt; its outcome recorded (a refusal is final, a failure retried)."""
        w = self.settings.webhooks
        try:
            status, error = await self._post(d)
        except netguard.TargetRefused as exc:
            log.warning("webhook %s of job %s refused: %s", d.id, d.job_id, exc)
            await self._record(d, DeliveryStatus.FAILED, f"refused: {exc}")
            return
        if status is not None and 200 <= status < 300:
            await self._record(d, DeliveryStatus.DELIVERED, None)
            return
        deadline = d.created_at + w.retry_for_seconds
        retry_at = time.time() + backoff(d.attempts, w.backoff_initial_seconds, w.backoff_max_seconds)
        if time.time() >= deadline:
            log.warning("webhook %s of job %s given up (%d attempts): %s", d.id, d.job_id, d.attempts, error)
            await self._record(d, DeliveryStatus.FAILED, error)
        else:
            await self._record(d, DeliveryStatus.PENDING, error, min(retry_at, deadline))

    async def _record(
        self, d: Delivery, status: DeliveryStatus, error: str | None, next_at: float | None = None
    ) -> None:
        try:
            await self.store.record_attempt(d.id, d.attempts, status, error=error, next_at=next_at)
        except Exception:  # the lease runs out and the row is tried again: at least once
            log.exception("webhook %s: could not record the attempt", d.id)

    async def _post(self, d: Delivery) -> tuple[int | None, str]:
        """POST the row's body to the checked address: (HTTP status, error text)."""
        w = self.settings.webhooks
        try:
            target, infos = await checked_target(d.url, self._allow)
        except OSError as exc:
            return None, f"cannot resolve the host: {exc.strerror or exc}"
        resolver = _PinnedResolver(target.host, infos)
        connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._agent,
            "X-Vsrt-Event": d.event,
            "X-Vsrt-Delivery": d.id,
            "X-Vsrt-Signature": signature(self._secret, d.body),
        }
        timeout = aiohttp.ClientTimeout(total=w.timeout_seconds)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as http,
                http.post(d.url, data=d.body, headers=headers, allow_redirects=False) as resp,
            ):
                if 300 <= resp.status < 400:
                    return resp.status, f"HTTP {resp.status}: redirects are not followed"
                return resp.status, f"HTTP {resp.status}"
        except TimeoutError:
            return None, f"no answer within {w.timeout_seconds:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"


def _version() -> str:
    try:
        return metadata.version("vsrt")
    except metadata.PackageNotFoundError:
        return "dev"


@contextlib.asynccontextmanager
async def open_sender(settings: Settings, store: JobStore, run: bool = True) -> AsyncIterator[Sender]:
    """The outbox policy on the store, and (with `run`) the sender, stopped on exit."""
    secret = await load_secret(settings)
    sender = Sender(settings, store, secret)
    store.use_outbox(notice_policy(settings), sender.wake)
    if run:
        sender.start()
    try:
        yield sender
    finally:
        await asyncio.shield(sender.close())
        store.use_outbox(None)
