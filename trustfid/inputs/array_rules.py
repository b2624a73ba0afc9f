"""The input-safety rules for image arrays (.npy, .npz, numpy arrays and torch tensors): headers read
without ever unpickling, the accepted dtypes and layouts, and the pixel and image limits.

The companion of rules.py, and asked by the same paths: the engine's array readers (arrays.py) and
the service's upload check (app/ingest/screening.py). Only the standard library is imported at module
import time; numpy is imported inside the functions that parse .npy headers.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..errors import InputError, TrustfidError
from .rules import Limits, check_image_count, check_pixels, first_line

CHANNELS = (1, 3, 4)


def npy_header(fp) -> tuple[tuple, bool, object]:
    """(shape, fortran_order, dtype) of the .npy stream ``fp``, leaving it at the start of the data.
    Only the header is parsed: an object array's pickled payload is never touched."""
    import numpy as np

    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def check_dtype(dtype, label: str) -> None:
    """uint8, or float (values in [0, 1], checked when read). Object dtypes (pickles) are refused."""
    if dtype.hasobject:
        raise InputError(f"{label}: the array holds Python objects; only numeric image arrays are read (pickled "
                         f"data is never loaded).", code="unsupported_type", status=415)
    if dtype.kind != "f" and not (dtype.kind == "u" and dtype.itemsize == 1):
        raise InputError(f"{label}: image arrays must be uint8 (0..255) or float in [0, 1]; got {dtype}. Convert "
                         f"with .astype(np.uint8) or scale to [0, 1].")


def array_layout(shape: tuple, label: str) -> str:
    """'NHWC', 'NCHW' or 'NHW'. NHWC wins when both readings are possible (e.g. (N, 3, 3, 3))."""
    shape = tuple(shape)
    if len(shape) == 4:
        if shape[3] in CHANNELS:
            layout = "NHWC"
        elif shape[1] in CHANNELS:
            layout = "NCHW"
        else:
            raise InputError(f"{label}: cannot tell the channel axis of an array of shape {shape}; use "
                             f"(N, H, W, C) or (N, C, H, W) with C = 1, 3 or 4.")
    elif len(shape) == 3:
        if shape[2] in CHANNELS:
            raise InputError(f"{label}: shape {shape} looks like one (H, W, C) image; pass a batch, e.g. "
                             f"array[None] for shape (1, H, W, C). 3-d arrays are read as (N, H, W) grayscale.")
        layout = "NHW"
    else:
        hint = " (one grayscale image? use array[None])" if len(shape) == 2 else ""
        raise InputError(f"{label}: an image array must have shape (N, H, W, C), (N, C, H, W) or (N, H, W); got "
                         f"{shape}{hint}.")
    h, w = image_hw(shape, layout)
    if h < 1 or w < 1:
        raise InputError(f"{label}: images of shape {shape} have no pixels.")
    return layout


def image_hw(shape: tuple, layout: str) -> tuple[int, int]:
    return (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])


def check_image_array(shape: tuple, dtype, label: str, limits: Limits) -> str:
    """Every rule for an array of images, from its header alone; returns its layout."""
    check_dtype(dtype, label)
    layout = array_layout(shape, label)
    h, w = image_hw(shape, layout)
    check_pixels(f"{label}: its images are", w, h, limits.max_pixels)
    check_image_count(label, shape[0], limits.max_images)
    return layout


def npz_image_key(keys: list[str], label: str) -> str:
    """The array of a .npz that holds the images: the one named 'images', or the only one."""
    if "images" in keys:
        return "images"
    if len(keys) == 1:
        return keys[0]
    raise InputError(
        f"'{label}' holds {len(keys)} arrays ({', '.join(sorted(keys)[:10])}); store the images under the key "
        f"'images' (np.savez(f, images=x)) or save a single array." if keys else f"'{label}' holds no arrays.")


def npz_keys(zf: zipfile.ZipFile) -> list[str]:
    return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]


def is_stats_npz(keys: list[str]) -> bool:
    """A .npz with an array 'mu' is saved statistics (ours, pytorch-fid's, clean-fid's), not images
    (the rule trustfid.pipeline applies before reading a set)."""
    return "mu" in keys


def unreadable(label: str, kind: str, e: BaseException) -> InputError:
    return InputError(f"'{label}' is not a readable {kind} file ({first_line(e)}).", code="bad_array")


def check_array_file(path: Path, limits: Limits, label: str | None = None) -> None:
    """Screen a .npy/.npz from its headers alone: no array anywhere in it may hold Python objects, and
    the image array (not a statistics .npz) must pass check_image_array."""
    label = label or path.name
    is_npz = path.name.lower().endswith(".npz")
    try:
        if is_npz:
            with zipfile.ZipFile(path) as zf:
                keys = npz_keys(zf)
                headers = {}
                for key in keys:
                    with zf.open(key + ".npy") as fp:
                        headers[key] = npy_header(fp)
        else:
            with open(path, "rb") as fp:
                keys, headers = [None], {None: npy_header(fp)}
    except TrustfidError:
        raise
    except Exception as e:  # numpy raises ValueError for bad magic, EOFError, ...; zipfile BadZipFile
        raise unreadable(label, ".npz" if is_npz else ".npy", e) from None
    for key, (_shape, _fortran, dtype) in headers.items():
        if dtype.hasobject:
            check_dtype(dtype, label if key is None else f"{label}:{key}")
    if is_npz and is_stats_npz(keys):
        return
    key = npz_image_key(keys, label) if is_npz else None
    shape, _fortran, dtype = headers[key]
    check_image_array(shape, dtype, label, limits)
