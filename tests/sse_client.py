"""A small SSE reader for tests: parses the wire format itself (no client library)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: Any
    raw: bytes


class SseReader:
    """Reads events from an open streaming response, keeping the exact bytes of each."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        #: The reconnection time the server asked for (a `retry:` field), in ms.
        self.retry: int | None = None
        #: The bytes of each block that dispatched no event (no data field), such as `retry:`.
        self.quiet_blocks: list[bytes] = []

    async def next(self, wait: float = 60) -> SseEvent:
        return await asyncio.wait_for(self._next(), wait)

    async def _next(self) -> SseEvent:
        raw = b""
        fields: dict[str, list[str]] = {}
        while True:
            line = await self.resp.content.readline()
            if not line:
                raise EOFError("stream ended")
            raw += line
            text = line.decode().rstrip("\r\n")
            if not text:
                if "retry" in fields and fields["retry"][-1].isdigit():
                    self.retry = int(fields["retry"][-1])
                if fields and "data" not in fields:  # as a browser: no data, no event
                    self.quiet_blocks.append(raw)
                elif fields:
                    data = "\n".join(fields["data"])
                    return SseEvent(
                        id=fields["id"][-1] if "id" in fields else None,
                        event=(fields.get("event") or ["message"])[-1],
                        data=json.loads(data) if data else None,
                        raw=raw,
                    )
                raw = b""
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)

    async def until(self, predicate: Any, wait: float = 120) -> list[SseEvent]:
        """Events up to and including the first one `predicate` accepts."""
        out: list[SseEvent] = []
        while True:
            ev = await self.next(wait)
            out.append(ev)
            if predicate(ev):
                return out
