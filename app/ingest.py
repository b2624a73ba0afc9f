"""Getting input sets in safely: multipart uploads streamed to the staging store with byte limits,
early checks of archives (member count, expanded size, compression ratio, path traversal, links) and
arrays (no object dtypes, shape limits), and URIs (file:// under allowed roots, http(s) to allowed
hosts on public addresses only, s3:// via fsspec).

The engine's image reader guards archive members again when it reads them; the checks here turn
obviously bad uploads away before they are queued. Nothing here imports torch; PIL is used, when
installed, only to read image headers.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from app.errors import ForbiddenURLError, StorageError
from app.settings import Settings
from trustfid.errors import (
    InputError,
    TooLargeError,
    TrustfidError,
    UnsupportedTypeError,
)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".pbm", ".pnm", ".dcm", ".dicom")
SET_FIELDS = ("real", "generated")
MAX_FORM_FIELD_BYTES = 64 * 1024


def kind_of(name: str) -> str | None:
    """'archive', 'array', 'image' or None from a file name."""
    low = name.lower()
    if low.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if low.endswith(ARRAY_SUFFIXES):
        return "array"
    if low.endswith(IMAGE_SUFFIXES):
        return "image"
    return None


def safe_name(name: str, taken: set[str]) -> str:
    """A file name for the staging folder: the basename, with odd characters replaced, unique."""
    base = re.split(r"[\\/]", name)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "file"
    base = base[-120:]
    out, i = base, 1
    while out in taken:
        out = f"{i}_{base}"
        i += 1
    taken.add(out)
    return out


# --- staged sets --------------------------------------------------------------------------------


@dataclass
class StagedSet:
    """One input set in the staging store."""

    dir: Path
    files: list[Path] = field(default_factory=list)
    bytes: int = 0

    def engine_path(self) -> Path:
        """What the engine reads: the one archive/array file, or the folder of images."""
        if len(self.files) == 1 and kind_of(self.files[0].name) in ("archive", "array"):
            return self.files[0]
        return self.dir


def check_set(staged: StagedSet, settings: Settings, what: str) -> Path:
    """Validate a staged set and return the path the engine should read."""
    if not staged.files:
        raise InputError(f"{what}: no files uploaded")
    kinds = {kind_of(f.name) for f in staged.files}
    if len(staged.files) > 1 and kinds != {"image"}:
        raise InputError(f"{what}: send either image files, or exactly one archive or array file")
    if len(staged.files) > settings.max_images:
        raise TooLargeError(f"{what}: {len(staged.files)} images; the limit is {settings.max_images}")
    for f in staged.files:
        check_file(f, settings, what)
    return staged.engine_path()


def check_file(path: Path, settings: Settings, what: str) -> None:
    kind = kind_of(path.name)
    if kind == "archive":
        if path.name.lower().endswith(".zip"):
            check_zip(path, settings, what)
        else:
            check_tar(path, settings, what)
    elif kind == "array":
        check_array(path, settings, what)
    elif kind == "image":
        check_image(path, settings, what)
    else:
        raise UnsupportedTypeError(f"{what}: {path.name!r} is not an image, archive or .npy/.npz file")


def _unsafe_member(name: str) -> bool:
    n = name.replace("\\", "/")
    return n.startswith("/") or re.match(r"^[A-Za-z]:", n) is not None or ".." in n.split("/")


def check_zip(path: Path, settings: Settings, what: str) -> None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise InputError(f"{what}: {path.name} is not a readable zip archive ({e})", code="bad_archive") from None
    with zf:
        infos = zf.infolist()
        _check_members(path, [(i.filename, i.file_size, i.compress_size, _zip_is_link(i)) for i in infos],
                       settings, what)


def _zip_is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_tar(path: Path, settings: Settings, what: str) -> None:
    members = []
    limit = settings.max_archive_members
    try:
        # Stream mode: headers are read in order, member data skipped, nothing is held in memory.
        with tarfile.open(path, mode="r|*") as tf:
            expanded = 0
            for m in tf:
                if not (m.isfile() or m.isdir()):
                    raise InputError(f"{what}: {path.name} holds a link or special file ({m.name!r}); "
                                     "only regular files are accepted", code="unsafe_archive")
                members.append((m.name, m.size, None, False))
                expanded += m.size
                if len(members) > limit or expanded > settings.max_expanded_bytes:
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f"{what}: {path.name} is not a readable tar archive ({e})", code="bad_archive") from None
    _check_members(path, members, settings, what)
    total = sum(m[1] for m in members)
    size = path.stat().st_size
    if total > 2**20 and total / max(size, 1) > settings.max_compression_ratio:
        raise TooLargeError(f"{what}: {path.name} expands {total / size:.0f}-fold; the limit is "
                            f"{settings.max_compression_ratio:.0f} (zip bomb?)", code="archive_bomb")


def _check_members(path: Path, members, settings: Settings, what: str) -> None:
    if len(members) > settings.max_archive_members:
        raise TooLargeError(f"{what}: {path.name} has more than {settings.max_archive_members} members",
                            code="too_many_members")
    expanded = 0
    for name, size, csize, is_link in members:
        if _unsafe_member(name):
            raise InputError(f"{what}: {path.name} has a member with an unsafe path ({name!r})",
                             code="unsafe_archive")
        if is_link:
            raise InputError(f"{what}: {path.name} holds a symbolic link ({name!r})", code="unsafe_archive")
        if size > settings.max_member_bytes:
            raise TooLargeError(f"{what}: member {name!r} expands to {size} bytes; the limit is "
                                f"{settings.max_member_bytes}", code="archive_bomb")
        if csize is not None and size > 2**20 and size / max(csize, 1) > settings.max_compression_ratio:
            raise TooLargeError(f"{what}: member {name!r} expands {size / max(csize, 1):.0f}-fold; the limit "
                                f"is {settings.max_compression_ratio:.0f} (zip bomb?)", code="archive_bomb")
        expanded += size
        if expanded > settings.max_expanded_bytes:
            raise TooLargeError(f"{what}: {path.name} expands to more than {settings.max_expanded_bytes} "
                                "bytes", code="archive_bomb")
    files = sum(1 for m in members if not m[0].endswith("/"))
    if files > settings.max_images:
        raise TooLargeError(f"{what}: {path.name} holds {files} files; the limit is {settings.max_images} images")


def _npy_header(fp):
    import numpy as np

    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def check_array(path: Path, settings: Settings, what: str) -> None:
    """.npy/.npz: never unpickled (object dtypes refused); image-array shapes within limits."""
    import numpy as np

    try:
        if path.name.lower().endswith(".npz"):
            check_zip(path, settings, what)
            with zipfile.ZipFile(path) as zf:
                headers = []
                for info in zf.infolist():
                    with zf.open(info) as fp:
                        headers.append((info.filename, _npy_header(fp)))
        else:
            with open(path, "rb") as fp:
                headers = [(path.name, _npy_header(fp))]
    except TrustfidError:
        raise
    except Exception as e:  # numpy raises ValueError for bad magic, EOFError, ...
        raise InputError(f"{what}: {path.name} is not a readable .npy/.npz file ({e})", code="bad_array") from None
    for name, (shape, _fortran, dtype) in headers:
        if dtype.hasobject:
            raise UnsupportedTypeError(f"{what}: {name} holds Python objects (pickle); only numeric arrays "
                                       "are accepted")
        if dtype == np.uint8 and len(shape) in (3, 4):  # a stack of images: N,H,W / N,H,W,C / N,C,H,W
            n = shape[0]
            if len(shape) == 3 or shape[3] in (1, 3, 4):
                pixels = shape[1] * shape[2]
            else:
                pixels = shape[2] * shape[3]
            if n > settings.max_images:
                raise TooLargeError(f"{what}: {name} holds {n} images; the limit is {settings.max_images}")
            if pixels > settings.max_pixels:
                raise TooLargeError(f"{what}: images of {pixels} pixels; the limit is {settings.max_pixels}")


def check_image(path: Path, settings: Settings, what: str) -> None:
    """Pixels per image from the header, when PIL is installed (the engine checks again)."""
    try:
        from PIL import Image
    except ImportError:  # the API-only image: the worker's reader enforces the limit
        return
    if path.name.lower().endswith((".dcm", ".dicom")):
        return
    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError:
        raise TooLargeError(f"{what}: {path.name} has too many pixels; the limit is {settings.max_pixels}") from None
    except Exception:
        return  # unreadable images are the engine's call (skipped, or an error with strict)
    if w * h > settings.max_pixels:
        raise TooLargeError(f"{what}: {path.name} is {w}x{h} = {w * h} pixels; the limit is {settings.max_pixels}")


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
            fname = filename.decode("utf-8", "replace")
            if not fname.strip():
                self._error = InputError(f"{name}: a file was sent without a file name; send each file with its name "
                                         f"(curl: -F {name}=@photo.png)", code="bad_field")
                return
            if kind_of(fname) is None:
                self._error = UnsupportedTypeError(
                    f"{name}: {fname!r} is not an image, a .zip/.tar/.tar.gz archive or a .npy/.npz array")
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
        if kind_of(unquote(parts.path)) is None:
            raise UnsupportedTypeError(f"{what}: the URL path must end in an image, archive or .npy/.npz suffix")
    elif scheme == "s3":
        if not settings.s3_enabled:
            raise ForbiddenURLError(f"{what}: s3:// inputs are disabled (TRUSTFID_S3_ENABLED)")
        try:
            import fsspec  # noqa: F401
            import s3fs  # noqa: F401
        except ImportError:
            raise ForbiddenURLError(f"{what}: s3:// needs the s3 extra (pip install 'trustfid[s3]')") from None
    else:
        raise ForbiddenURLError(f"{what}: scheme {scheme or '(none)'!r} is not accepted; use file://, "
                                "http(s):// or s3://")


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
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fp:
            _copy_limited(iter(lambda: fp.read(2**20), b""), target, settings, what)
    except TrustfidError:
        raise
    except Exception as e:
        raise InputError(f"{what}: cannot read {uri} ({e})", code="fetch_failed") from None


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
