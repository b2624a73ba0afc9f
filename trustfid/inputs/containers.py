"""Readers for sets of image files: a folder, one file, a zip, a tar (plain or gzip-compressed).

Each lists its candidates when made (so limits fail fast, before any decoding) and then decodes them
lazily in sorted relative-name order: the same pictures give the same names and order whether they
arrive as a folder, a zip or a tar. Archives are read in place, never extracted. Which files are
candidates, which members are refused and the size limits are the shared rules (rules.py).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from functools import partial
from pathlib import Path

from ..errors import TrustfidError
from . import rules
from .decode import decode_events
from .events import Reader, Skip, select_listed, skipped
from .gzindex import GzIndex, IndexedGzip
from .intensity import Decoding
from .rules import ArchiveBudget, Limits, first_line

_READ_CHUNK = 1 << 20


class FolderReader(Reader):
    """A folder, recursively (rules.list_folder: links followed once; broken links listed as skipped)."""

    def __init__(self, root: Path, label: str, limits: Limits, decoding: Decoding):
        self.label, self.decoding = label, decoding
        passed_over: list[str] = []
        self.entries = rules.list_folder(root, label, passed_over)
        self.passed_over = tuple(passed_over)
        self.count = sum(1 for e in self.entries if e[1] is not None)

    def peek(self):
        for name, path, reason in self.entries:
            yield name, None if path is None else _head(lambda p=path: rules.read_head(p)), reason

    def select(self, start: int, stop: int) -> None:
        self.entries = select_listed(self.entries, start, stop)
        super().select(start, stop)

    def units(self):
        for name, path, reason in self.entries:
            yield skipped(name, reason) if path is None else partial(decode_events, name, path, self.decoding)


class SingleFileReader(Reader):
    def __init__(self, path: Path, label: str, limits: Limits, decoding: Decoding):
        self.label, self.path, self.decoding, self.count = label, path, decoding, 1

    def units(self):
        yield partial(decode_events, self.path.name, str(self.path), self.decoding)

    def peek(self):
        yield self.path.name, _head(lambda: rules.read_head(self.path)), None


class _ArchiveReader(Reader):
    """The listing shared by zip and tar: ``plan`` holds (name, where its bytes are, skip reason)."""

    def __init__(self, path: Path, label: str, limits: Limits, decoding: Decoding):
        self.label, self.path, self.limits, self.decoding = label, path, limits, decoding
        self.budget = ArchiveBudget(label, limits)
        self.plan: list[tuple[str, object, str | None]] = []
        self.passed_over: list[str] = []

    def _plan(self, m: rules.Member, where, head_fn) -> None:
        """Skip-list a refused member; keep a candidate image within the member limits; pass over the rest."""
        if m.is_dir:
            return
        if m.problem is not None:
            self.plan.append((m.name, None, m.problem))
        elif rules.kind_of(m.name, head_fn) == "image":
            self.budget.member(m.name, m.size, m.packed)
            self.plan.append((m.name, where, None))
        elif not rules.is_hidden(m.name):
            self.passed_over.append(m.name)

    def _finish(self) -> None:
        self.plan.sort(key=lambda p: p[0])
        self.count = sum(1 for p in self.plan if p[1] is not None)

    def select(self, start: int, stop: int) -> None:
        self.plan = select_listed(self.plan, start, stop)
        super().select(start, stop)

    def units(self):
        with self._open() as source:
            for name, where, reason in self.plan:
                yield skipped(name, reason) if where is None else partial(self._member, source, where, name)

    def peek(self):
        with self._open() as source:
            for name, where, reason in self.plan:
                yield name, None if where is None else _head(lambda w=where: self._head(source, w)), reason

    def _member(self, source, where, name: str):
        try:
            data = self._read(source, where, name)
        except TrustfidError:
            raise
        except Exception as e:  # CRC error, unsupported compression, truncated archive
            yield Skip(name, f"cannot read archive member: {first_line(e)}")
            return
        if isinstance(data, Skip):
            yield data
        else:
            yield from decode_events(name, data, self.decoding)


class ZipReader(_ArchiveReader):
    """Members are read in place (never extracted), in sorted name order."""

    def __init__(self, path: Path, label: str, limits: Limits, decoding: Decoding):
        super().__init__(path, label, limits, decoding)
        try:
            with zipfile.ZipFile(path) as zf:
                for i, m in enumerate(rules.zip_members(zf, self.budget)):
                    self._plan(m, i, partial(rules.zip_head, zf, m.info))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
            raise rules.unreadable_archive(label, "zip", e) from None
        self._finish()

    def _open(self):
        return zipfile.ZipFile(self.path)

    def _head(self, zf: zipfile.ZipFile, index: int) -> bytes:
        return rules.zip_head(zf, zf.infolist()[index])

    def _read(self, zf: zipfile.ZipFile, index: int, name: str) -> bytes:
        with zf.open(zf.infolist()[index]) as fp:
            return _bounded_read(fp, self.limits.max_member_bytes, self.label, name)


class TarReader(_ArchiveReader):
    """Plain or gzip-compressed tar, read in place in sorted name order.

    The listing pass records where each member's bytes start; reading then seeks straight to them.
    For .tar.gz that seek goes through IndexedGzip, so reading in name order (not archive order)
    never re-decompresses the archive from its start.
    """

    def __init__(self, path: Path, label: str, limits: Limits, decoding: Decoding):
        super().__init__(path, label, limits, decoding)
        magic = rules.read_head(path, 6)
        rules.check_tar_compression(magic, label)
        self.gz_index = GzIndex() if magic.startswith(b"\x1f\x8b") else None
        try:
            with self._open() as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in rules.tar_members(tf, self.budget):
                    self._plan(m, (m.info.offset_data, m.size), partial(rules.tar_head, tf, m.info))
        except TrustfidError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise rules.unreadable_archive(label, "tar", e) from None
        self.budget.whole(path.stat().st_size)
        self._finish()

    def _open(self):
        if self.gz_index is None:
            return open(self.path, "rb")
        return io.BufferedReader(IndexedGzip(self.path, self.gz_index), buffer_size=1 << 16)

    def _head(self, f, where: tuple[int, int]) -> bytes:
        offset, size = where
        f.seek(offset)
        return f.read(min(size, rules.HEAD_BYTES))

    def _read(self, f, where: tuple[int, int], name: str) -> bytes | Skip:
        offset, size = where
        f.seek(offset)
        data = f.read(size)  # size <= max_member_bytes was checked when listing; tar sizes are exact
        if len(data) < size:
            return Skip(name, f"archive member is truncated ({len(data)} of {size} bytes)")
        return data


def _head(read) -> bytes | None:
    """A candidate's first bytes; None for one that cannot even be peeked at, which then counts as an
    image (reading it says why it fails, as rules.kind_of does)."""
    try:
        return read()
    except Exception:
        return None


def _bounded_read(fp, limit: int, label: str, name: str) -> bytes:
    """Read a zip member but never more than ``limit`` + 1 bytes, whatever its header claimed."""
    parts, total = [], 0
    while total <= limit:
        chunk = fp.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    rules.check_member_size(label, name, total, limit)  # raises when the data is longer than its limit
    return b"".join(parts)
