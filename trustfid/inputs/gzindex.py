"""Random access into a .gz file: a seekable, read-only view of its decompressed bytes.

The tar reader (containers.py) lists a .tar.gz once and then reads its members in sorted-name order,
not archive order. gzip.GzipFile can seek, but every backward seek restarts decompression from byte 0,
which would cost O(members x archive). IndexedGzip instead resumes from the nearest of a bounded set of
decompressor snapshots (GzIndex) taken during the listing pass.

Why not the indexed-gzip package from PyPI: it is a compiled extension whose index grows with the
archive at a fixed spacing (one 32 KiB window per point), while GzIndex thins its snapshots so its
memory stays bounded (~36 MiB) however large the upload; this module is small, pure Python and tested
(tests/test_images.py), and the engine gains no native dependency.
"""

from __future__ import annotations

import bisect
import io
import zlib

__all__ = ["GzIndex", "IndexedGzip"]


class GzIndex:
    """Checkpoints into one gzip stream: (output offset, input offset, zlib state, pending input).

    gzip.GzipFile can seek, but every backward seek restarts decompression from byte 0, so reading the
    members of a .tar.gz in sorted-name order (not archive order, which for `tar czf dir` follows the
    file system's directory order) would cost O(members x archive). A zlib Decompress object can be
    copied, so the listing pass snapshots it every ``spacing`` bytes of output and reading later
    resumes from the nearest snapshot: a member then costs at most ``spacing`` bytes of extra
    decompression. Each snapshot holds ~35 KiB (zlib's 32 KiB window plus state); when there would be
    more than ``max_points`` of them, every other one is dropped and the spacing doubles, so memory
    stays under ~36 MiB however large the archive (256 KiB spacing up to 256 MiB of tar).
    """

    def __init__(self, spacing: int = 256 << 10, max_points: int = 1024):
        self.spacing, self.max_points = spacing, max_points
        self.out_offsets: list[int] = []
        self.states: list[tuple[int, object, bytes]] = []

    def add(self, out_offset: int, in_offset: int, decompressor, pending: bytes) -> None:
        if self.out_offsets and out_offset < self.out_offsets[-1] + self.spacing:
            return
        self.out_offsets.append(out_offset)
        self.states.append((in_offset, decompressor.copy(), pending))
        if len(self.out_offsets) > self.max_points:
            self.out_offsets, self.states = self.out_offsets[::2], self.states[::2]
            self.spacing *= 2

    def before(self, out_offset: int):
        i = bisect.bisect_right(self.out_offsets, out_offset) - 1
        return None if i < 0 else (self.out_offsets[i], *self.states[i])


class IndexedGzip(io.RawIOBase):
    """Read-only, seekable view of the decompressed bytes of a .gz file (concatenated members too)."""

    _IN = 1 << 16
    _OUT = 1 << 18

    def __init__(self, path, index: GzIndex):
        self._f = open(path, "rb")
        self._index = index
        self._pos = 0
        self._restart()

    def _restart(self) -> None:
        self._f.seek(0)
        self._set_state(0, zlib.decompressobj(31), b"")

    def _set_state(self, out_offset: int, decompressor, pending: bytes) -> None:
        self._d, self._pending, self._out = decompressor, pending, out_offset
        self._buf, self._buf_start, self._eof = b"", out_offset, False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._pos
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("seeking from the end of a gzip stream is not supported")
        self._pos = max(0, offset)
        return self._pos

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()

    def _produce(self) -> bytes:
        """The next piece of output (at most _OUT bytes); b'' at the end of the stream."""
        while not self._eof:
            data = self._pending or self._f.read(self._IN)
            if not data:
                if not self._d.eof:
                    raise EOFError("the gzip stream is truncated")
                self._eof = True
                break
            out = self._d.decompress(data, self._OUT)
            self._pending = self._d.unconsumed_tail
            if self._d.eof:  # end of one gzip member: another may follow (after optional zero padding)
                rest = (self._d.unused_data + self._pending) or self._f.read(self._IN)
                rest = rest.lstrip(b"\x00")
                if rest[:2] == b"\x1f\x8b":
                    self._d, self._pending = zlib.decompressobj(31), rest
                else:
                    self._pending, self._eof = b"", True
            if out:
                self._out += len(out)
                if not self._eof:
                    self._index.add(self._out, self._f.tell(), self._d, self._pending)
                return out
        return b""

    def _position(self, pos: int) -> None:
        """Make self._buf contain ``pos`` (or be empty at the end of the stream)."""
        cp = self._index.before(pos)
        if cp is not None and (pos < self._buf_start or cp[0] > self._out):
            out_offset, in_offset, state, pending = cp
            self._f.seek(in_offset)
            self._set_state(out_offset, state.copy(), pending)
        elif pos < self._buf_start:
            self._restart()
        while self._out <= pos:
            out = self._produce()
            if not out:
                self._buf, self._buf_start = b"", self._out
                return
            self._buf, self._buf_start = out, self._out - len(out)

    def readinto(self, b) -> int:
        if len(b) == 0:
            return 0
        pos = self._pos
        if not (self._buf_start <= pos < self._buf_start + len(self._buf)):
            self._position(pos)
            if not (self._buf_start <= pos < self._buf_start + len(self._buf)):
                return 0
        k = pos - self._buf_start
        n = min(len(b), len(self._buf) - k)
        b[:n] = memoryview(self._buf)[k:k + n]
        self._pos += n
        return n
