"""POST the final job record to the job's callback_url, signed:

    X-Trustfid-Timestamp: <unix seconds>
    X-Trustfid-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>

The secret is TRUSTFID_CALLBACK_SECRET, or else the sha256 hex digest of the API key that submitted
the job (``anonymous`` on a keyless local server). Receivers recompute the HMAC over the raw body and
compare in constant time; ``verify`` does that. Delivery is tried three times; a failed callback is
logged and never fails the job."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from app import ingest
from app.settings import Settings
from trustfid.errors import TrustfidError

log = logging.getLogger("trustfid.callback")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def deliver(settings: Settings, url: str, body: bytes, owner: str, attempts: int = 3) -> bool:
    import httpx

    secret = settings.callback_secret or owner
    for i in range(attempts):
        try:
            ingest.check_callback_url(url, settings)  # again: DNS may have changed since submission
            ts = str(int(time.time()))
            resp = httpx.post(url, content=body, timeout=settings.callback_timeout_s, follow_redirects=False,
                              headers={"Content-Type": "application/json", "X-Trustfid-Timestamp": ts,
                                       "X-Trustfid-Signature": sign(secret, ts, body)})
            if resp.status_code < 300:
                return True
            log.warning("callback %s answered %s", url, resp.status_code)
        except TrustfidError as e:
            log.warning("callback %s refused: %s", url, e.message)
            return False
        except httpx.HTTPError as e:
            log.warning("callback %s failed: %s", url, e)
        time.sleep(2**i)
    return False
