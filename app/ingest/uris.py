"""Inputs given by URI, and callback URLs: which the service may read (file:// under allowed roots,
http(s) from allowed hosts on public addresses only, s3:// objects of the operator's store outside its
staging bucket, dicomweb+https:// studies and series of the PACS the operator configured), checked at
submission and again before fetching; and the fetching itself, streamed to the worker's staging folder
with the upload byte limit, then screened as an upload is (a PACS's instances are read by the engine
like a folder of DICOM files: trustfid/inputs/dicomweb.py)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.errors import ForbiddenURLError
from app.staging import S3
from trustfid.errors import InputError, TooLargeError, TrustfidError, UnsupportedTypeError
from trustfid.inputs import rules
from trustfid.inputs.dicomweb import DicomWebUri, Pacs, is_dicomweb
from trustfid.inputs.rules import Limits

from .multipart import basename, safe_name
from .screening import check_file

# S3's bucket naming rules: no host names, addresses or anything else a URL could smuggle in.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class UriPolicy:
    """Where inputs and callbacks may point, and how a fetched input is held (``limits``, ``max_bytes``)."""

    limits: Limits
    max_bytes: int
    file_roots: tuple[str, ...] = ()
    url_hosts: tuple[str, ...] = ()
    allow_private_urls: bool = False
    s3_enabled: bool = True
    s3: S3 = S3()
    staging_bucket: str | None = None
    fetch_timeout_s: float = 60.0
    callback_hosts: tuple[str, ...] = ()
    pacs: Pacs = Pacs()  # the configured PACS, held to max_bytes and the image limit (app/services.py)

    def check_uri(self, uri: str, what: str) -> None:
        """Refuse a URI the service may not read (called at submission and again before fetching)."""
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "file":
            self.file_path(uri, what)
        elif scheme in ("http", "https"):
            host = (parts.hostname or "").lower()
            if not host:
                raise ForbiddenURLError(f"{what}: {uri!r} has no host")
            allowed = {h.lower() for h in self.url_hosts}
            if host not in allowed:
                raise ForbiddenURLError(f"{what}: host {host!r} is not in TRUSTFID_URL_HOSTS")
            if parts.username or parts.password:
                raise ForbiddenURLError(f"{what}: credentials in URLs are not accepted")
            self._check_public(host, parts.port, what)
            if rules.kind_of(basename(unquote(parts.path))) is None:
                raise UnsupportedTypeError(f"{what}: the URL path must end in an image, archive or .npy/.npz suffix")
        elif scheme == "s3":
            self._check_s3(uri, parts, what)
        elif is_dicomweb(uri):
            self._check_dicomweb(uri, what)
        else:
            raise ForbiddenURLError(f"{what}: scheme {scheme or '(none)'!r} is not accepted; use file://, "
                                    "http(s)://, s3:// or dicomweb+https://")

    def check_input(self, uri: str, what: str) -> int | None:
        """The check at submission: ``check_uri``, and for a PACS study or series its listing (QIDO-RS), so
        that a wrong UID, a series without images, refused credentials or a PACS that cannot be reached
        are refused now, not after the job was queued. Returns the number of image instances (None for
        other URIs)."""
        self.check_uri(uri, what)
        return len(self.pacs.images(uri, what)) if is_dicomweb(uri) else None

    def check_callback_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ForbiddenURLError("callback_url must be an http(s):// URL")
        host = parts.hostname.lower()
        if self.callback_hosts and host not in {h.lower() for h in self.callback_hosts}:
            raise ForbiddenURLError(f"callback_url: host {host!r} is not in TRUSTFID_CALLBACK_HOSTS")
        self._check_public(host, parts.port, "callback_url")

    def file_path(self, uri: str, what: str) -> Path:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise ForbiddenURLError(f"{what}: file:// URIs name no host")
        roots = [Path(r).resolve() for r in self.file_roots]
        if not roots:
            raise ForbiddenURLError(f"{what}: file:// inputs are disabled (TRUSTFID_FILE_ROOTS is empty)")
        path = Path(unquote(parts.path)).resolve()  # resolves symlinks too: no escaping a root by a link
        if not any(path == r or path.is_relative_to(r) for r in roots):
            raise ForbiddenURLError(f"{what}: {path} is not under an allowed root (TRUSTFID_FILE_ROOTS)")
        if not path.exists():
            raise InputError(f"{what}: {path} does not exist", code="not_found_input")
        return path

    def fetch(self, uri: str, dest: Path, what: str) -> Path:
        """Make a URI's data readable by the engine; returns the path to give it. file:// is read in
        place; http(s) and s3 are streamed into ``dest`` with the upload byte limit."""
        self.check_uri(uri, what)
        if is_dicomweb(uri):  # a folder of DICOM files, which the engine reads as any folder
            return self.pacs.fetch(uri, dest, what)
        parts = urlsplit(uri)
        scheme = parts.scheme.lower()
        if scheme == "file":
            path = self.file_path(uri, what)
            if path.is_file():
                check_file(path, self.limits, what)
            return path
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / safe_name(unquote(parts.path) or "input", set())
        if scheme in ("http", "https"):
            self._fetch_http(uri, target, what)
        else:
            self._fetch_s3(uri, target, what)
        check_file(target, self.limits, what)
        return target

    # --- checks -------------------------------------------------------------------------------------
    def _check_public(self, host: str, port: int | None, what: str) -> list[str]:
        """Resolve ``host`` and require every address to be public unless private ones are allowed."""
        try:
            infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ForbiddenURLError(f"{what}: cannot resolve host {host!r} ({e})") from None
        addrs = sorted({i[4][0] for i in infos})
        if not self.allow_private_urls:
            for a in addrs:
                ip = ipaddress.ip_address(a.split("%")[0])
                if getattr(ip, "ipv4_mapped", None):
                    ip = ip.ipv4_mapped
                if not ip.is_global or ip.is_multicast:
                    raise ForbiddenURLError(f"{what}: host {host!r} resolves to the non-public address {a}")
        return addrs

    def _check_s3(self, uri: str, parts, what: str) -> None:
        """s3:// inputs are read from the operator's store (TRUSTFID_S3_ENDPOINT_URL and its credentials):
        a URI names a bucket and a key there, never an endpoint, so the address checks of http(s) do not
        apply; the service's own staging bucket is never readable this way."""
        if not self.s3_enabled:
            raise ForbiddenURLError(f"{what}: s3:// inputs are disabled (TRUSTFID_S3_ENABLED)")
        try:
            import s3fs  # noqa: F401
        except ImportError:
            raise ForbiddenURLError(f"{what}: s3:// needs the s3 extra (pip install 'trustfid[s3]')") from None
        bucket, key = parts.netloc, parts.path.lstrip("/")
        if not _BUCKET.match(bucket) or parts.username or parts.port or parts.query or parts.fragment:
            raise ForbiddenURLError(f"{what}: {uri!r} is not s3://<bucket>/<key> with a valid bucket name")
        if not key or "::" in uri:
            raise ForbiddenURLError(f"{what}: {uri!r} names no object (s3://<bucket>/<key>)")
        if key.endswith("/") or rules.kind_of(basename(unquote(key))) is None:
            raise UnsupportedTypeError(f"{what}: an s3:// input is one object whose key ends in an image, archive "
                                       "or .npy/.npz suffix (a prefix of many objects: pack them as one archive)")
        if bucket == self.staging_bucket:
            raise ForbiddenURLError(f"{what}: bucket {bucket!r} holds the service's own staging and is not "
                                    "readable as an input")

    def _check_dicomweb(self, uri: str, what: str) -> None:
        """A PACS study or series may be read only from a server the operator configured (its scheme, host,
        port and path), which may be on a private address: a PACS is on the hospital's network. The
        address rules of http(s) inputs do not apply to it, and to nothing else because of it."""
        parsed = DicomWebUri.parse(uri, what)
        if self.pacs.server_for(parsed) is None:
            raise ForbiddenURLError(f"{what}: cannot read {parsed.target}: {self.pacs.why_not_configured(parsed)}",
                                    code="unknown_pacs")

    # --- fetching -----------------------------------------------------------------------------------
    def _fetch_http(self, uri: str, target: Path, what: str) -> None:
        import httpx

        try:
            # No redirects: a redirect could lead anywhere, past the host and address checks.
            with httpx.stream("GET", uri, timeout=self.fetch_timeout_s, follow_redirects=False) as resp:
                if resp.status_code != 200:
                    raise InputError(f"{what}: GET {uri} answered {resp.status_code}", code="fetch_failed")
                self._copy_limited(resp.iter_bytes(), target, what)
        except httpx.HTTPError as e:
            raise InputError(f"{what}: cannot fetch {uri} ({e})", code="fetch_failed") from None

    def _fetch_s3(self, uri: str, target: Path, what: str) -> None:
        parts = urlsplit(uri)
        try:
            # The store's filesystem object, not fsspec.open(uri): a URI is one bucket and key, never a chain
            # of protocols ("::") or a glob.
            with self.s3.filesystem().open(f"{parts.netloc}{parts.path}", "rb") as fp:
                self._copy_limited(iter(lambda: fp.read(2**20), b""), target, what)
        except TrustfidError:
            raise
        except FileNotFoundError:
            raise InputError(f"{what}: {uri} does not exist (no such bucket or object)",
                             code="fetch_failed") from None
        except Exception as e:
            raise InputError(f"{what}: cannot read {uri} ({type(e).__name__}: {e})", code="fetch_failed") from None

    def _copy_limited(self, chunks, target: Path, what: str) -> None:
        n = 0
        with open(target, "wb") as out:
            for chunk in chunks:
                n += len(chunk)
                if n > self.max_bytes:
                    out.close()
                    os.unlink(target)
                    raise TooLargeError(f"{what}: larger than {self.max_bytes} bytes", code="upload_too_large")
                out.write(chunk)
