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
    if kinds == {"image"} and len(staged.files) < rules.MIN_IMAGES and not any(
            rules.is_dicom(f.name, rules.read_head(f)) for f in staged.files):  # a DICOM file may hold frames
        with _about(what):
            raise rules.too_few_images("uploaded", "", len(staged.files), rules.MIN_IMAGES)
    return staged.engine_path()


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


def _screen(members, budget: ArchiveBudget, of_images: bool = True) -> None:
    """The upload's policy on an archive listing: one unsafe member (escaping path, link, device)
    refuses the whole archive, every declared size counts against the limits, and the members that
    may be images against the image limit; an archive of images (``of_images``: not a .npz) needs at
    least MIN_IMAGES of them."""
    images, frames, passed_over = 0, 0, []
    for m in members:
        if m.unsafe:
            raise InputError(f"archive '{budget.label}' holds '{m.name}', which is refused: {m.problem}. Repack it "
                             f"with regular files under relative paths only.", code="unsafe_archive")
        budget.member(m.name, m.size, m.packed)
        if m.is_dir or rules.is_hidden(m.name):
            continue
        if rules.kind_of(m.name) in ("image", "unknown"):
            images += 1
            frames += rules.suffix(m.name) in rules.DICOM_SUFFIXES  # may hold many images
        else:
            passed_over.append(m.name)
    rules.check_image_count(f"archive '{budget.label}'", images, budget.limits.max_images)
    if of_images and images < rules.MIN_IMAGES and not frames:
        raise rules.too_few_images("uploaded", f"archive '{budget.label}'", images, rules.MIN_IMAGES,
                                   passed_over=passed_over)


def _check_zip(path: Path, limits: Limits, of_images: bool = True) -> None:
    budget = ArchiveBudget(path.name, limits)
    try:
        with zipfile.ZipFile(path) as zf:
            members = rules.zip_members(zf, budget)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as e:
        raise rules.unreadable_archive(path.name, "zip", e) from None
    _screen(members, budget, of_images)


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
    size = header_size(path.name, path)
    if size is not None:
        rules.check_pixels(f"image '{path.name}' is", *size, limits.max_pixels)
