"""Optional bearer-token auth, one-use tickets for EventSource (which cannot send headers),
and reusable per-job grants for media elements (which cannot either, and request again on seeks).

A ticket is random, lives `ticket_seconds`, and is consumed by the first stream that uses
it, so the long-lived token never appears in a URL (where access logs would keep it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
import time


class Tickets:
    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self._live: dict[str, float] = {}

    def issue(self) -> str:
        self._expire()
        ticket = secrets.token_urlsafe(24)
        self._live[ticket] = time.monotonic() + self.lifetime
        return ticket

    def redeem(self, ticket: str) -> bool:
        """True once for a live ticket; expired, unknown and reused tickets are refused."""
        expires = self._live.pop(ticket, None)
        return expires is not None and expires > time.monotonic()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._live.items() if t <= now]:
            del self._live[key]


def token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


#: How long a media grant lets a player fetch its job's media (a long film, paused and resumed).
GRANT_SECONDS = 6 * 3600
#: The routes a grant opens, for GET and HEAD only: the job's media, media info and peaks.
_GRANTED = re.compile(r"/api/jobs/([^/]+)/(?:media|media/info|peaks)")


class MediaGrants:
    """Reusable, expiring grants for one job's media routes.

    `<video src>` sends no Authorization header and seeks with a new Range request each
    time, so a one-use ticket does not fit. A grant is `<expiry>.<HMAC-SHA256(secret, job id,
    expiry)>`: stateless, bound to one job, and worthless after a restart (a new secret).
    """

    def __init__(self, lifetime: float = GRANT_SECONDS, secret: bytes | None = None) -> None:
        self.lifetime = lifetime
        self._secret = secret or secrets.token_bytes(32)

    def _sign(self, job_id: str, expires: int) -> str:
        mac = hmac.new(self._secret, f"{job_id}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def issue(self, job_id: str) -> str:
        expires = math.ceil(time.time() + self.lifetime)
        return f"{expires}.{self._sign(job_id, expires)}"

    def allows(self, grant: str, method: str, path: str) -> bool:
        """Whether `grant` opens this request: a GET or HEAD of its own job's media routes."""
        match = _GRANTED.fullmatch(path)
        if method not in ("GET", "HEAD") or match is None:
            return False
        expires, _, mac = grant.partition(".")
        if not expires.isdigit() or int(expires) <= time.time():
            return False
        return hmac.compare_digest(mac.encode(), self._sign(match.group(1), int(expires)).encode())
