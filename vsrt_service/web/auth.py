"""Optional bearer-token auth, and one-use tickets for EventSource (which cannot send headers).

A ticket is random, lives `ticket_seconds`, and is consumed by the first stream that uses
it, so the long-lived token never appears in a URL (where access logs would keep it).
"""

from __future__ import annotations

import hmac
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
