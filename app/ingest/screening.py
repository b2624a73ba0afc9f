"""Upload screening: the shared input rules (trustfid.inputs.rules / array_rules, the same the engine's
readers and the client apply) held against an uploaded or fetched file before it is queued. The
engine would skip or fail later; here an upload is refused early: an archive with one unsafe member,
more images or bytes than the limits (``Limits``) allow, an image over the pixel limit by its header.
Nothing here imports torch; Pillow only reads image headers."""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from trustfid.errors import InputError, TrustfidError, UnsupportedTypeError
from trustfid.inputs import rules
from trustfid.inputs.array_rules import check_array_file
from trustfid.inputs.decode import header_size
from trustfid.inputs.rules import ArchiveBudget, Limits


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


def check_set(staged: StagedSet, limits: Limits, what: str) -> Path:
    """Validate a staged set and return the path the engine should read."""
    if not staged.files:
        raise InputError(f"{what}: no files uploaded")
    kinds = {staged.kind(f) for f in staged.files}
    if len(staged.files) > 1 and kinds != {"image"}:
        raise InputError(f"{what}: send either image files, or exactly one archive or array file")
    with _about(what):
        rules.check_image_count("the upload", len(staged.files), limits.max_images)
    for f in staged.files:
        check_file(f, limits, what, staged.kind(f))
    if kinds == {"image"}:
        usable = _Usable()
        for f in staged.files:
            usable.add(f.name, lambda f=f: rules.read_head(f))
        if not usable.enough:
            with _about(what):
                raise rules.too_few_images("uploaded", "", usable.found, rules.MIN_IMAGES, usable.skipped)
    return staged.engine_path()


class _Usable:
    """The engine's rule for which candidate images count (ImageSet.check_usable), applied as candidates
    come: one whose first bytes do not match its format is skipped with the reason. Heads are read only
    until ``needed`` usable images are found (or a DICOM file, which may hold frames)."""

    def __init__(self, needed: int = rules.MIN_IMAGES):
        self.needed, self.found, self.skipped = needed, 0, []

    @property
    def enough(self) -> bool:
        return self.found >= self.needed

    def add(self, name: str, head_fn, problem: str | None = None) -> None:
        if self.enough:
            return
        why = problem
        if why is None:
            try:
                head = head_fn()
            except Exception as e:  # a member the archive cannot give back (CRC, truncated): the engine skips it
                why = f"cannot read archive member: {rules.first_line(e)}"
            else:
                why = rules.not_usable(name, head)
        if why:
            self.skipped.append((name, why))
        else:
            self.found += self.needed if rules.is_dicom(name, head) else 1


def check_file(path: Path, limits: Limits, what: str, kind: str | None = None) -> None:
    """The shared rules for one uploaded or fetched file, before it is queued (the engine checks again)."""
    kind = kind or file_kind(path)
    if kind is None:
        raise not_read(what, path.name)
    with _about(what):
        if kind == "archive":
            (_check_zip if path.name.lower().endswith(".zip") else _check_tar)(path, limits)
        elif kind == "array":
            if path.name.lower().endswith(".npz"):
                _check_zip(path, limits, of_images=False)
            check_array_file(path, limits)
        else:
            _check_image(path, limits)


def _screen(members, budget: ArchiveBudget, of_images: bool = True, archive_bytes: int | None = None) -> None:
    """The upload's policy on an archive listing, in a fixed order. First the sizes: one unsafe member
    (escaping path, link, device) refuses the whole archive, every declared size counts against the
    limits, then the whole archive's expansion ratio (``archive_bytes``: a tar's size on disk; its
    members have no packed size). Then the first bytes: a candidate image whose first bytes do not match
    its format is not usable, as in a folder. Then the counts: the image limit, and an archive of images
    (``of_images``: not a .npz) needs at least MIN_IMAGES usable ones. ``members``: (Member, head_fn)
    pairs; a head is read before the next pair is asked for (a tar is read as a stream)."""
    candidates, usable, passed_over = 0, _Usable(), []
    for m, head_fn in members:
        if m.unsafe:
            raise InputError(f"archive '{budget.label}' holds '{m.name}', which is refused: {m.problem}. Repack it "
                             f"with regular files under relative paths only.", code="unsafe_archive")
        budget.member(m.name, m.size, m.packed)
        if m.is_dir or rules.is_hidden(m.name):
            continue
        if rules.kind_of(m.name) in ("image", "unknown"):
            candidates += 1
            if of_images:
                usable.add(m.name, head_fn, m.problem)
        else:
            passed_over.append(m.name)
    if archive_bytes is not None:
        budget.whole(archive_bytes)
    rules.check_image_count(f"archive '{budget.label}'", candidates, budget.limits.max_images)
    if of_images and not usable.enough:
        raise rules.too_few_images("uploaded", f"archive '{budget.label}'", usable.found, rules.MIN_IMAGES,
                                   usable.skipped, passed_over)


def _check_zip(path: Path, limits: Limits, of_images: bool = True) -> None:
    budget = ArchiveBudget(path.name, limits)
    try:
        with zipfile.ZipFile(path) as zf:
            members = rules.zip_members(zf, budget)
            _screen(((m, partial(rules.zip_head, zf, m.info)) for m in members), budget, of_images)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise rules.unreadable_archive(path.name, "zip", e) from None


def _check_tar(path: Path, limits: Limits) -> None:
    budget = ArchiveBudget(path.name, limits)
    rules.check_tar_compression(rules.read_head(path, 6), path.name)
    try:
        # Stream mode: headers are read in order, member data skipped but for a few members' first
        # bytes; nothing is held in memory.
        with tarfile.open(path, mode="r|*") as tf:
            _screen(((m, partial(rules.tar_head, tf, m.info)) for m in rules.tar_members(tf, budget)), budget,
                    archive_bytes=path.stat().st_size)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise rules.unreadable_archive(path.name, "tar", e) from None


def _check_image(path: Path, limits: Limits) -> None:
    """Pixels per image from the header (the engine checks again when decoding)."""
    size = header_size(path.name, path)
    if size is not None:
        rules.check_pixels(f"image '{path.name}' is", *size, limits.max_pixels)
