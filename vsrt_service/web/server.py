"""`vsrt serve`: run the app until SIGINT/SIGTERM, then shut down in order.

Shutdown: stop accepting, end event streams, interrupt running jobs (their checkpoints
are committed; they resume at the next start), stop the runners, close the database.
"""

from __future__ import annotations

import logging

from aiohttp import web

from vsrt_service.core.config import Settings
from vsrt_service.web.app import create_app

log = logging.getLogger("vsrt.server")


def serve(settings: Settings) -> int:
    app = create_app(settings)
    host, port = settings.server.host, settings.server.port
    logging.getLogger().setLevel(min(logging.getLogger().level, logging.INFO))
    log.info("data directory %s", settings.data_dir)
    web.run_app(
        app,
        host=host,
        port=port,
        shutdown_timeout=5.0,
        handle_signals=True,
        access_log=None,
        print=lambda _: log.info("listening on http://%s:%s", host, port),
    )
    return 0
