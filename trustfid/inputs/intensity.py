"""The intensity mapping every reader shares: how an image's stored values reach the network's 0..255
scale (the rule is also in docs/IMAGES.md; a field once published keeps its meaning):

* 8-bit data (PNG, JPEG, BMP, WebP, GIF, 8-bit TIFF, palette, CMYK, grayscale, RGBA...) comes out as
  exactly ``np.asarray(PIL.Image.open(f).convert("RGB"))``: the numbers pytorch-fid and clean-fid see,
  so FID on ordinary images matches theirs. Grayscale is replicated to 3 channels; alpha is dropped,
  not composited (that is what ``convert("RGB")`` does).
* Integer data wider than 8 bits (16-bit PNG/TIFF, PIL modes I;16*, I, 16-bit colour read through
  OpenCV) is mapped linearly from that image's own [min, max] to [0, 255] as floats, never clipped.
  A constant image maps to 0. PIL's ``convert("RGB")`` would instead saturate every value above 255
  (on a 12-bit MRI slice nearly every pixel turns white).
* Float data (PIL mode F, float TIFF) whose values all lie in [0, 1] is multiplied by 255; any other
  float image is min-max mapped like wide integers. NaN or infinite values make the file unreadable.
* With a fixed intensity window [LOW, HIGH] (``ScoreOptions.window``), every image wider than 8 bits
  or float is mapped linearly from [LOW, HIGH] to [0, 255] and clipped there instead: the same stored
  value gives the same network input in every image, as radiology compares images. 8-bit data is
  never windowed.

``Decoding`` carries the pixel limit and the window for one set, and tallies which mapping each image
went through, so the report can say it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .events import Unreadable

EIGHT_BIT = "8-bit: as stored"
STRETCH = "wider than 8 bits: each image's own min..max to 0..255"
FLOAT_01 = "float in [0, 1]: times 255"
FLOAT_STRETCH = "float outside [0, 1]: each image's own min..max to 0..255"


@dataclass(frozen=True)
class EncodedImage:
    """An image file as stored (bytes, or its path) with its name: what frd-score's SimpleITK read is given."""

    name: str
    data: bytes | str


@dataclass
class Decoding:
    """How one set's files are decoded: the pixel limit, the fixed intensity window for data wider than
    8 bits (None: each image's own min..max), and a tally of the intensity mapping each image got."""

    max_pixels: int
    window: tuple[float, float] | None = None
    used: Counter = field(default_factory=Counter)
    # Keep the stored intensities of data wider than 8 bits (16-bit, float, DICOM modality values) beside
    # the 0..255 image: the radiomics (FRD) run on them. 8-bit images are their own stored intensities.
    keep_stored: bool = False
    stored: np.ndarray | EncodedImage | None = None
    # with keep_stored: JPEG files and images with alpha are kept as their encoded file, for the radiomics
    # to read with SimpleITK as frd-score does (ScoreOptions.frd_reading "frd-score")
    encoded_jpeg_alpha: bool = False

    def note(self, mapping: str) -> None:
        self.used[mapping] += 1

    def keep(self, x: np.ndarray | EncodedImage) -> None:
        """``x`` holds the stored intensities of the image being decoded (kept when ``keep_stored``)."""
        if self.keep_stored:
            self.stored = x

    def take_stored(self) -> np.ndarray | EncodedImage | None:
        """The last decoded image's stored intensities (None: 8-bit, the image itself), then forgets them."""
        stored, self.stored = self.stored, None
        return stored

    def wide(self, x: np.ndarray, stretch: str = STRETCH) -> np.ndarray:
        """Data wider than 8 bits (or float) onto 0..255: the fixed window, else the image's own range."""
        self.keep(x)
        if self.window is None:
            self.note(stretch)
            return minmax(x)
        lo, hi = self.window
        self.note(f"fixed window [{lo:g}, {hi:g}] to 0..255, clipped")
        return window_map(x, lo, hi)

    def floats(self, x: np.ndarray) -> np.ndarray:
        if not np.isfinite(x).all():
            raise Unreadable("image holds NaN or infinite values")
        if self.window is None and x.min() >= 0 and x.max() <= 1:
            self.keep(x)
            self.note(FLOAT_01)
            return x.astype(np.float32) * np.float32(255)
        return self.wide(x, FLOAT_STRETCH)



# --- intensity mapping ------------------------------------------------------------------------

ROWS = 256  # rows mapped at a time: the float64 working copy stays small whatever the image size


def minmax(x: np.ndarray) -> np.ndarray:
    """Linear map of this image's [min, max] onto [0, 255] (computed in float64, stored as float32);
    a constant image maps to 0. Works through the rows in blocks, so memory is the float32 result
    plus a small block, not several float64 copies of the whole image."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise Unreadable("image holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    out = np.empty(x.shape, np.float32)
    if hi <= lo:
        out.fill(0)
        return out
    scale = 255.0 / (hi - lo)
    for r in range(0, x.shape[0], ROWS):
        out[r:r + ROWS] = (x[r:r + ROWS].astype(np.float64) - lo) * scale
    return out


def window_map(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] onto [0, 255], clipped (float64 arithmetic in row blocks, float32 out)."""
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise Unreadable("image holds NaN or infinite values")
    out = np.empty(x.shape, np.float32)
    scale = 255.0 / (hi - lo)
    for r in range(0, x.shape[0], ROWS):
        out[r:r + ROWS] = np.clip((x[r:r + ROWS].astype(np.float64) - lo) * scale, 0.0, 255.0)
    return out


def to_rgb(x: np.ndarray) -> np.ndarray:
    """HxW or HxWxC (C = 1, 3, 4) -> contiguous HxWx3 float32; gray replicated, alpha dropped. Callers
    drop alpha before mapping intensities (see _decode_opencv), so no channel is converted twice."""
    if x.ndim == 3 and x.shape[2] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[:, :, None], 3, axis=2)
    elif x.shape[2] == 4:
        x = x[..., :3]
    return np.ascontiguousarray(x, dtype=np.float32)
