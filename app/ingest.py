"""Getting input sets in safely: multipart uploads streamed to the staging store with byte limits,
early checks of archives (member count, expanded size, compression ratio, path traversal, links) and
arrays (no object dtypes, layouts, shape limits), and URIs (file:// under allowed roots, http(s) to
allowed hosts on public addresses only, s3:// via fsspec).

Which files are images, which members and arrays are refused and every size limit are the shared
rules of trustfid.inputs.rules / array_rules, the same the engine's readers and the client apply;
this module only decides what an upload does with them (refuse early, before queueing, where the
engine would skip or fail later). Nothing here imports torch; Pillow only reads image headers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app import staging
from app.errors import ForbiddenURLError, StorageError
from app.settings import Settings
from trustfid.errors import InputError, TooLargeError, TrustfidError, UnsupportedTypeError
from trustfid.inputs import rules
from trustfid.inputs.array_rules import check_array_file
from trustfid.inputs.rules import ArchiveBudget, Limits

SET_FIELDS = ("real", "generated")
MAX_FORM_FIELD_BYTES = 64 * 1024


def file_kind(path: Path, name: str | None = None) -> str | None:
    """'archive', 'array', 'image' or None for an uploaded or fetched file: the shared rule for a file
    in a set (rules.kind_of), from its name, or from its first bytes where the name does not decide."""
    return rules.kind_of(name or path.name, lambda: rules.read_head(path))


def not_read(what: str, name: str) -> UnsupportedTypeError:
    """The 415 for a file the engine would not read, saying why by the shared rule."""
    if rules.is_hidden(name):
        why = "a hidden file (its name starts with '.'), which is never read"
    elif rules.kind_of(name) is None:
        why = f"files named '*{rules.suffix(name)}' are never read as images"
    else:
        why = "neither its name nor its first bytes say PNG, JPEG, TIFF, BMP, GIF, WebP, PNM or DICOM"
    return UnsupportedTypeError(f"{what}: {name!r} is not an image, a .zip/.tar/.tar.gz archive or a .npy/.npz "
                                f"array ({why}); send image files, or exactly one archive or array file")


def safe_name(name: str, taken: set[str]) -> str:
    """A file name for the staging folder: the basename, with odd characters replaced, unique."""
    base = _basename(name)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "file"
    base = base[-120:]
    out, i = base, 1
    while out in taken:
        out = f"{i}_{base}"
        i += 1
    taken.add(out)
    return out


def _basename(name: str) -> str:
    return re.split(r"[\\/]", name)[-1]


@contextmanager
def _about(what: str):
    """The shared rules' errors, said of one input set ("real: ...")."""
    try:
        yield
    except TrustfidError as e:
        e.message = f"{what}: {e.message}"
        e.args = (e.message,)
        raise


# --- staged sets --------------------------------------------------------------------------------


@dataclass
class StagedSet:
    """One input set in the staging store."""

    dir: Path
    files: list[Path] = field(default_factory=list)
    kinds: dict[str, str] = field(default_factory=dict)  # staged file name -> 'archive' / 'array' / 'image'
    bytes: int = 0

    def kind(self, path: Path) -> str | None:
        return self.kinds.get(path.name) or file_kind(path)

    def engine_path(self) -> Path:
        """What the engine reads: the one archive/array file, or the folder of images."""
        if len(self.files) == 1 and self.kind(self.files[0]) in ("archive", "array"):
            return self.files[0]
        return self.dir


def check_set(staged: StagedSet, settings: Settings, what: str) -> Path:
    """Validate a staged set and return the path the engine should read."""
    if not staged.files:
        raise InputError(f"{what}: no files uploaded")
    kinds = {staged.kind(f) for f in staged.files}
    if len(staged.files) > 1 and kinds != {"image"}:
        raise InputError(f"{what}: send either image files, or exactly one archive or array file")
    with _about(what):
        rules.check_image_count("the upload", len(staged.files), settings.max_images)
    for f in staged.files:
        check_file(f, settings, what, staged.kind(f))
    return staged.engine_path()


def check_file(path: Path, settings: Settings, what: str, kind: str | None = None) -> None:
    """The shared rules for one uploaded or fetched file, before it is queued (the engine checks again)."""
    kind = kind or file_kind(path)
    if kind is None:
        raise not_read(what, path.name)
    limits = Limits.of(settings)
    with _about(what):
        if kind == "archive":
            (_check_zip if path.name.lower().endswith(".zip") else _check_tar)(path, limits)
        elif kind == "array":
            if path.name.lower().endswith(".npz"):
                _check_zip(path, limits)
            check_array_file(path, limits)
        else:
            _check_image(path, limits)


