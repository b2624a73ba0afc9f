"""The public face of the readers: :func:`open_images` picks the reader for a source and returns an
:class:`ImageSet`, which knows its size up front (for progress) and decodes lazily, one image at a
time, in a deterministic order: folders and archives in sorted relative-path order, arrays in row
order. Unreadable files are skipped and recorded in ``ImageSet.skipped`` (or raise InputError when
strict); limits (pixels, images, archive members and sizes) raise TooLargeError.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from ..schemas import SkippedFile
from . import rules
from .arrays import MemoryArrayReader, NpyReader, NpzReader
from .containers import FolderReader, SingleFileReader, TarReader, ZipReader
from .events import Reader, Skip
from .intensity import Decoding
from .rules import ACCEPTED_INPUTS, Limits, check_image_count, kind_of, read_head


class SetShard(NamedTuple):
    """Candidates ``start`` .. ``stop - 1`` of an image source: one shard of a set, read on its own
    (a worker of a sharded job). Files the listing skip-lists go with the shard of the candidate after
    them, so the shards' skip lists, in shard order, are the whole set's."""

    source: object
    start: int
    stop: int


class ImageSet:
    """A lazily read, deterministic sequence of ``(name, image)`` pairs.

    ``image`` is an HxWx3 float32 array on the 0..255 scale. ``len()`` is the number of candidate
    entries known before decoding (files or array rows), for progress bars; a multi-frame DICOM file
    counts once there but yields one image per frame, and skipped files yield nothing, so the number
    of images actually produced is ``used`` after iterating. ``skipped`` lists what could not be read
    and why. Both are reset at the start of every iteration, so they describe the last pass.
    """

    def __init__(self, reader: Reader, decoding: Decoding, *, strict: bool, max_images: int | None):
        self._reader = reader
        self._decoding = decoding
        self.label: str = reader.label
        self.strict = strict
        self.max_images = max_images
        self.skipped: list[SkippedFile] = []
        self.used: int = 0

    def __len__(self) -> int:
        return self._reader.count

    def __repr__(self) -> str:
        return f"ImageSet({self.label!r}, candidates={len(self)}, used={self.used}, skipped={len(self.skipped)})"

    @property
    def intensity(self) -> dict[str, int]:
        """How many images of the last pass went through each intensity mapping (decode.py)."""
        return dict(sorted(self._decoding.used.items()))

    def take_stored(self) -> np.ndarray | None:
        """The stored intensities of the image just yielded, when they differ from it (data wider than 8
        bits) and the set was opened with ``stored=True``; None otherwise (intensity.Decoding)."""
        return self._decoding.take_stored()

    def units(self):
        """The reader's units of work (a file, an archive member, rows of an array), each decodable on
        its own: the parallel loader (loader.py) hands them to other processes."""
        return self._reader.units()

    def count_intensity(self, tally) -> None:
        """Add the intensity mappings other processes counted for this set (loader.py)."""
        self._decoding.used.update(tally)

    def check_usable(self, set_name: str, min_images: int) -> None:
        """Fail fast, before anything is decoded: InputError ``too_few_images`` unless at least
        ``min_images`` entries may be images by the listing and their first bytes (a DICOM file counts
        as enough: it may hold many frames). The message names what was found instead. Candidates
        are sniffed in order until enough are found, so a large set costs a few reads."""
        if min_images <= 0:
            return
        found, skipped = 0, []
        for name, head, reason in self._reader.peek():
            why = reason or (head is not None and rules.not_usable(name, head))
            if why:
                skipped.append((name, why))
                continue
            found += min_images if head is not None and rules.is_dicom(name, head) else 1
            if found >= min_images:
                return
        raise rules.too_few_images(set_name, self.label, found, min_images, skipped, self._reader.passed_over)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return self.images_of(self._reader.events())

    def images_of(self, events) -> Iterator[tuple[str, np.ndarray]]:
        """The images of an event stream (this reader's, or the parallel loader's rebuilt in the same
        order), held to the set's rules: skips recorded (or an error when strict), the image limit."""
        self.skipped = []
        self.used = 0
        self._decoding.used.clear()
        try:
            for event in events:
                if isinstance(event, Skip):
                    if self.strict:
                        raise InputError(
                            f"{self.label}: cannot use '{event.name}': {event.reason}. Fix or remove that file, "
                            f"or turn strict mode off to skip unreadable files and list them in the report.")
                    self.skipped.append(SkippedFile(name=event.name, reason=event.reason))
                    continue
                if self.max_images is not None and self.used >= self.max_images:
                    check_image_count(self.label, None, self.max_images)
                self.used += 1
                yield event
        finally:
            events.close()


