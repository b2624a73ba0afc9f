"""DICOM files through pydicom, one image per frame, on the shared 0..255 scale:

Modality LUT / Rescale Slope+Intercept, then the VOI LUT or the first Window Center/Width if present
(the display the modality chose), whose output range is mapped to [0, 255]; without VOI, 8-bit-or-
narrower unsigned data is scaled to full range (x * 255 / (2**BitsStored - 1), the identity for 8 bits)
and anything else is min-max mapped. MONOCHROME1 is inverted (255 - x). Colour: YBR is converted to
RGB by pydicom, 8-bit stays as is, wider data is min-max mapped, PALETTE COLOR goes through its LUT.
Multi-frame files give one image per frame, named ``file.dcm#frame3`` (1-based, like DICOM frame
numbers). A compressed transfer syntax without an installed decoder is skipped with what to install.

With a fixed intensity window (``Decoding.window``) grayscale frames are mapped from that window of the
modality values (after Rescale Slope/Intercept: Hounsfield units for CT) instead of the file's own VOI:
one window for every file of a comparison, whatever each file's display settings say.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np

from ..errors import TrustfidError
from .events import Event, Skip, Unreadable
from .intensity import EIGHT_BIT, Decoding, to_rgb
from .rules import check_pixels, first_line

# What to pip install for compressed transfer syntaxes pydicom cannot decode on its own.
_JPEG, _J2K = "pylibjpeg pylibjpeg-libjpeg", "pylibjpeg pylibjpeg-openjpeg"
_DECODER_HINTS = {
    **{f"1.2.840.10008.1.2.4.{n}": _JPEG for n in (50, 51, 57, 70, 80, 81)},
    **{f"1.2.840.10008.1.2.4.{n}": _J2K for n in (90, 91, 201, 202, 203)},
}


def _install_hint(uid: str) -> str:
    pkgs = _DECODER_HINTS.get(str(uid))
    return f"pip install {pkgs} (or pip install python-gdcm)" if pkgs else "pip install python-gdcm"


# elements every image file has: a file without the 'DICM' prefix that shows none of them is not DICOM at all
HEADER = ("SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "PixelData", "StudyInstanceUID")
VOI = "DICOM: the file's VOI LUT or window"
BITS = "DICOM: stored values scaled by bits stored"
STRETCH = "DICOM: each frame's own min..max to 0..255"
PALETTE = "DICOM: palette colour"


def dicom_events(name: str, blob: bytes | str, decoding: Decoding) -> Iterator[Event]:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import get_decoder, iter_pixels
    from pydicom.pixels.utils import get_nr_frames

    def read(force: bool):
        return pydicom.dcmread(io.BytesIO(blob) if isinstance(blob, bytes) else blob, force=force)

    try:
        ds = read(False)
    except InvalidDicomError:
        try:
            ds = read(True)  # a .dcm file without the 128-byte preamble / 'DICM' prefix
        except Exception:
            ds = None
        if ds is None or not any(k in ds for k in HEADER):
            raise Unreadable("not a DICOM file: it has no 'DICM' prefix and no DICOM header could be read from it "
                             "(another format or a damaged file named .dcm?)") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        meta = getattr(ds, "file_meta", None)
        kind = meta.get("MediaStorageSOPClassUID") if meta is not None else None  # e.g. CT Image Storage
        if "Rows" in ds or (kind is not None and "Image Storage" in kind.name):
            raise Unreadable(f"DICOM file ends before its pixel data: truncated or damaged (it is a "
                             f"{kind.name if kind is not None else 'DICOM image'}, whose pixels are missing)")
        raise Unreadable("DICOM file has no pixel data (e.g. a structured report, RT plan or DICOMDIR)")
    rows, cols = int(ds.Rows), int(ds.Columns)
    check_pixels(f"image '{name}' is", cols, rows, decoding.max_pixels)

    ts = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    if ts is not None and ts.is_compressed:
        try:
            decoder = get_decoder(ts)
        except NotImplementedError:
            raise Unreadable(f"compressed transfer syntax '{ts.name}' ({ts}) has no pixel decoder in pydicom") from None
        if not decoder.is_available:
            raise Unreadable(f"compressed transfer syntax '{ts.name}' ({ts}) needs a decoder that is not installed: "
                             f"{_install_hint(ts)}")

    n_frames = get_nr_frames(ds, warn=False)
    frames = iter_pixels(ds)  # one frame at a time; YBR is converted to RGB
    for i in range(n_frames):
        frame_name = f"{name}#frame{i + 1}" if n_frames > 1 else name
        try:
            frame = next(frames)
            image = _frame_to_rgb(frame, ds, decoding)
        except StopIteration:
            yield Skip(frame_name, f"DICOM pixel data ends after {i} of {n_frames} frames")
            return
        except (TrustfidError, MemoryError):
            raise
        except Exception as e:
            reason = first_line(e)
            if ts is not None and ts.is_compressed:
                reason = (f"cannot decode compressed transfer syntax '{ts.name}' ({ts}) with the installed decoders "
                          f"({reason}); installing another decoder may help: {_install_hint(ts)}")
            elif "less than expected" in reason:  # pydicom's words for a file cut short
                reason = f"truncated DICOM file: its pixel data is shorter than its header says ({reason})"
            else:
                reason = f"unreadable DICOM pixel data ({reason})"
            if n_frames > 1 and i + 1 < n_frames:
                reason += f"; frames {i + 1}-{n_frames} not read"
            yield Skip(frame_name, reason)
            return
        yield frame_name, image


def _frame_to_rgb(frame: np.ndarray, ds, decoding: Decoding) -> np.ndarray:
    """One decoded frame -> HxWx3 float32 on 0..255 (the rule is in the module docstring)."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    decoding.keep(frame)  # stored intensities: the frame, or (below) its modality values
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(frame, ds)
        depth = int(ds.RedPaletteColorLookupTableDescriptor[2])
        decoding.note(PALETTE)
        return to_rgb(rgb.astype(np.float64) * (255.0 / (2**depth - 1)))
    if frame.ndim == 3:  # RGB (pydicom already converted YBR)
        if frame.dtype.kind == "f":
            return to_rgb(decoding.floats(frame))
        if bits <= 8 and frame.dtype.kind == "u":
            decoding.note(EIGHT_BIT)
            return to_rgb(frame.astype(np.float32))
        return to_rgb(decoding.wide(frame, STRETCH))

    x = apply_modality_lut(frame, ds)
    decoding.keep(x)
    y = None if decoding.window is not None else _voi(x, ds)
    if y is not None:
        decoding.note(VOI)
    elif decoding.window is not None or frame.dtype.kind == "f":
        y = decoding.wide(x, STRETCH) if frame.dtype.kind != "f" else decoding.floats(x)
    elif not _rescaled(ds) and bits <= 8 and frame.dtype.kind == "u":
        decoding.note(BITS)
        y = frame.astype(np.float32) * np.float32(255.0 / (2**bits - 1))
    else:
        y = decoding.wide(x, STRETCH)
    if photometric == "MONOCHROME1":  # lowest value is displayed white
        y = np.float32(255) - y
    return to_rgb(y)


def _rescaled(ds) -> bool:
    return "ModalityLUTSequence" in ds or (
        float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0)


def _voi(x: np.ndarray, ds) -> np.ndarray | None:
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
