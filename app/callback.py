"""POST the final job record to the job's callback_url, signed:

    X-Trustfid-Timestamp: <unix seconds>
    X-Trustfid-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The secret is TRUSTFID_CALLBACK_SECRET, or else the sha256 hex digest of the API key that submitted
the job (``anonymous`` on a keyless local server). Receivers recompute the HMAC over the raw body and
compare in constant time; ``verify`` does that. Delivery is a Celery task of its own
(worker/tasks.py ``deliver_callback``) on the callback queue, retried with exponential backoff
(``TRUSTFID_CALLBACK_ATTEMPTS``, ``TRUSTFID_CALLBACK_BACKOFF_MAX_S``); a failed callback is logged and
never fails the job."""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

from app.ingest.uris import UriPolicy


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


class CallbackFailed(Exception):
    """The receiver did not take the callback (an error status, or no answer); worth retrying."""


@dataclass(frozen=True)
class Callbacks:
    """Delivers callbacks: ``secret`` (None: the submitting key's digest), the POST's timeout, and the
    URI policy that checks the URL again before each delivery."""

    uris: UriPolicy
    secret: str | None = None
    timeout_s: float = 10.0

    def deliver(self, url: str, body: bytes, owner: str) -> None:
        """One signed POST of ``body`` to ``url``. Raises CallbackFailed (or httpx.HTTPError) when it is
        worth trying again, TrustfidError when the URL is not allowed (any more: not worth it)."""
        import httpx

        self.uris.check_callback_url(url)  # again: DNS may have changed since submission
        secret = self.secret or owner
        ts = str(int(time.time()))
        resp = httpx.post(url, content=body, timeout=self.timeout_s, follow_redirects=False,
                          headers={"Content-Type": "application/json", "X-Trustfid-Timestamp": ts,
                                   "X-Trustfid-Signature": sign(secret, ts, body)})
        if resp.status_code >= 300:
            raise CallbackFailed(f"{url} answered {resp.status_code}")
