"""Multipart uploads, streamed: a multipart/form-data body parsed chunk by chunk, its file parts
written straight into the record's staging folder with the byte and file-count limits held while it
streams, its small text fields (options, name, a set given as JSON) kept in memory."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from app.errors import StorageError
from trustfid.errors import InputError, TooLargeError, TrustfidError, UnsupportedTypeError
from trustfid.inputs import rules

from .screening import StagedSet, file_kind, not_read

SET_FIELDS = ("real", "generated")
MAX_FORM_FIELD_BYTES = 64 * 1024


def safe_name(name: str, taken: set[str]) -> str:
    """A file name for the staging folder: the basename, with odd characters replaced, unique."""
    base = basename(name)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "file"
    base = base[-120:]
    out, i = base, 1
    while out in taken:
        out = f"{i}_{base}"
        i += 1
    taken.add(out)
    return out


def basename(name: str) -> str:
    return re.split(r"[\\/]", name)[-1]


class MultipartStager:
    """Parses a multipart/form-data body chunk by chunk, writing file parts of the fields ``real``
    and ``generated`` (or whatever ``set_fields`` names) straight into ``dest/<field>/`` and keeping
    small text fields (``options``, ``name``) in memory. Byte limits hold while streaming."""

    def __init__(self, content_type: str, dest: Path, *, max_bytes: int, max_files: int, set_fields=SET_FIELDS,
                 text_fields=("options",)):
        from python_multipart.multipart import MultipartParser, parse_options_header

        self._parse_options_header = parse_options_header
        ctype, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        if ctype != b"multipart/form-data" or not boundary:
            raise UnsupportedTypeError("send multipart/form-data with a boundary, or application/json")
        self.dest = dest
        self.max_bytes, self.max_files = max_bytes, max_files
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
        if self.total > self.max_bytes:
            raise TooLargeError(f"upload larger than {self.max_bytes} bytes",
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
            fname = basename(filename.decode("utf-8", "replace"))
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
            if len(staged.files) >= self.max_files:
                self._error = TooLargeError(f"{name}: more than {self.max_files} files; "
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
