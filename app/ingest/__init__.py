"""Getting input sets in safely, by concern:

- screening.py: the shared input rules held against an uploaded or fetched file before queueing
  (archives, arrays, image headers);
- multipart.py: multipart uploads streamed into the staging folder under byte limits;
- uris.py: which URIs (and callback URLs) the service may read, and fetching them.

``InputPolicy`` is the service's policy on inputs, built once (app/services.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from trustfid.inputs.rules import Limits

from .uris import UriPolicy


@dataclass(frozen=True)
class InputPolicy:
    """What the service accepts: the input limits, the upload's size, files and time, and the URI rules."""

    limits: Limits
    max_upload_bytes: int
    max_files_per_set: int
    upload_idle_timeout_s: float
    upload_timeout_s: float
    uris: UriPolicy
