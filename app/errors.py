"""The service's errors: the library's TrustfidError kinds (trustfid/errors.py) plus what only an HTTP
service can answer — auth, not found, conflicts, rate limits, forbidden URIs, unavailable backends."""

from __future__ import annotations

from trustfid.errors import TrustfidError


class AuthError(TrustfidError, code="unauthorized", status=401):
    """No API key, or one the service does not know (answered with ``WWW-Authenticate: Bearer``)."""


class NotFoundError(TrustfidError, code="not_found", status=404):
    """No such job or reference for this API key (others' are invisible, so also 404)."""


class ConflictError(TrustfidError, code="conflict", status=409):
    """The thing exists but is not in a state that allows this; the code says which (not_ready,
    job_failed, job_cancelled, report_expired, reference_not_ready)."""


class ForbiddenURLError(TrustfidError, code="forbidden_uri", status=422):
    """A URI names a scheme, host, address or path the service may not read."""


class UnavailableError(TrustfidError, code="unavailable", status=503):
    """Redis or the queue cannot be reached; try again later."""


class RateLimitError(TrustfidError, code="rate_limited", status=429):
    """Too many submissions per minute for this API key."""

    def __init__(self, message: str, *, retry_after: int = 60):
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeoutError(TrustfidError, code="request_timeout", status=408):
    """The request body stalled or took longer than the service waits for one."""


class StorageError(TrustfidError, code="storage_unavailable", status=503):
    """The service cannot write its own staging or data folder, or reach its object store
    (TRUSTFID_STAGING_URL): a server fault, not the caller's."""