def open_images(source, *, strict: bool = False, limits: Limits | None = None,
                window: tuple[float, float] | None = None, stored: bool = False, encoded: bool = False,
                **limit_fields) -> ImageSet:
    """Open an image source for lazy reading. See the package docstring and docs/IMAGES.md.

    ``limits`` (rules.Limits, by default ``Limits()``) holds the set to its limits; single fields may
    be given as keywords too (``max_images=100``). The listing (folder walk, archive directory, array
    header) happens here, so limits on the number of images and archive members, and declared member
    sizes, fail fast, before any decoding work. ``max_expanded_bytes`` and ``max_compression_ratio``
    (None: unchecked) hold the candidate members of an archive to the same limits as an upload.
    ``window`` (LOW, HIGH) maps images wider than 8 bits from that fixed range instead of each image's
    own min..max (intensity.py). ``stored``: keep each image's stored intensities for ``take_stored``
    (the radiomics of FRD run on them); with ``encoded`` too, JPEG files and images with an alpha channel are
    kept as their encoded file instead (intensity.EncodedImage).

    ``source`` may be a :class:`SetShard`: only candidates start..stop-1 of its set are read (the
    image-count limit still applies to the whole set) and ``len()`` is the shard's number of candidates.
    """
    limits = replace(limits or Limits(), **limit_fields)
    decoding = Decoding(max_pixels=limits.max_pixels, window=tuple(window) if window is not None else None,
                        keep_stored=stored, encoded_jpeg_alpha=encoded)
    shard = source if isinstance(source, SetShard) else None
    reader = _make_reader(shard.source if shard else source, limits, decoding)
    check_image_count(reader.label, reader.count, limits.max_images)
    if shard is not None:
        stop = min(shard.stop, reader.count)
        if not 0 <= shard.start <= stop:
            raise InputError(f"{reader.label}: no candidates {shard.start}..{shard.stop - 1} in a set of "
                             f"{reader.count}")
        reader.select(shard.start, stop)
    return ImageSet(reader, decoding, strict=strict, max_images=limits.max_images)


def _make_reader(source, limits: Limits, decoding: Decoding) -> Reader:
    if isinstance(source, np.ndarray):
        return MemoryArrayReader(source, "array", limits, decoding)
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(source, torch.Tensor):
        t = source.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        return MemoryArrayReader(t.cpu().numpy(), "tensor", limits, decoding)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read images from a {type(source).__name__}; accepted: {ACCEPTED_INPUTS}.")

    path = Path(source)
    label = str(source)
    if not path.exists():
        raise InputError(f"'{label}' does not exist; give {ACCEPTED_INPUTS}.")
    if path.is_dir():
        return FolderReader(path, label, limits, decoding)
    if not path.is_file():
        raise InputError(f"'{label}' is not a regular file or folder; give {ACCEPTED_INPUTS}.")
    lower = path.name.lower()
    kind = kind_of(path.name, lambda: read_head(path), member=False)
    if kind == "archive":
        return (ZipReader if lower.endswith(".zip") else TarReader)(path, label, limits, decoding)
    if kind == "array":
        return (NpzReader if lower.endswith(".npz") else NpyReader)(path, label, limits, decoding)
    if kind == "image":
        return SingleFileReader(path, label, limits, decoding)
    raise InputError(f"'{label}' is not a supported input (unknown file type '{path.suffix or path.name}'); "
                     f"give {ACCEPTED_INPUTS}.")
