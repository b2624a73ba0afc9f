"""Errors a user can cause, typed, each mapping to one JSON shape: {"error": {"code", "message"}}.

The library, the CLI and the service raise these; the API turns them into responses with ``status``,
the CLI prints ``message`` on one line and exits with code 2. Anything else escaping is a bug (a 500 /
exit 1). The service adds its own kinds (auth, not found, rate limit...) in app/errors.py.

Each kind names its default ``code`` and HTTP ``status`` in its class line; one raise may override the
code (e.g. ``InputError(..., code="too_few_images")``) to be more precise.
"""

from __future__ import annotations


class TrustfidError(Exception):
    """Base class: something the caller did or sent was wrong, and the message says what to do."""

    code = "bad_request"
    status = 400

    def __init_subclass__(cls, *, code: str | None = None, status: int | None = None, **kw):
        super().__init_subclass__(**kw)
        cls.code = code or cls.code
        cls.status = status or cls.status

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.status = status or self.status

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InputError(TrustfidError, code="bad_input", status=422):
    """An input set cannot be used as given (unreadable, too few images, unknown format...). Readers
    often give a more precise code (too_few_images, bad_archive, bad_array, unsafe_archive)."""


class TooLargeError(TrustfidError, code="too_large", status=413):
    """An input exceeds a configured limit (bytes, pixels, images, archive members); the message names
    the TRUSTFID_ setting that sets it."""


class UnsupportedTypeError(TrustfidError, code="unsupported_type", status=415):
    """A file or body of a type that is not read at all."""


class IncompatibleStatsError(TrustfidError, code="incompatible_stats", status=409):
    """Two sets of statistics were made with different weights, preprocessing or MC settings. The
    message names each difference: recompute one side, or leave the option out to use the saved one."""


class CancelledError(TrustfidError, code="cancelled", status=409):
    """The job was cancelled while the engine was running."""


class UnreachableError(TrustfidError, code="unreachable", status=503):
    """The service could not be reached (nothing listening, DNS, network) or did not answer in time.
    The CLI exits with code 3 for it."""


class PacsError(TrustfidError, code="pacs_unreachable", status=503):
    """A PACS (DICOMweb) did not give what was asked: it could not be reached or did not answer in time
    after retries (``pacs_unreachable``, 503), or refused trustfid's credentials (``pacs_auth_failed``,
    502). A fault between trustfid and the PACS, not in what the caller sent; an unknown study or series
    and one without images are InputErrors (``pacs_not_found``, ``pacs_no_images``). Messages name the
    host and the UID, never a credential."""
