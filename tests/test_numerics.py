"""The GPU code paths and the precision option, checked on the CPU: the fixed-shape, padded network
calls and the stacked MC passes that CUDA runs give the features (and the domain probe's inputs) of
the plain CPU path; the precision flags stay inside the engine; the precision reaches the statistics'
provenance and the report, so statistics of different precisions never combine."""

import pytest
import torch

from tests.support.engine import network_inputs as _x
from tests.support.engine import our_net
from trustfid.errors import IncompatibleStatsError
from trustfid.extras import Collector
from trustfid.mc import MCDropout, stacked_passes
from trustfid.numerics import _cudnn_fp32, onednn_conv2d, precision_scope
from trustfid.schemas import ScoreOptions
from trustfid.settings import EngineSettings

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    return our_net(str(tmp_path_factory.mktemp("w")))


def _as_on_gpu(net, options, gpu_batch, tail_rows):
    """MCDropout with CUDA's fixed-shape calls and stacked passes, running on the CPU."""
    settings = EngineSettings(gpu_batch=gpu_batch, gpu_tail_rows=tail_rows)
    model = MCDropout(net, options, torch.device("cpu"), settings)
    model.gpu, model.stack = True, stacked_passes(options.passes, settings)
    return model


@pytest.mark.parametrize("mask_mode", ["shared", "per_image"])
def test_padded_fixed_shape_calls_and_stacked_passes_equal_the_cpu_path(net, mask_mode):
    options = ScoreOptions(passes=5, mask_mode=mask_mode, seed=3, dropout_at=["Mixed_6e", "Mixed_7a"])
    x = _x(5, seed=2)
    cpu = MCDropout(net, options, torch.device("cpu"))
    # 5 images in calls of 2 (the last padded), passes stacked 2 + 2 + 1 (tail rows 4 = 2 passes of 2)
    gpu = _as_on_gpu(net, options, gpu_batch=2, tail_rows=4)
    assert gpu.stack == 2
    c_cpu, c_gpu = Collector(net, options), Collector(net, options)
    plain_c, mc_c = cpu.features(x, 1, 10, watch=c_cpu.watch)
    raw_c = c_cpu.probe.take(plain_c)
    plain_g, mc_g = gpu.features(x, 1, 10, watch=c_gpu.watch)
    raw_g = c_gpu.probe.take(plain_g)
    assert plain_g.shape == plain_c.shape and mc_g.shape == mc_c.shape == (5, 5, 2048)
    # the same masks reach the same rows: only float32 round-off of different batch shapes differs
    torch.testing.assert_close(plain_g, plain_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mc_g, mc_c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.from_numpy(raw_g), torch.from_numpy(raw_c), rtol=1e-4, atol=1e-6)
    assert (mc_c[0] - mc_c[1]).abs().max() > 1e-3  # the passes differ: a mask mix-up would show


def test_precision_flags_stay_inside_the_engine():
    cudnn = torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    new_api = conv is not None and hasattr(conv, "fp32_precision")
    before = (conv.fp32_precision if new_api else cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
              torch.get_float32_matmul_precision())
    with _cudnn_fp32(tf32=False):
        assert (conv.fp32_precision == "ieee") if new_api else (cudnn.allow_tf32 is False)
        assert cudnn.deterministic and not cudnn.benchmark
        assert torch.get_float32_matmul_precision() == "highest"
    after = (conv.fp32_precision if new_api else cudnn.allow_tf32, cudnn.deterministic, cudnn.benchmark,
             torch.get_float32_matmul_precision())
    assert after == before
    with precision_scope("bf16", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu")
    assert not torch.is_autocast_enabled("cpu")



@pytest.mark.parametrize("kw", [{}, {"stride": 2, "padding": 1}, {"padding": "same", "dilation": 2},
                                {"padding": "valid", "groups": 2}, {"stride": (1, 2), "padding": (0, 3)},
                                {"padding": "same", "bias": None}])
def test_cpu_convolutions_through_onednn_compute_what_torch_does(kw):
    # every float32 2-D convolution on the CPU goes through oneDNN inside the engine (numerics.py):
    # whatever arguments a network passes, the result is torch's convolution
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, 4, 11, 13, generator=gen), torch.randn(6, 4 // kw.get("groups", 1), 3, 5, generator=gen)
    kw = {"bias": torch.randn(6, generator=gen), **kw}
    assert onednn_conv2d(x, w, **kw) is not None
    with precision_scope("fp32", torch.device("cpu")):
        inside = torch.nn.functional.conv2d(x, w, **kw)
    torch.testing.assert_close(inside, torch.nn.functional.conv2d(x, w, **kw), rtol=1e-5, atol=1e-5)
    assert onednn_conv2d(x.double(), w.double(), **{**kw, "bias": None}) is None  # not float32: torch decides
    assert onednn_conv2d(x, w[..., :4], padding="same") is None  # an even kernel pads asymmetrically

def test_precision_reaches_the_provenance_and_the_report(sets):
    from trustfid import compute_stats, score

    real, gen = sets
    fast = {"passes": 2, "bootstrap_resamples": 0, "kid_subsets": 0, "device": "cpu"}
    fp32 = compute_stats(real, fast)
    bf16 = compute_stats(gen, {**fast, "precision": "bf16"})
    assert fp32.provenance["precision"] == "fp32" and bf16.provenance["precision"] == "bf16"
    with pytest.raises(IncompatibleStatsError, match="precision"):
        score(fp32, bf16, fast)
    report = score(real, gen, {**fast, "precision": "bf16"})
    assert report.config.precision == "bf16"
    plain = score(real, gen, fast)
    assert report.fid != plain.fid and abs(report.fid / plain.fid - 1) < 0.05  # bf16 drifts, a little


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from tests.support.images import write_images

    d = tmp_path_factory.mktemp("numerics")
    return write_images(d / "real", 6, seed=1), write_images(d / "gen", 6, seed=2, shift=0.3)