def _screen(members, budget: ArchiveBudget) -> None:
    """The upload's policy on an archive listing: one unsafe member (escaping path, link, device)
    refuses the whole archive, every declared size counts against the limits, and the members that
    may be images against the image limit."""
    images = 0
    for m in members:
        if m.unsafe:
            raise InputError(f"archive '{budget.label}' holds '{m.name}', which is refused: {m.problem}. Repack it "
                             f"with regular files under relative paths only.", code="unsafe_archive")
        budget.member(m.name, m.size, m.packed)
        images += not m.is_dir and rules.kind_of(m.name) in ("image", "unknown")
    rules.check_image_count(f"archive '{budget.label}'", images, budget.limits.max_images)


def _check_zip(path: Path, limits: Limits) -> None:
    budget = ArchiveBudget(path.name, limits)
    try:
        with zipfile.ZipFile(path) as zf:
            members = rules.zip_members(zf, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise rules.unreadable_archive(path.name, "zip", e) from None
    _screen(members, budget)


def _check_tar(path: Path, limits: Limits) -> None:
    budget = ArchiveBudget(path.name, limits)
    rules.check_tar_compression(rules.read_head(path, 6), path.name)
    try:
        # Stream mode: headers are read in order, member data skipped, nothing is held in memory.
        with tarfile.open(path, mode="r|*") as tf:
            _screen(rules.tar_members(tf, budget), budget)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise rules.unreadable_archive(path.name, "tar", e) from None
    budget.whole(path.stat().st_size)


def _check_image(path: Path, limits: Limits) -> None:
    """Pixels per image from the header (the engine checks again when decoding)."""
    from trustfid.inputs.decode import header_size

    size = header_size(path.name, path)
    if size is not None:
        rules.check_pixels(f"image '{path.name}' is", *size, limits.max_pixels)


# --- multipart uploads, streamed ----------------------------------------------------------------


class MultipartStager:
    """Parses a multipart/form-data body chunk by chunk, writing file parts of the fields ``real``
    and ``generated`` (or whatever ``set_fields`` names) straight into ``dest/<field>/`` and keeping
    small text fields (``options``, ``name``) in memory. Byte limits hold while streaming."""

    def __init__(self, content_type: str, dest: Path, settings: Settings, set_fields=SET_FIELDS,
                 text_fields=("options",)):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._parse_options_header = parse_options_header
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise UnsupportedTypeError("send multipart/form-data with a boundary, or application/json")
        self.dest = dest
        self.settings = settings
        self.set_fields = set_fields
        self.text_fields = text_fields
        self.sets: dict[str, StagedSet] = {}
        self.texts: dict[str, str] = {}
        self.total = 0
        self._names: dict[str, set[str]] = {}
        self._hname = b""
        self._hval = b""
        self._headers: dict[bytes, bytes] = {}
        self._field: str | None = None
        self._fp = None
        self._provisional: tuple[str, Path] | None = None  # (file name, staged path) of an unknown-named part
        self._text: bytearray | None = None
        self._error: TrustfidError | None = None
        self.parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_header_field": self._header_field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
        })

    def write(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.settings.max_upload_bytes:
            raise TooLargeError(f"upload larger than {self.settings.max_upload_bytes} bytes",
                                code="upload_too_large")
        try:
            self.parser.write(chunk)
        except TrustfidError:
            raise
        except OSError as e:  # our staging folder, not the caller's body
            raise StorageError(f"the service cannot store uploads right now ({e.strerror or type(e).__name__}); "
                               "try again later or tell the operator") from None
        except Exception as e:
            raise InputError(f"malformed multipart body ({e})", code="bad_multipart") from None
        if self._error:
            raise self._error

    def finish(self) -> None:
        try:
            self.parser.finalize()
        except Exception as e:
            raise InputError(f"malformed multipart body ({e})", code="bad_multipart") from None
        if self._error:
            raise self._error
        self._close()

    def abort(self) -> None:
        self._close()

    def _close(self):
        if self._fp is not None:
            self._fp.close()
            self._fp = None

    # callbacks (errors are parked and raised from write, outside the parser)
    def _part_begin(self):
        self._headers = {}
        self._field = None
        self._text = None

    def _classify_staged(self, fname: str, path: Path) -> None:
        """A file whose name did not say what it is: an image by its first bytes, or refused (415)."""
        staged = self.sets[self._field]
        if file_kind(path, fname) == "image":
            staged.kinds[path.name] = "image"
            return
        staged.files.remove(path)
        path.unlink(missing_ok=True)
        self._error = not_read(self._field, fname)

    def _header_field(self, data, start, end):
        self._hname += data[start:end]

    def _header_value(self, data, start, end):
        self._hval += data[start:end]

    def _header_end(self):
        self._headers[self._hname.lower()] = self._hval
        self._hname, self._hval = b"", b""

    def _headers_finished(self):
        if self._error:
            return
        _, opts = self._parse_options_header(self._headers.get(b"content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        filename = opts.get(b"filename")
        self._field = name
        if filename is not None:
            if name not in self.set_fields:
                self._error = InputError(f"unexpected file field {name!r}; use {' and '.join(self.set_fields)}",
                                         code="bad_field")
                return
            fname = _basename(filename.decode("utf-8", "replace"))
            if not fname.strip():
                self._error = InputError(f"{name}: a file was sent without a file name; send each file with its name "
                                         f"(curl: -F {name}=@photo.png)", code="bad_field")
                return
            kind = rules.kind_of(fname)  # 'unknown': a name without a known suffix, classified once written
            if kind is None:
                self._error = not_read(name, fname)
                return
            staged = self.sets.get(name)
            if staged is None:
                d = self.dest / name
                d.mkdir(parents=True, exist_ok=True)
                staged = self.sets[name] = StagedSet(dir=d)
                self._names[name] = set()
            if len(staged.files) >= self.settings.max_files_per_set:
                self._error = TooLargeError(f"{name}: more than {self.settings.max_files_per_set} files; "
                                            "send an archive instead", code="too_many_files")
                return
            path = staged.dir / safe_name(fname, self._names[name])
            staged.files.append(path)
            if kind == "unknown":
                self._provisional = (fname, path)
            else:
                staged.kinds[path.name] = kind
            self._fp = open(path, "wb")
        elif name in self.text_fields or name in self.set_fields:
            # A set given as a text field holds JSON: {"reference_id": ...} or {"uri": ...}.
            self._text = bytearray()
        else:
            self._error = InputError(f"unexpected form field {name!r}", code="bad_field")

    def _part_data(self, data, start, end):
        if self._error:
            return
        if self._fp is not None:
            self._fp.write(data[start:end])
            self.sets[self._field].bytes += end - start
        elif self._text is not None:
            self._text += data[start:end]
            if len(self._text) > MAX_FORM_FIELD_BYTES:
                self._error = TooLargeError(f"form field {self._field!r} is larger than {MAX_FORM_FIELD_BYTES} bytes")

    def _part_end(self):
        if self._fp is not None:
            self._fp.close()
            self._fp = None
            if self._provisional is not None and not self._error:
                self._classify_staged(*self._provisional)
            self._provisional = None
        elif self._text is not None and not self._error:
            self.texts[self._field] = self._text.decode("utf-8", "replace")
            self._text = None


def parse_json_field(text: str | None, what: str, code: str = "bad_options") -> dict:
    """A multipart text field holding a JSON object. Parsed by pydantic's JSON parser, as the JSON-body
    path is: it refuses nesting deeper than its recursion limit with an error instead of overflowing
    Python's stack."""
    import pydantic_core

    if text is None or not text.strip():
        return {}
    try:
        out = pydantic_core.from_json(text)
    except ValueError as e:
        raise InputError(f"{what} is not valid JSON ({e})", code=code) from None
    if not isinstance(out, dict):
        raise InputError(f"{what} must be a JSON object", code=code)
    return out


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --- URIs ---------------------------------------------------------------------------------------


def _check_public(host: str, port: int | None, settings: Settings, what: str) -> list[str]:
    """Resolve ``host`` and require every address to be public unless private ones are allowed."""
    try:
        infos = socket.getaddrinfo(host, port or 443, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ForbiddenURLError(f"{what}: cannot resolve host {host!r} ({e})") from None
    addrs = sorted({i[4][0] for i in infos})
    if not settings.allow_private_urls:
        for a in addrs:
            ip = ipaddress.ip_address(a.split("%")[0])
            if getattr(ip, "ipv4_mapped", None):
                ip = ip.ipv4_mapped
            if not ip.is_global or ip.is_multicast:
                raise ForbiddenURLError(f"{what}: host {host!r} resolves to the non-public address {a}")
    return addrs


def check_uri(uri: str, settings: Settings, what: str) -> None:
    """Refuse a URI the service may not read (called at submission and again before fetching)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        file_path(uri, settings, what)
    elif scheme in ("http", "https"):
        host = (parts.hostname or "").lower()
        if not host:
            raise ForbiddenURLError(f"{what}: {uri!r} has no host")
        allowed = {h.lower() for h in settings.url_hosts}
        if host not in allowed:
            raise ForbiddenURLError(f"{what}: host {host!r} is not in TRUSTFID_URL_HOSTS")
        if parts.username or parts.password:
            raise ForbiddenURLError(f"{what}: credentials in URLs are not accepted")
        _check_public(host, parts.port, settings, what)
        if rules.kind_of(_basename(unquote(parts.path))) is None:
            raise UnsupportedTypeError(f"{what}: the URL path must end in an image, archive or .npy/.npz suffix")
    elif scheme == "s3":
        _check_s3(uri, parts, settings, what)
    else:
        raise ForbiddenURLError(f"{what}: scheme {scheme or '(none)'!r} is not accepted; use file://, "
                                "http(s):// or s3://")


# S3's bucket naming rules: no host names, addresses or anything else a URL could smuggle in.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_s3(uri: str, parts, settings: Settings, what: str) -> None:
    """s3:// inputs are read from the operator's store (TRUSTFID_S3_ENDPOINT_URL and its credentials):
    a URI names a bucket and a key there, never an endpoint, so the address checks of http(s) do not
    apply; the service's own staging bucket is never readable this way."""
    if not settings.s3_enabled:
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
    if key.endswith("/") or rules.kind_of(_basename(unquote(key))) is None:
        raise UnsupportedTypeError(f"{what}: an s3:// input is one object whose key ends in an image, archive or "
                                   ".npy/.npz suffix (a prefix of many objects: pack them as one archive)")
    if bucket == staging.staging_bucket(settings):
        raise ForbiddenURLError(f"{what}: bucket {bucket!r} holds the service's own staging and is not readable "
                                "as an input")


def file_path(uri: str, settings: Settings, what: str) -> Path:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ForbiddenURLError(f"{what}: file:// URIs name no host")
    roots = [Path(r).resolve() for r in settings.file_roots]
    if not roots:
        raise ForbiddenURLError(f"{what}: file:// inputs are disabled (TRUSTFID_FILE_ROOTS is empty)")
    path = Path(unquote(parts.path)).resolve()  # resolves symlinks too: no escaping a root by a link
    if not any(path == r or path.is_relative_to(r) for r in roots):
        raise ForbiddenURLError(f"{what}: {path} is not under an allowed root (TRUSTFID_FILE_ROOTS)")
    if not path.exists():
        raise InputError(f"{what}: {path} does not exist", code="not_found_input")
    return path


def check_callback_url(url: str, settings: Settings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ForbiddenURLError("callback_url must be an http(s):// URL")
    host = parts.hostname.lower()
    if settings.callback_hosts and host not in {h.lower() for h in settings.callback_hosts}:
        raise ForbiddenURLError(f"callback_url: host {host!r} is not in TRUSTFID_CALLBACK_HOSTS")
    _check_public(host, parts.port, settings, "callback_url")


def fetch(uri: str, dest: Path, settings: Settings, what: str) -> Path:
    """Make a URI's data readable by the engine; returns the path to give it. file:// is read in
    place; http(s) and s3 are streamed into ``dest`` with the upload byte limit."""
    check_uri(uri, settings, what)
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "file":
        path = file_path(uri, settings, what)
        if path.is_file():
            check_file(path, settings, what)
        return path
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / safe_name(unquote(parts.path) or "input", set())
    if scheme in ("http", "https"):
        _fetch_http(uri, target, settings, what)
    else:
        _fetch_s3(uri, target, settings, what)
    check_file(target, settings, what)
    return target


def _fetch_http(uri: str, target: Path, settings: Settings, what: str) -> None:
    import httpx

    try:
        # No redirects: a redirect could lead anywhere, past the host and address checks.
        with httpx.stream("GET", uri, timeout=settings.fetch_timeout_s, follow_redirects=False) as resp:
            if resp.status_code != 200:
                raise InputError(f"{what}: GET {uri} answered {resp.status_code}", code="fetch_failed")
            _copy_limited(resp.iter_bytes(), target, settings, what)
    except httpx.HTTPError as e:
        raise InputError(f"{what}: cannot fetch {uri} ({e})", code="fetch_failed") from None


def _fetch_s3(uri: str, target: Path, settings: Settings, what: str) -> None:
    parts = urlsplit(uri)
    try:
        # The store's filesystem object, not fsspec.open(uri): a URI is one bucket and key, never a chain
        # of protocols ("::") or a glob.
        with staging.filesystem(settings).open(f"{parts.netloc}{parts.path}", "rb") as fp:
            _copy_limited(iter(lambda: fp.read(2**20), b""), target, settings, what)
    except TrustfidError:
        raise
    except FileNotFoundError:
        raise InputError(f"{what}: {uri} does not exist (no such bucket or object)", code="fetch_failed") from None
    except Exception as e:
        raise InputError(f"{what}: cannot read {uri} ({type(e).__name__}: {e})", code="fetch_failed") from None


def _copy_limited(chunks, target: Path, settings: Settings, what: str) -> None:
    n = 0
    with open(target, "wb") as out:
        for chunk in chunks:
            n += len(chunk)
            if n > settings.max_upload_bytes:
                out.close()
                os.unlink(target)
                raise TooLargeError(f"{what}: larger than {settings.max_upload_bytes} bytes",
                                    code="upload_too_large")
            out.write(chunk)
