"""API keys: ``Authorization: Bearer <key>``; the service knows only their sha256 digests
(app/settings.py hashes plain keys at load). A caller is identified by its key's digest, which owns
the jobs and references it creates. Without configured keys every caller is ``anonymous`` — allowed
only from the loopback interface, so a keyless server is never reachable from elsewhere."""

from __future__ import annotations

import hmac
import ipaddress

from app.errors import AuthError
from app.settings import Settings, hash_key

ANONYMOUS = "anonymous"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def authenticate(settings: Settings, authorization: str | None, client_host: str | None) -> str:
    """The owner id of the caller, or AuthError (401)."""
    hashes = settings.api_key_hashes
    if not hashes:
        if not is_loopback(client_host):
            raise AuthError("this server has no API keys configured (TRUSTFID_API_KEYS) and accepts only "
                            "clients on the loopback interface")
        return ANONYMOUS
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("send your API key as 'Authorization: Bearer <key>'")
    digest = hash_key(key.strip())
    if not any(hmac.compare_digest(digest, h) for h in hashes):
        raise AuthError("unknown API key")
    return digest
