"""Readers for image arrays: .npy (memory-mapped), .npz (streamed from the zip member), and numpy
arrays or torch tensors in memory. Rows are read one at a time and named ``images.npy[00012]``.

uint8 is used as is; float arrays must lie in [0, 1] and are multiplied by 255 (a float array on
0..255 is refused rather than guessed at). Headers, dtypes, layouts and limits are the shared rules
(array_rules.py); pickled data is never loaded.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np

from ..errors import InputError, TrustfidError
from .array_rules import check_image_array, npy_header, npz_image_key, npz_keys, unreadable
from .events import Reader
from .intensity import EIGHT_BIT, FLOAT_01, Decoding, to_rgb
from .rules import Limits, first_line


def _row_to_image(row: np.ndarray, layout: str, name: str, decoding: Decoding) -> np.ndarray:
    """One row as an HxWx3 image (arrays are never windowed: uint8 as is, float in [0, 1] times 255)."""
    if layout == "NCHW":
        row = row.transpose(1, 2, 0)
    if row.dtype == np.uint8:
        decoding.note(EIGHT_BIT)
        img = row.astype(np.float32)
    else:
        if not np.isfinite(row).all() or row.min() < 0 or row.max() > 1:
            lo, hi = np.nanmin(row), np.nanmax(row)
            raise InputError(f"{name}: float image arrays must hold values in [0, 1] (found min {lo:g}, max {hi:g}"
                             f"{', and NaN/inf' if not np.isfinite(row).all() else ''}); divide 0..255 data by 255 "
                             f"or pass uint8.")
        decoding.note(FLOAT_01)
        decoding.keep(row)
        img = row.astype(np.float32) * np.float32(255)
    return to_rgb(img)


def _row_event(arr, i: int, layout, name: str, decoding: Decoding) -> Iterator:
    """The unit of one array row: its image, read and mapped only when called."""
    yield name, _row_to_image(np.asarray(arr[i]), layout, name, decoding)


def _row_names(prefix: str, reader: Reader) -> Iterator[tuple[int, str]]:
    """(row, name) of the rows the reader yields; names are numbered in the whole array (select)."""
    n = reader.total if reader.total is not None else reader.count
    width = max(5, len(str(max(n - 1, 0))))
    for i in reader.rows():
        yield i, f"{prefix}[{i:0{width}d}]"


class MemoryArrayReader(Reader):
    def __init__(self, arr: np.ndarray, label: str, limits: Limits, decoding: Decoding):
        self.decoding = decoding
        self.label = f"{label} {tuple(arr.shape)} {arr.dtype}"
        self.prefix = label
        self.layout = check_image_array(arr.shape, arr.dtype, self.label, limits)
        if arr.dtype.kind == "f" and arr.size and (not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1):
            raise InputError(f"{self.label}: float image arrays must hold finite values in [0, 1] (found min "
                             f"{np.nanmin(arr):g}, max {np.nanmax(arr):g}); divide 0..255 data by 255 or pass uint8.")
        self.arr, self.count = arr, arr.shape[0]

    def units(self):
        for i, name in _row_names(self.prefix, self):
            yield partial(_row_event, self.arr, i, self.layout, name, self.decoding)


class NpyReader(Reader):
    """Memory-mapped, so a large .npy is read one row at a time."""

    def __init__(self, path: Path, label: str, limits: Limits, decoding: Decoding):
        self.label, self.path, self.decoding = label, path, decoding
        try:
            with open(path, "rb") as fp:
                shape, _fortran, dtype = npy_header(fp)
        except (ValueError, OSError, EOFError) as e:
            raise unreadable(label, ".npy", e) from None
        self.layout = check_image_array(shape, dtype, label, limits)  # before any data is touched
        try:
            np.load(path, mmap_mode="r", allow_pickle=False)  # the data must be all there
        except (ValueError, OSError, EOFError) as e:
            raise unreadable(label, ".npy", e) from None
        self.count = shape[0]

    def units(self):
        arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        for i, name in _row_names(self.path.name, self):
            yield partial(_row_event, arr, i, self.layout, name, self.decoding)


class NpzReader(Reader):
    """The single array in the file, or the one named 'images'. Rows are streamed from the zip member
    (np.savez and np.savez_compressed alike), so the whole array is never in memory at once."""

    def __init__(self, path: Path, label: str, limits: Limits, decoding: Decoding):
        self.label, self.path, self.decoding = label, path, decoding
        try:
            with zipfile.ZipFile(path) as zf:
                self.key = npz_image_key(npz_keys(zf), label)
                with zf.open(self.key + ".npy") as fp:
                    shape, self.fortran, self.dtype = npy_header(fp)
        except TrustfidError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise unreadable(label, ".npz", e) from None
        except ValueError as e:
            raise InputError(f"'{label}': cannot read the array header of '{self.key}' ({first_line(e)}).",
                             code="bad_array") from None
        self.layout = check_image_array(shape, self.dtype, label, limits)
        self.shape, self.count = shape, shape[0]

    def units(self):
        names = _row_names(f"{self.path.name}:{self.key}" if self.key != "images" else self.path.name, self)
        with zipfile.ZipFile(self.path) as zf, zf.open(self.key + ".npy") as fp:
            if self.fortran:  # rare; rows are not contiguous on disk, so load the array whole
                arr = np.load(fp, allow_pickle=False)
                for i, name in names:
                    yield partial(_row_event, arr, i, self.layout, name, self.decoding)
                return
            npy_header(fp)
            row_shape = self.shape[1:]
            row_bytes = int(np.prod(row_shape)) * self.dtype.itemsize
            if self.first:
                fp.seek(self.first * row_bytes, 1)  # the rows before this shard
            for _, name in names:
                buf = fp.read(row_bytes)
                if len(buf) < row_bytes:
                    raise InputError(f"'{self.label}' is truncated: {name} is incomplete.")
                yield partial(_row_event, np.frombuffer(buf, self.dtype).reshape(1, *row_shape), 0, self.layout, name,
                              self.decoding)
