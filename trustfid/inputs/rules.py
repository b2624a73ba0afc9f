"""The input-safety rules, in one place: which files are images, which are passed over, which archive
members and arrays are refused, and the size limits every input is held to.

Three paths read what users send, and all three ask this module, so a set gives the same images
however it arrives: the engine's readers (this package), the service's upload checks
(app/ingest/screening.py) and the Python client's folder upload (trustfid/client.py, which packs
exactly the files the engine would read). What each path does with a verdict is its own: the engine lists an
unsafe archive member as skipped and reads the rest, the upload check refuses the whole archive; the
upload check screens every member an archive declares, the engine holds the members it reads to the
limits (and checks again while reading, since a header may lie).

Only the standard library is imported at module import time (numpy inside the .npy functions), so
the client needs neither numpy, Pillow nor torch.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

from ..errors import InputError, TooLargeError

# --- names and contents -----------------------------------------------------------------------

# Read by suffix. Members with other suffixes are sniffed (looks_like_image) unless the suffix says
# they are certainly not images (IGNORED_SUFFIXES): captions, metadata and notebooks often sit next
# to the images and are passed over unopened.
IMAGE_SUFFIXES = frozenset({
    ".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
    ".ppm", ".pgm", ".pbm", ".pnm", ".dcm", ".dicom",
})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IGNORED_SUFFIXES = frozenset({
    ".txt", ".json", ".jsonl", ".csv", ".tsv", ".md", ".rst", ".yaml", ".yml", ".xml", ".html", ".htm",
    ".log", ".ini", ".cfg", ".toml", ".py", ".ipynb", ".sh", ".npy", ".npz", ".pt", ".pth", ".ckpt",
    ".pkl", ".pickle", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".pdf", ".db", ".sqlite",
    ".mp4", ".avi", ".mov", ".mkv", ".mp3", ".wav",
})
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
ARRAY_SUFFIXES = (".npy", ".npz")
# The only Pillow plugins Image.open may try: guessing among all would hand untrusted bytes to rarely
# used parsers (and EPS to Ghostscript). "JPEG" also covers MPO camera files.
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "WEBP", "GIF", "PPM")
MIN_IMAGES = 2  # a set needs at least this many usable images (and a few hundred for a stable FID)
HEAD_BYTES = 132  # enough for every signature below (DICOM's marker sits at bytes 128..132)

ACCEPTED_INPUTS = (
    "a folder of images (searched recursively), a .zip, .tar, .tar.gz or .tgz archive of images, "
    "a .npy/.npz uint8 image array (N,H,W,C / N,C,H,W with C in 1, 3, 4, or N,H,W), a single image file "
    "(PNG, JPEG, TIFF, BMP, WebP, GIF, PNM or DICOM), or a numpy array / torch tensor of that shape "
    "(uint8, or float in [0, 1])"
)


def suffix(name: str) -> str:
    """'.png' for 'a/b.PNG'; '' for 'IM0001' and for dot-files."""
    base = name.rsplit("/", 1)[-1]
    dot = base.rfind(".")
    return base[dot:].lower() if dot > 0 else ""


def is_hidden(name: str) -> bool:
    """Dot-files and dot-folders (.DS_Store, .git/, .ipynb_checkpoints/, macOS '._x.png' resource forks)
    and the __MACOSX/ folder macOS puts into zips are never part of an image set."""
    return any(part.startswith(".") or part == "__MACOSX" for part in name.split("/") if part)


def looks_like_image(head: bytes) -> bool:
    """Magic numbers of the formats we read, for files whose name does not say (DICOM files from
    scanners often have no extension at all). BMP's 2-byte 'BM' is too weak to trust."""
    return (head[128:132] == b"DICM"
            or head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*"))
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"))


def is_dicom(name: str, head: bytes) -> bool:
    return suffix(name) in DICOM_SUFFIXES or head[128:132] == b"DICM"


# What the first bytes of a file with each image suffix must be; the suffixes left out (DICOM, whose
# preamble is optional) are taken on their name.
_SIGNATURES = {
    ".png": (b"\x89PNG\r\n\x1a\n",), ".gif": (b"GIF87a", b"GIF89a"), ".tif": (b"II*\x00", b"MM\x00*"),
    ".jpg": (b"\xff\xd8\xff",), ".bmp": (b"BM",), ".webp": (b"RIFF",),
    ".ppm": (b"P3", b"P6"), ".pgm": (b"P2", b"P5"), ".pbm": (b"P1", b"P4"),
}
_SIGNATURES.update({".jpeg": _SIGNATURES[".jpg"], ".jpe": _SIGNATURES[".jpg"], ".jfif": _SIGNATURES[".jpg"],
                    ".tiff": _SIGNATURES[".tif"], ".dib": _SIGNATURES[".bmp"],
                    ".pnm": _SIGNATURES[".ppm"] + _SIGNATURES[".pgm"] + _SIGNATURES[".pbm"]})


def not_an_image(name: str, head: bytes) -> str | None:
    """Why a candidate's first bytes say it cannot be an image (an empty file, a text file named
    .png), or None when they may be one: the set is checked this way before anything is decoded."""
    if not head:
        return "empty file"
    signatures = _SIGNATURES.get(suffix(name))
    if signatures is None or head.startswith(signatures) or looks_like_image(head):
        return None
    return f"not a {suffix(name)[1:].upper()} file (its first bytes say otherwise)"


def not_usable(name: str, head: bytes) -> str | None:
    """Why a listed candidate is not a usable image by its first bytes (``not_an_image``; a name without
    an image suffix must also look like an image), or None: the one rule of the engine's ``check_usable``
    and the service's upload screening."""
    return not_an_image(name, head) or (
        None if kind_of(name) == "image" or looks_like_image(head) else "not an image (its first bytes say otherwise)")


READ_FORMATS = "PNG, JPEG, TIFF, BMP, WebP, GIF, PNM and DICOM files and .npy/.npz arrays"


def too_few_images(set_name: str, label: str, n: int, needed: int, skipped=(), passed_over=(),
                   shown: int = 5) -> InputError:
    """The ``too_few_images`` error, naming what was found instead: ``skipped`` (name, reason) pairs
    and ``passed_over`` names (files that are not images)."""
    def names(items):
        items = list(items)
        more = f", and {len(items) - shown} more" if len(items) > shown else ""
        return ", ".join(items[:shown]) + more

    found = []
    if skipped:
        found.append(f"{plural(len(skipped), 'file')} skipped: "
                     + names(f"{name} ({reason})" for name, reason in skipped))
    if passed_over:
        found.append(f"{plural(len(passed_over), 'file')} skipped: {names(passed_over)} — not images "
                     f"(read are {READ_FORMATS})")
    where = f" in {label}" if label else ""
    return InputError(f"the {set_name} set has {plural(n, 'usable image')}{where}; at least {needed} are needed "
                      f"(and a few hundred for a stable FID)" + "".join(f". {f}" for f in found),
                      code="too_few_images")


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """A count with its noun, for messages and reports: '1 file', '3 files', '1,234 bytes', '2 passes'
    (``nouns`` where adding 's' is wrong)."""
    return f"{n:,} {noun if n == 1 else nouns or noun + 's'}"


def first_line(e: BaseException) -> str:
    """The exception's message on one line (pydicom puts the useful part on later lines), shortened."""
    text = " ".join(str(e).split())
    return (text or type(e).__name__)[:300]


def read_head(path, n: int = HEAD_BYTES) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def kind_of(name: str, head_fn: Callable[[], bytes] | None = None, *, member: bool = True) -> str | None:
    """What a file is to trustfid: 'archive', 'array', 'image', or None (never read).

    The name decides when it can. ``member`` (a file in a folder, an archive or an upload): hidden
    names and IGNORED_SUFFIXES are None, unopened. Not ``member`` (a file given as a whole set): any
    name without an archive, array or image suffix is sniffed. ``head_fn()`` returns the first
    HEAD_BYTES bytes and is called only when the name does not decide; without it such a name gives
    'unknown'. A file that cannot even be peeked at counts as an image: reading it says why it fails.
    """
    if member and is_hidden(name):
        return None
    low = name.lower()
    if low.endswith(ARCHIVE_SUFFIXES):
        return "archive"
    if low.endswith(ARRAY_SUFFIXES):
        return "array"
    if suffix(low) in IMAGE_SUFFIXES:
        return "image"
    if member and suffix(low) in IGNORED_SUFFIXES:
        return None
    if head_fn is None:
        return "unknown"
    try:
        head = head_fn()
    except Exception:
        return "image"
    return "image" if looks_like_image(head) else None


def list_folder(root: Path, label: str,
                passed_over: list[str] | None = None) -> list[tuple[str, str | None, str | None]]:
    """The candidate images under a folder, recursively, as sorted (relative name, path, None), plus
    (name, None, reason) for candidates that cannot be read. Symlinked files and folders are
    followed (a folder reached twice, e.g. through a link loop, is listed once); broken links,
    sockets and FIFOs with image names are listed with a reason. ``passed_over``, when given, gets
    the names of the other files (not images: captions, metadata), for messages."""
    entries: list[tuple[str, str | None, str | None]] = []

    def walk(folder: Path, prefix: str, seen: set) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                children = sorted(it, key=lambda e: e.name)  # deterministic: which link path wins is fixed
        except OSError as e:
            if not prefix:
                raise InputError(f"cannot list folder '{label}': {e.strerror or e}") from None
            entries.append((prefix.rstrip("/"), None, f"cannot list folder: {e.strerror or e}"))
            return
        for entry in children:
            name = prefix + entry.name
            if is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():  # follows symlinks
                    walk(Path(entry.path), name + "/", seen)
                elif entry.is_file():
                    if kind_of(name, lambda p=entry.path: read_head(p)) == "image":
                        entries.append((name, entry.path, None))
                    elif passed_over is not None:
                        passed_over.append(name)
                elif kind_of(name) == "image":
                    entries.append((name, None, "broken symbolic link" if entry.is_symlink()
                                    else "not a regular file (socket, FIFO or device)"))
            except OSError as e:
                entries.append((name, None, f"cannot access: {e.strerror or e}"))

    walk(root, "", set())
    return sorted(entries, key=lambda e: e[0])


# --- archive members --------------------------------------------------------------------------

class Member(NamedTuple):
    """One entry of a zip or tar listing and its verdict."""

    name: str            # without leading './'
    size: int            # uncompressed bytes, as the header declares
    packed: int | None   # compressed bytes (zip), None for tar
    is_dir: bool
    problem: str | None  # why it is never read, as shown in skip lists
    unsafe: bool         # the problem is a sign of a crafted archive (escaping path, link, device)
    info: object         # the ZipInfo / TarInfo


def normalize_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def unsafe_name(name: str) -> str | None:
    """Why a member name escapes the archive root (absolute, drive letter, '..'), or None. Nothing is
    ever extracted, but such a name is a sign of a crafted archive."""
    n = name.replace("\\", "/")
    if n.startswith("/") or (len(n) > 1 and n[1] == ":" and n[0].isalpha()):
        return "unsafe member name (absolute path); not read"
    if ".." in n.split("/"):
        return "unsafe member name (contains '..'); not read"
    return None


_LINK = "links inside archives are not followed"


def zip_member(info) -> Member:
    name = normalize_member(info.filename)
    problem, unsafe = unsafe_name(name), True
    if problem is None and stat.S_ISLNK(info.external_attr >> 16):
        problem = f"symbolic link ({_LINK})"
    if problem is None and info.flag_bits & 0x1:
        problem, unsafe = "encrypted member (password-protected zips are not supported)", False
    return Member(name, info.file_size, info.compress_size, info.is_dir(), problem, problem is not None and unsafe,
                  info)


def tar_member(m) -> Member:
    name = normalize_member(m.name)
    problem, unsafe = unsafe_name(name), True
    if problem is None and not m.isdir():
        if m.issym():
            problem = f"symbolic link ({_LINK})"
        elif m.islnk():
            problem = f"hard link ({_LINK})"
        elif m.isreg() and m.issparse():
            problem, unsafe = "sparse file entry (not supported)", False
        elif not m.isreg():
            problem = "not a regular file (device, FIFO or other special entry)"
    return Member(name, m.size, None, m.isdir(), problem, problem is not None and unsafe, m)


def unreadable_archive(label: str, kind: str, e: BaseException) -> InputError:
    return InputError(f"'{label}' is not a readable {kind} archive ({first_line(e)}); check the upload is complete.",
                      code="bad_archive")


def check_tar_compression(head: bytes, label: str) -> None:
    if head.startswith((b"BZh", b"\xfd7zXZ\x00")):
        raise InputError(f"'{label}': bzip2/xz-compressed tar archives are not supported; use .tar, .tar.gz or .zip.",
                         code="bad_archive")


def zip_head(zf, info) -> bytes:
    """A zip member's first HEAD_BYTES bytes (decompressing only those)."""
    with zf.open(info) as fp:
        return fp.read(HEAD_BYTES)


def tar_head(tf, info) -> bytes:
    """A tar member's first HEAD_BYTES bytes (in a stream-mode tar: only of the member just listed)."""
    return tf.extractfile(info).read(HEAD_BYTES)


def tar_members(tf, budget: ArchiveBudget) -> Iterator[Member]:
    """Every entry of an open tar in archive order, counted against the member limit as it comes.
    The TarInfos are not kept by the TarFile (the caller keeps what it needs)."""
    while (m := tf.next()) is not None:
        budget.entry()
        tf.members = []
        yield tar_member(m)


def zip_members(zf, budget: ArchiveBudget) -> list[Member]:
    infos = zf.infolist()
    budget.entries(len(infos))
    return [zip_member(info) for info in infos]


# --- limits -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Limits:
    """The limits one input is held to: the EngineSettings fields of the same names. None = unchecked.
    ``Limits()`` is what a direct ``open_images`` call holds a set to; ``DEFAULT_LIMITS`` is what the
    settings hold it to when no TRUSTFID_MAX_* variable says otherwise (trustfid/settings.py)."""

    max_pixels: int = 2**26
    max_images: int | None = None
    max_archive_members: int = 200_000
    max_member_bytes: int = 2**30
    max_expanded_bytes: int | None = None
    max_compression_ratio: float | None = None

    @classmethod
    def of(cls, settings) -> Limits:
        return cls(**{f.name: getattr(settings, f.name) for f in fields(cls)})


DEFAULT_LIMITS = Limits(max_images=200_000, max_expanded_bytes=8 * 2**30, max_compression_ratio=200.0)


def check_pixels(subject: str, w: int, h: int, max_pixels: int) -> None:
    """``subject``: "image 'a.png' is", or "x.npy: its images are"."""
    if w * h > max_pixels:
        raise TooLargeError(f"{subject} {w}x{h} = {w * h:,} pixels, over the limit of {max_pixels:,} pixels per "
                            f"image; downscale or raise the limit (TRUSTFID_MAX_PIXELS).")


def check_image_count(label: str, n: int | None, limit: int | None) -> None:
    """``n`` images (None: one more than the limit, found while reading) against the limit."""
    if limit is None or (n is not None and n <= limit):
        return
    held = (f"{n:,} images, over the limit of {limit:,}" if n is not None
            else f"more than {limit:,} images (counting every DICOM frame)")
    raise TooLargeError(f"{label} holds {held}; score a subset or raise the limit (TRUSTFID_MAX_IMAGES).")


def check_member_size(label: str, name: str, size: int, limit: int) -> None:
    if size > limit:
        raise TooLargeError(
            f"archive '{label}': member '{name}' is {size:,} bytes uncompressed, over the limit of {limit:,} bytes "
            f"per member; remove it or raise the limit (TRUSTFID_MAX_MEMBER_BYTES).", code="archive_bomb")


class ArchiveBudget:
    """Running totals of one archive's listing, held to the limits: raises at the first one passed."""

    def __init__(self, label: str, limits: Limits):
        self.label, self.limits = label, limits
        self.count = 0
        self.expanded = 0

    def _too_many(self, held: str) -> TooLargeError:
        return TooLargeError(f"archive '{self.label}' has {held}; split it or raise the limit "
                             f"(TRUSTFID_MAX_ARCHIVE_MEMBERS).", code="too_many_members")

    def entries(self, n: int) -> None:
        """The whole listing's size, known at once (zip)."""
        self.count = n
        if n > self.limits.max_archive_members:
            raise self._too_many(f"{n:,} entries, over the limit of {self.limits.max_archive_members:,}")

    def entry(self) -> None:
        """One more entry of a listing read as it comes (tar)."""
        self.count += 1
        if self.count > self.limits.max_archive_members:
            raise self._too_many(f"more than {self.limits.max_archive_members:,} entries")

    def member(self, name: str, size: int, packed: int | None = None) -> None:
        """A member's declared size: the per-member limit, its compression ratio, the running total."""
        lim = self.limits
        check_member_size(self.label, name, size, lim.max_member_bytes)
        if lim.max_compression_ratio and packed is not None:
            self._ratio(f"member '{name}'", size, packed)
        self.expanded += size
        if lim.max_expanded_bytes is not None and self.expanded > lim.max_expanded_bytes:
            raise TooLargeError(f"archive '{self.label}' expands to more than {lim.max_expanded_bytes:,} bytes; split "
                                f"it or raise the limit (TRUSTFID_MAX_EXPANDED_BYTES).", code="archive_bomb")

    def whole(self, archive_bytes: int) -> None:
        """The ratio of everything counted so far to the archive's size on disk (tar: members have none)."""
        if self.limits.max_compression_ratio:
            self._ratio("it", self.expanded, archive_bytes)

    def _ratio(self, what: str, size: int, packed: int) -> None:
        limit = self.limits.max_compression_ratio
        if size > 2**20 and size / max(packed, 1) > limit:
            raise TooLargeError(
                f"archive '{self.label}': {what} expands {size / max(packed, 1):,.0f}-fold, over the limit of "
                f"{limit:,.0f} (a zip bomb?); recompress it or raise the limit (TRUSTFID_MAX_COMPRESSION_RATIO).",
                code="archive_bomb")
