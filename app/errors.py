"""Errors a user can cause, typed, each mapping to one JSON shape: {"error": {"code", "message"}}.

Engine, CLI and API raise these; the API turns them into responses with ``status``, the CLI prints
``message`` on one line and exits with code 2. Anything else escaping is a bug (a 500 / exit 1).
"""

from __future__ import annotations


class TrustfidError(Exception):
    """Base class: something the caller did or sent was wrong, and the message says what to do."""

    code = "bad_request"
    status = 400

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InputError(TrustfidError):
    """An input set cannot be used as given (unreadable, too few images, unknown format...)."""

    code = "bad_input"
    status = 422


class TooLargeError(TrustfidError):
    """An input exceeds a configured limit (bytes, pixels, images, archive members)."""

    code = "too_large"
    status = 413


class UnsupportedTypeError(TrustfidError):
    code = "unsupported_type"
    status = 415


class IncompatibleStatsError(TrustfidError):
    """Two sets of statistics were made with different weights, preprocessing or MC settings."""

    code = "incompatible_stats"
    status = 409


class CancelledError(TrustfidError):
    """The job was cancelled while the engine was running."""

    code = "cancelled"
    status = 409


# --- the service's errors ----------------------------------------------------------------------


class AuthError(TrustfidError):
    """No API key, or one the service does not know."""

    code = "unauthorized"
    status = 401


class NotFoundError(TrustfidError):
    """No such job or reference for this API key (others' are invisible, so also 404)."""

    code = "not_found"
    status = 404


class ConflictError(TrustfidError):
    """The thing exists but is not in a state that allows this (e.g. a report of a running job)."""

    code = "conflict"
    status = 409


class RateLimitError(TrustfidError):
    """Too many submissions per minute for this API key."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str, *, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class ForbiddenURLError(TrustfidError):
    """A URI names a scheme, host, address or path the service may not read."""

    code = "forbidden_uri"
    status = 422


class UnavailableError(TrustfidError):
    """Redis or the queue cannot be reached; try again later."""

    code = "unavailable"
    status = 503
