"""How the /api routes report errors: each kind of VsrtError to its status, in one place.

Another API served by the same app (an OpenAI-compatible one, say) keeps its own table and
body shape beside this one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from vsrt_service.core.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    JobFailedError,
    NotFound,
    TooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    VsrtError,
)

log = logging.getLogger("vsrt.web")

STATUS: dict[type[VsrtError], int] = {
    InvalidInput: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    TooManyRequests: 429,
    Unavailable: 503,
    JobFailedError: 500,  # the job's own error message is public (paths redacted), so it is shown
}


def status_of(exc: VsrtError) -> int:
    """The status of the nearest mapped kind; 500 for internal errors."""
    for kind in type(exc).__mro__:
        if kind in STATUS:
            return STATUS[kind]
    return 500


def error_response(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """`{"error": {"code", "message", "field"?}}` with `status`."""
    body: dict[str, str] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return web.json_response({"error": body}, status=status)


#: How an API words an error: (status, code, message, field or None) -> the response.
ErrorShape = Callable[[int, str, str, str | None], web.Response]


def vsrt_error_response(exc: VsrtError, shape: ErrorShape = error_response) -> web.Response:
    status = status_of(exc)
    if status == 500 and not isinstance(exc, JobFailedError):
        log.error("internal error", exc_info=exc)
        return shape(500, "internal", "internal error; the server log has the details", None)
    return shape(status, exc.code, str(exc), exc.field)
