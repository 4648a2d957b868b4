"""Typed application state keys (aiohttp's web.AppKey): the service and the web layer's own parts."""

from __future__ import annotations

from aiohttp import web

from vsrt_service.core.config import Settings
from vsrt_service.service import Service
from vsrt_service.web.auth import MediaGrants, Tickets
from vsrt_service.web.sse import Streams

SETTINGS = web.AppKey("vsrt_settings", Settings)
SERVICE = web.AppKey("vsrt_service", Service)
STREAMS = web.AppKey("vsrt_streams", Streams)
TICKETS = web.AppKey("vsrt_tickets", Tickets)
GRANTS = web.AppKey("vsrt_media_grants", MediaGrants)
