"""Typed application state keys (aiohttp's web.AppKey), one per resource the app owns."""

from __future__ import annotations

from aiohttp import web

from vsrt_service.core.broker import Broker
from vsrt_service.core.config import Settings
from vsrt_service.jobs.scheduler import Scheduler
from vsrt_service.jobs.store import JobStore
from vsrt_service.models.manager import ModelManager
from vsrt_service.runners.pool import RunnerPool
from vsrt_service.service import Service
from vsrt_service.web.auth import Tickets
from vsrt_service.web.sse import Streams

SETTINGS = web.AppKey("vsrt_settings", Settings)
STORE: web.AppKey[JobStore] = web.AppKey("vsrt_store")
BROKER = web.AppKey("vsrt_broker", Broker)
POOL = web.AppKey("vsrt_pool", RunnerPool)
MODELS = web.AppKey("vsrt_models", ModelManager)
SCHEDULER = web.AppKey("vsrt_scheduler", Scheduler)
SERVICE = web.AppKey("vsrt_service", Service)
STREAMS = web.AppKey("vsrt_streams", Streams)
TICKETS = web.AppKey("vsrt_tickets", Tickets)
