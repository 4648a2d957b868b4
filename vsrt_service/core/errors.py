"""One error hierarchy: what went wrong, as a stable `code`, a message for a person and the
request `field` at fault. The kind (the class) says what sort of failure it is; each API maps
kinds to its own status and body in one place (web/errors.py for ours), so no domain error
carries an HTTP status."""

from __future__ import annotations


class VsrtError(Exception):
    """Base of every error vsrt reports; unmapped kinds are internal errors."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code or type(self).code
        self.field = field


class InvalidInput(VsrtError):
    """The request, a setting or a file is not acceptable as given."""

    code = "bad_request"


class Unauthorized(VsrtError):
    code = "unauthorized"


class Forbidden(VsrtError):
    code = "forbidden"


class NotFound(VsrtError):
    code = "not_found"


class Conflict(VsrtError):
    """The request is valid but the state of what it names does not allow it now."""

    code = "conflict"


class TooLarge(VsrtError):
    code = "too_large"


class TooManyRequests(VsrtError):
    code = "too_many_requests"


class Unavailable(VsrtError):
    """Something vsrt needs is missing or switched off (ffmpeg, the runners)."""

    code = "unavailable"


class JobFailedError(VsrtError):
    """A job a synchronous request waited for failed; `code` is the job's error code."""

    code = "failed"
