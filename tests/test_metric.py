"""Metric: the in-process streaming metric gives score's report, whatever the batches, on the
images' own device; bad input is refused with a message that says what was found."""

import numpy as np
import pytest
import torch

from tests.support import realimages
from tests.support.engine import tiny_network
from trustfid import Extractor, Metric, score
from trustfid.errors import InputError
from trustfid.schemas import ScoreOptions

pytestmark = pytest.mark.engine

# Measured on CPU: fid, every fid_mc sample and every per-image latent variance bit-identical to
# score's. The tolerances leave room for the order of float sums on other hardware.
FID_REL, SAMPLE_REL, VARIANCE_REL = 1e-6, 1e-6, 1e-5
OPTIONS = dict(passes=2, bootstrap_resamples=4, dropout_at=["Mixed_7a", "Mixed_7b"], mask_mode="per_image",
               device="cpu")


@pytest.fixture(scope="module")
def images():
    real = np.stack(realimages.crops(realimages.NATURAL, 6, size=64, seed=11))
    gray = np.stack(realimages.crops(realimages.MEDICAL, 6, size=64, seed=12)).mean(axis=3).round().astype(np.uint8)
    return real, np.repeat(gray[..., None], 3, axis=3)  # generated: grayscale photos as RGB


def _feed(metric, arrays, sizes, real, gray=False):
    """Uneven batches, each in another form the Metric accepts (a gray set: its last as 1 channel)."""
    start = 0
    for k, n in enumerate(sizes):
        part = arrays[start:start + n]
        start += n
        if k % 3 == 0:
            metric.update(part, real=real)  # numpy uint8 (N, H, W, 3)
        elif k % 3 == 1:
            metric.update(torch.from_numpy(part).permute(0, 3, 1, 2).contiguous(), real=real)  # uint8 NCHW
        else:
            part = part[..., :1] if gray else part
            metric.update(torch.from_numpy(part).float() / 255, real=real)  # float NHWC, 3 or 1 channels
    assert start == len(arrays)


def test_metric_equals_score_whatever_the_batch_sizes(images):
    real, gen = images
    expected = score(real, gen, ScoreOptions(**OPTIONS))
    metric = Metric(OPTIONS)
    _feed(metric, real, [2, 1, 3], real=True)
    _feed(metric, gen, [3, 1, 2], real=False, gray=True)  # R = G = B: one batch as 1 channel
    got = metric.compute()

    assert got.fid == pytest.approx(expected.fid, rel=FID_REL)
    assert got.fid_mc.samples == pytest.approx(expected.fid_mc.samples, rel=SAMPLE_REL)
    for side in ("real", "generated"):
        a, b = getattr(got.latent_variance, side), getattr(expected.latent_variance, side)
        assert [i.latent_variance for i in a.most_uncertain] == pytest.approx(
            [i.latent_variance for i in b.most_uncertain], rel=VARIANCE_REL)
        assert a.mean == pytest.approx(b.mean, rel=VARIANCE_REL)
    assert got.counts.real.used == 6 and got.counts.generated.used == 6
    assert got.config == expected.config and got.model == expected.model
    assert got.trust.level == expected.trust.level and got.device == "cpu"
    t = got.timing  # the updates' stages; the caller decoded the images
    assert {k: s.images for k, s in t.sets.items()} == {"real": 6, "generated": 6}
    assert t.sets["real"].network_s > 0 and t.sets["real"].decode_s is None and t.network_load_s > 0


def test_float_images_outside_0_1_are_refused_never_clipped():
    metric = Metric({"passes": 0})
    with pytest.raises(InputError, match=r"min -0\.5, max 2.*never clips"):
        metric.update(torch.linspace(-0.5, 2, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3), real=True)
    with pytest.raises(InputError, match="NaN"):
        metric.update(np.full((2, 3, 8, 8), np.nan, np.float32))
    with pytest.raises(InputError, match="uint8"):
        metric.update(np.zeros((2, 8, 8, 3), np.int32))
    with pytest.raises(InputError, match="channel axis"):
        metric.update(np.zeros((2, 8, 8, 5), np.uint8))
    with pytest.raises(InputError, match="array\\[None\\]"):
        metric.update(np.zeros((8, 8, 3), np.uint8))


def test_reset_forgets_the_images_and_compute_needs_both_sets(images):
    real, gen = images
    metric = Metric({"passes": 2, "bootstrap_resamples": 0}, extractor=Extractor(tiny_network(), name="tiny"))
    with pytest.raises(InputError, match="no images yet"):
        metric.compute()
    metric.update(gen, real=True)
    metric.update(gen, real=False)
    assert metric.compute().fid < 1e-6  # a set against itself
    metric.reset()
    metric.update(real, real=True)
    with pytest.raises(InputError, match="generated set has no images"):
        metric.compute()
    metric.update(gen, real=False)
    fresh = Metric({"passes": 2, "bootstrap_resamples": 0}, extractor=Extractor(tiny_network(), name="tiny"))
    fresh.update(real, real=True)
    fresh.update(gen, real=False)
    assert metric.compute().fid == fresh.compute().fid > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_images_on_the_gpu_are_scored_there(images):
    real, gen = images
    metric = Metric({"passes": 2, "bootstrap_resamples": 0})
    metric.update(torch.from_numpy(real).cuda(), real=True)
    metric.update(torch.from_numpy(gen).cuda(), real=False)
    got = metric.compute()
    cpu = score(real, gen, ScoreOptions(passes=2, bootstrap_resamples=0, device="cpu"))
    assert got.device.startswith("cuda")
    assert got.fid == pytest.approx(cpu.fid, rel=5e-5)  # strict fp32 on the GPU (numerics.py)


def test_metric_is_exported_lazily():
    import trustfid

    assert trustfid.Metric is Metric and "Metric" in trustfid.__all__
