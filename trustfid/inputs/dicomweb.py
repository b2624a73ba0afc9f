"""Image sets in a PACS, read over DICOMweb:

    dicomweb+https://HOST[:PORT]/PATH/studies/STUDY_UID[/series/SERIES_UID]

(``dicomweb+http`` reads plain http; the service allows it only for a server the operator configured
with an http:// URL). A study or one of its series is listed with QIDO-RS and its image instances are
retrieved with WADO-RS as DICOM in the transfer syntax the PACS stored them in (stored values, never
rendered images), through dicomweb-client. Each instance is written as ``SERIES_UID/SOP_UID.dcm`` (the
PACS's UIDs, checked to be digits and dots: nothing it sends names a path), and the engine reads that
folder like any folder of DICOM files (dicom.py: modality LUT, 16-bit, multi-frame). So a series scored
from the PACS gives the report of the same files scored from a folder.

- ``DicomWebUri.parse``: the URI form;
- ``Pacs``: the servers the operator configured (TRUSTFID_DICOMWEB_SERVERS: base URL, credentials),
  the timeout and retries, and the limits a set is held to while it streams in (bytes received,
  image instances); ``Pacs.images`` lists a study or series, ``Pacs.fetch`` retrieves it into a folder;
- ``fetches_dicomweb``: the library's entry points (``score``, ``compute_stats``, ``inspect``, and so
  the CLI) take DICOMweb URIs as sets: fetched into a temporary folder, removed when the call returns.
  They run as the operator: any DICOMweb URI, signed in where a configured server matches it. The
  service (app/ingest/uris.py) reads only configured servers, into the job's staging folder.

Errors name the host and the UID and never a credential: an unknown study or series (QIDO finds
nothing; InputError ``pacs_not_found``), a series without image instances (an SR, a presentation state:
``pacs_no_images``), more instances or bytes than the limits (TooLargeError), refused credentials
(PacsError ``pacs_auth_failed``), a PACS that cannot be reached or does not answer in time, retried
with backoff by urllib3's ``Retry`` first (``pacs_unreachable``), and an answer that is not DICOM or
a redirect, which is never followed (``pacs_bad_answer``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import urlsplit

from ..errors import InputError, PacsError, TooLargeError, TrustfidError
from ..timing import mark_entered
from .rules import plural

if TYPE_CHECKING:  # the settings (pydantic-settings) load when a PACS is read, not when the CLI starts
    from ..settings import DicomWebServer

SCHEMES = {"dicomweb+https": "https", "dicomweb+http": "http"}
FORM = "dicomweb+https://HOST[:PORT]/PATH/studies/STUDY_UID[/series/SERIES_UID]"
_PATH = re.compile(r"^(?P<base>.*)/studies/(?P<study>[^/]+)(?:/series/(?P<series>[^/]+))?/?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # DICOM PS3.5 9.1, leading zeros tolerated; never a path
# DICOM JSON tags of the QIDO-RS answer (PS3.18 F.2): the instance-level attributes we read.
SERIES_UID, SOP_CLASS, SOP_UID, INSTANCE_NUMBER, ROWS = "0020000E", "00080016", "00080018", "00200013", "00280010"
# Instances without pixel data: SR (and key objects), presentation states, encapsulated documents,
# waveforms, RT structure sets and plans. An instance is an image when QIDO gives its Rows (a default
# return attribute of image instances, PS3.18 table 6.7.1-2a), or, from a server that does not give
# Rows, when its SOP class is none of these.
_NOT_IMAGES = tuple(f"1.2.840.10008.5.1.4.1.1.{c}" for c in ("88.", "11.", "104.", "9.", "481.3", "481.5"))
PAGE = 1000  # instances per QIDO request


def is_dicomweb(source) -> bool:
    return isinstance(source, str) and source.split("://", 1)[0].lower() in SCHEMES


def _uid(value: str | None, what: str, kind: str) -> str | None:
    if value is not None and (len(value) > 64 or not _UID.match(value)):
        raise InputError(f"{what}: {value!r} is not a DICOM {kind} UID (digits and dots, at most 64 characters)",
                         code="forbidden_uri")
    return value


@dataclass(frozen=True)
class DicomWebUri:
    """A parsed DICOMweb set URI: the service's base URL, the study and (optionally) the series."""

    scheme: str  # http or https
    host: str
    port: int
    path: str  # the DICOMweb service's path on the host ('' at its root)
    study: str
    series: str | None

    @classmethod
    def parse(cls, uri: str, what: str) -> DicomWebUri:
        parts = urlsplit(uri)
        scheme = SCHEMES.get(parts.scheme.lower())
        if scheme is None or not parts.hostname:
            raise InputError(f"{what}: a DICOMweb set is {FORM}", code="forbidden_uri")
        if parts.username is not None or parts.password is not None:  # not echoed: it holds a secret
            raise InputError(f"{what}: credentials in URIs are not accepted; the operator configures the PACS's "
                             "sign-in (TRUSTFID_DICOMWEB_SERVERS)", code="forbidden_uri")
        if parts.query or parts.fragment:
            raise InputError(f"{what}: a DICOMweb set URI has no query or fragment: {FORM}", code="forbidden_uri")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise InputError(f"{what}: {uri!r} has an invalid port", code="forbidden_uri") from None
        m = _PATH.match(parts.path)
        if m is None:
            raise InputError(f"{what}: {uri!r} names no study: {FORM}", code="forbidden_uri")
        return cls(scheme, parts.hostname.lower(), port, m["base"].rstrip("/"),
                   _uid(m["study"], what, "study"), _uid(m["series"], what, "series"))

    @property
    def where(self) -> str:
        """The host as messages name it: with its port when that is not the scheme's own."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.scheme == "https" else 80) else f"{host}:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.where}{self.path}"

    @property
    def target(self) -> str:
        return f"series {self.series} of study {self.study}" if self.series else f"study {self.study}"

    def matches(self, server: DicomWebServer) -> bool:
        return _place(server.url) == (self.scheme, self.host, self.port, self.path)


def _place(url: str) -> tuple[str, str, int, str]:
    p = urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or (443 if p.scheme == "https" else 80), p.path.rstrip("/")


class Instance(NamedTuple):
    series: str
    sop: str
    number: int | None
    sop_class: str
    image: bool


def _value(row: dict, tag: str):
    """The first value of ``tag`` in a DICOM JSON dataset; None when absent or not in that form."""
    element = row.get(tag)
    values = element.get("Value") if isinstance(element, dict) else None
    return values[0] if isinstance(values, list) and values and isinstance(values[0], (str, int, float)) else None


class _Bytes:
    """A requests response hook that counts the bytes received from the PACS while they stream in
    (decoded, as they land on disk) and stops the read with TooLargeError past ``limit``; a declared
    Content-Length over what is left stops it before the body is read."""

    def __init__(self, limit: int, message):
        self.limit, self.message, self.used = limit, message, 0

    def __call__(self, response, *args, **kwargs):
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and self.used + int(declared) > self.limit:
            raise TooLargeError(self.message(), code="upload_too_large")
        stream = response.raw.stream

        def counted(*a, **kw):
            for chunk in stream(*a, **kw):
                self.used += len(chunk)
                if self.used > self.limit:
                    raise TooLargeError(self.message(), code="upload_too_large")
                yield chunk

        response.raw.stream = counted
        return response


def _auth(server: DicomWebServer):
    """requests' auth for a server's credentials: set on each request as it is sent, so they are in no
    header dict that dicomweb-client logs."""
    import requests

    if server.token is not None:
        token = server.token

        class Bearer(requests.auth.AuthBase):
            def __call__(self, r):
                r.headers["Authorization"] = f"Bearer {token.get_secret_value()}"
                return r

            def __repr__(self):
                return "Bearer(**********)"

        return Bearer()
    if server.username is not None:
        return requests.auth.HTTPBasicAuth(server.username, server.password.get_secret_value())
    return None


@dataclass(frozen=True)
class Pacs:
    """How DICOMweb sets are read: the configured servers, each request's timeout and retries, and the
    limits one set is held to while it streams in (``max_bytes`` received, named by ``bytes_setting`` in
    messages; ``max_instances`` image instances)."""

    servers: tuple[DicomWebServer, ...] = ()
    timeout_s: float = 30.0
    retries: int = 3
    max_bytes: int = 8 * 2**30
    max_instances: int | None = None
    bytes_setting: str = "TRUSTFID_MAX_EXPANDED_BYTES"

    @classmethod
    def of(cls, settings, **limits) -> Pacs:
        """From the settings (trustfid/settings.py); ``limits`` override the library's (the service holds a
        set to its upload limit)."""
        return cls(**{"servers": tuple(settings.dicomweb_servers), "timeout_s": settings.dicomweb_timeout_s,
                      "retries": settings.dicomweb_retries, "max_bytes": settings.max_expanded_bytes,
                      "max_instances": settings.max_images, **limits})

    def server_for(self, uri: DicomWebUri) -> DicomWebServer | None:
        """The configured server this URI is on: the same scheme, host, port and service path."""
        return next((s for s in self.servers if uri.matches(s)), None)

    def why_not_configured(self, uri: DicomWebUri) -> str:
        """Why no configured server matches ``uri``, in words that reveal no other configured host."""
        same_host = [_place(s.url) for s in self.servers if _place(s.url)[1:3] == (uri.host, uri.port)]
        if not same_host:
            return (f"{uri.where} is not a PACS this service may read; the operator lists those in "
                    "TRUSTFID_DICOMWEB_SERVERS")
        schemes = {p[0] for p in same_host}
        if uri.scheme not in schemes:
            use = "plain http: use dicomweb+http://" if "http" in schemes else "https only: use dicomweb+https://"
            return f"{uri.where} is configured for {use}"
        paths = ", ".join(sorted(f"'{p[3] or '/'}'" for p in same_host))
        return f"{uri.where} has no configured DICOMweb service at '{uri.path or '/'}' (configured: {paths})"

    # --- reading ------------------------------------------------------------------------------------
    def images(self, uri: str, what: str) -> list[Instance]:
        """The image instances of the study or series ``uri`` names (QIDO-RS), in series, instance number
        and UID order; InputError when there are none (``pacs_not_found``, ``pacs_no_images``) and
        TooLargeError past ``max_instances``."""
        parsed = DicomWebUri.parse(uri, what)
        with self._client(parsed, what) as client:
            return self._images(client, parsed, what)

    def fetch(self, uri: str, dest: Path, what: str) -> Path:
        """Retrieve the image instances of ``uri`` (WADO-RS, as stored) into ``dest`` as
        ``SERIES_UID/SOP_UID.dcm``; returns ``dest``, the folder the engine reads. ``dest`` is emptied
        first: a job delivered again reads what the PACS holds now, nothing left from before."""
        parsed = DicomWebUri.parse(uri, what)
        shutil.rmtree(dest, ignore_errors=True)
        with self._client(parsed, what) as client:
            for inst in self._images(client, parsed, what):
                ds = self._talk(parsed, what, lambda i=inst: client.retrieve_instance(parsed.study, i.series, i.sop))
                folder = dest / inst.series
                folder.mkdir(parents=True, exist_ok=True)
                ds.save_as(folder / f"{inst.sop}.dcm")  # as received: the PACS's transfer syntax and values
        return dest

    def _images(self, client, uri: DicomWebUri, what: str) -> list[Instance]:
        found: dict[str, Instance] = {}
        while True:  # pages until one brings nothing new (a server that ignores offset ends here too)
            page = self._talk(uri, what, lambda: client.search_for_instances(
                uri.study, uri.series, fields=[SERIES_UID, SOP_CLASS, INSTANCE_NUMBER, ROWS], limit=PAGE,
                offset=len(found)))
            if not isinstance(page, list) or not all(isinstance(row, dict) for row in page):
                raise PacsError(f"{what}: the PACS at {uri.where} answered the search for {uri.target} with "
                                "something that is not a DICOM JSON list", code="pacs_bad_answer", status=502)
            new = [inst for row in page if (inst := self._instance(row, uri, what)).sop not in found]
            if not new:
                break
            found.update((inst.sop, inst) for inst in new)
            if self.max_instances is not None and sum(i.image for i in found.values()) > self.max_instances:
                raise TooLargeError(f"{what}: {uri.target} on {uri.where} holds more than "
                                    f"{plural(self.max_instances, 'image instance')}, over the limit; name one "
                                    "series, or raise the limit (TRUSTFID_MAX_IMAGES)")
        if not found:
            raise InputError(f"{what}: the PACS at {uri.where} has no {uri.target} (QIDO-RS found no instances); "
                             "check the UIDs, and that the study is on that PACS", code="pacs_not_found")
        images = sorted((i for i in found.values() if i.image),
                        key=lambda i: (i.series, i.number is None, i.number or 0, i.sop))
        if not images:
            kinds = sorted({_class_name(i.sop_class) for i in found.values()})
            raise InputError(f"{what}: {uri.target} on {uri.where} holds no image instances, only "
                             f"{plural(len(found), 'instance')} of {', '.join(kinds)}; name a series of images",
                             code="pacs_no_images")
        return images

    def _instance(self, row: dict, uri: DicomWebUri, what: str) -> Instance:
        series = uri.series or _value(row, SERIES_UID)
        sop, sop_class, rows = _value(row, SOP_UID), _value(row, SOP_CLASS) or "", _value(row, ROWS)
        if series is None or sop is None:
            raise PacsError(f"{what}: the PACS at {uri.where} listed an instance of {uri.target} without its "
                            "series or SOP instance UID", code="pacs_bad_answer", status=502)
        _uid(series, f"{what}: the PACS at {uri.where}", "series")
        _uid(sop, f"{what}: the PACS at {uri.where}", "SOP instance")
        number = _value(row, INSTANCE_NUMBER)
        try:
            number = int(number) if number is not None else None
        except (TypeError, ValueError):
            number = None
        return Instance(series, sop, number, sop_class, rows is not None or not sop_class.startswith(_NOT_IMAGES))

    # --- talking to the PACS ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _client(self, uri: DicomWebUri, what: str) -> Iterator:
        """A dicomweb-client for ``uri``'s server: its credentials when one is configured, urllib3's Retry
        (connect and read errors, 429/502/503/504; exponential backoff) instead of dicomweb-client's own,
        the timeout, no redirects, and the byte limit counted while responses stream in."""
        try:
            import requests
            from dicomweb_client import DICOMwebClient
            from requests.adapters import HTTPAdapter
            from urllib3.util.retry import Retry
        except ImportError:
            raise InputError(f"{what}: DICOMweb inputs need the dicomweb extra (pip install 'trustfid[dicomweb]')",
                             code="forbidden_uri") from None
        server = self.server_for(uri)
        retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries, other=0,
                      redirect=0, backoff_factor=0.5, status_forcelist=(429, 502, 503, 504),
                      allowed_methods=frozenset({"GET"}), raise_on_status=False)
        session = requests.Session()
        session.max_redirects = 0  # a redirect could lead past the configured host
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        session.auth = _auth(server) if server is not None else None
        budget = _Bytes(self.max_bytes, lambda: (
            f"{what}: {uri.target} on {uri.where} is larger than {plural(self.max_bytes, 'byte')}, over the limit; "
            f"name one series, or raise the limit ({self.bytes_setting})"))
        try:
            client = DICOMwebClient(uri.base, session=session, timeout=self.timeout_s, callback=budget)
        except ValueError:
            raise InputError(f"{what}: {uri.base} is not a base URL dicomweb-client can use",
                             code="forbidden_uri") from None
        client.set_http_retry_params(retry=False)  # urllib3's Retry above does it, for connection errors too
        with session:
            yield client

    def _talk(self, uri: DicomWebUri, what: str, call):
        """``call()``, its failures said in words that name the host and the UID and no credential."""
        import pydicom.errors
        import requests

        server = self.server_for(uri)
        tries = f"{plural(self.retries + 1, 'try', 'tries')}"
        try:
            return call()
        except TrustfidError:
            raise
        except requests.HTTPError as e:
            status = e.response.status_code if e.response is not None else 0
            if status in (401, 403):
                raise PacsError(_refused(uri, server, status, what), code="pacs_auth_failed", status=502) from None
            if status == 404:
                raise InputError(f"{what}: the PACS at {uri.where} has no {uri.target} (HTTP 404); check the UIDs",
                                 code="pacs_not_found") from None
            raise PacsError(f"{what}: the PACS at {uri.where} answered HTTP {status} for {uri.target} ({tries}); "
                            "try again later, or tell the operator", code="pacs_unreachable") from None
        except requests.TooManyRedirects:
            raise PacsError(f"{what}: the PACS at {uri.where} answered {uri.target} with a redirect, which is not "
                            "followed; configure the URL it redirects to", code="pacs_bad_answer",
                            status=502) from None
        except requests.RequestException as e:
            why = (f"did not answer within {self.timeout_s:g} s" if _timed_out(e)
                   else "could not be connected to")
            raise PacsError(f"{what}: the PACS at {uri.where} {why} ({tries}, for {uri.target}); check that it "
                            "runs and that trustfid's machine reaches it", code="pacs_unreachable") from None
        except (ValueError, KeyError, pydicom.errors.InvalidDicomError) as e:
            raise PacsError(f"{what}: the PACS at {uri.where} answered {uri.target} with something that is not "
                            f"DICOMweb ({type(e).__name__})", code="pacs_bad_answer", status=502) from None


def _refused(uri: DicomWebUri, server: DicomWebServer | None, status: int, what: str) -> str:
    if server is None:
        signed = "no credentials are configured for it (TRUSTFID_DICOMWEB_SERVERS)"
    else:
        signed = ("it refused the bearer token configured for it" if server.token is not None
                  else "it refused the user name and password configured for it")
        signed += " (TRUSTFID_DICOMWEB_SERVERS): the operator should renew it, or grant it access"
    return f"{what}: the PACS at {uri.where} refused access to {uri.target} (HTTP {status}): {signed}"


def _timed_out(e: BaseException) -> bool:
    import requests
    from urllib3.exceptions import MaxRetryError, NewConnectionError, TimeoutError

    if isinstance(e, requests.Timeout):
        return True
    reason = e.args[0].reason if e.args and isinstance(e.args[0], MaxRetryError) else None
    # urllib3's NewConnectionError (refused, no route) is a ConnectTimeoutError too, for old callers' sake
    return isinstance(reason, TimeoutError) and not isinstance(reason, NewConnectionError)


def _class_name(uid: str) -> str:
    if not uid:
        return "unknown SOP class"
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


# --- the library's entry points --------------------------------------------------------------------

@contextlib.contextmanager
def local_copies(sources: dict) -> Iterator[dict]:
    """``sources`` (argument name -> set) with each DICOMweb URI fetched into a temporary folder, which is
    removed when the block ends, however it ends; other sets as given. Runs as the operator: any DICOMweb
    URI, signed in where a TRUSTFID_DICOMWEB_SERVERS entry matches, under the settings' limits."""
    if not any(is_dicomweb(s) for s in sources.values()):
        yield sources
        return
    from ..settings import get_engine_settings

    pacs = Pacs.of(get_engine_settings())
    with tempfile.TemporaryDirectory(prefix="trustfid-dicomweb-") as tmp:
        yield {name: pacs.fetch(s, Path(tmp) / name, name) if is_dicomweb(s) else s for name, s in sources.items()}


def fetches_dicomweb(*names: str):
    """Decorate an engine entry point whose arguments ``names`` are image sets: each may be a DICOMweb URI,
    read into a temporary folder for the duration of the call (``local_copies``)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            mark_entered()  # the retrieval is the engine's time, not the command's start-up (timing.py)
            with local_copies({n: bound.arguments[n] for n in names if n in bound.arguments}) as local:
                bound.arguments.update(local)
                return fn(*bound.args, **bound.kwargs)

        return wrapper

    return decorate
