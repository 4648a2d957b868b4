"""Typed application state keys (aiohttp's web.AppKey), one per resource the app owns."""

from __future__ import annotations

from aiohttp import web

from .auth import Tickets
from .broker import Broker
from .config import Settings
from .manager import ModelManager
from .pool import RunnerPool
from .scheduler import Scheduler
from .service import Service
from .sse import Streams
from .store import Store

SETTINGS = web.AppKey("vsrt_settings", Settings)
STORE = web.AppKey("vsrt_store", Store)
BROKER = web.AppKey("vsrt_broker", Broker)
POOL = web.AppKey("vsrt_pool", RunnerPool)
MODELS = web.AppKey("vsrt_models", ModelManager)
SCHEDULER = web.AppKey("vsrt_scheduler", Scheduler)
SERVICE = web.AppKey("vsrt_service", Service)
STREAMS = web.AppKey("vsrt_streams", Streams)
TICKETS = web.AppKey("vsrt_tickets", Tickets)
