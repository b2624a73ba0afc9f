"""On a CUDA GPU (skipped elsewhere; DEVELOPERS.md says how to run it on a GPU machine): fp32 on the
GPU gives the CPU's FID within 5e-5, a report does not depend on batch_size, the float64 Fréchet step
on the GPU equals the CPU's within 1e-9 on every route, and the engine leaves the caller's torch flags
as they were."""

import numpy as np
import pytest
import torch

from tests.support.images import write_images
from trustfid import score
from trustfid.frechet import frechet_distances
from trustfid.stats import Moments

pytestmark = [pytest.mark.engine, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

OPTIONS = {"passes": 4, "bootstrap_resamples": 0, "kid_subsets": 10, "seed": 3}


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("cuda")
    return write_images(d / "real", 40, seed=1), write_images(d / "gen", 40, seed=2, shift=0.3)


def _score(sets, **kw):
    return score(*sets, {**OPTIONS, **kw})


def test_fp32_on_the_gpu_equals_the_cpu(sets):
    cpu, gpu = _score(sets, device="cpu"), _score(sets, device="cuda")
    assert gpu.device.startswith("cuda") and gpu.config.precision == "fp32"
    assert gpu.fid == pytest.approx(cpu.fid, rel=5e-5)
    assert gpu.fid_mc.samples == pytest.approx(cpu.fid_mc.samples, rel=5e-5)


@pytest.mark.parametrize("mask_mode", ["shared", "per_image"])
def test_a_report_does_not_depend_on_the_batch_size(sets, mask_mode):
    small = _score(sets, device="cuda", batch_size=7, mask_mode=mask_mode)
    large = _score(sets, device="cuda", batch_size=64, mask_mode=mask_mode)
    assert small.fid == pytest.approx(large.fid, rel=1e-9, abs=0)
    assert small.fid_mc.samples == pytest.approx(large.fid_mc.samples, rel=1e-9, abs=0)
    assert small.latent_variance.real.mean == pytest.approx(large.latent_variance.real.mean, rel=1e-9, abs=0)


def test_the_engine_leaves_the_callers_torch_flags_alone(sets):
    cudnn = torch.backends.cudnn
    cudnn.benchmark, cudnn.deterministic = True, False
    matmul = torch.get_float32_matmul_precision()
    _score(sets, device="cuda", passes=2)
    assert (cudnn.benchmark, cudnn.deterministic, torch.get_float32_matmul_precision()) == (True, False, matmul)
    cudnn.benchmark = False


def test_tf32_and_bf16_are_stated_and_drift_little(sets):
    fp32 = _score(sets, device="cuda", passes=0)
    for precision in ("tf32", "bf16"):
        other = _score(sets, device="cuda", passes=0, precision=precision)
        assert other.config.precision == precision
        assert other.fid == pytest.approx(fp32.fid, rel=2e-2)


def _gaussians(n, d, passes, seed):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    out = []
    for t in range(passes):
        rows = (rng.normal(size=(n, d)) @ mix * (1 + 0.1 * t) + seed).astype(np.float32)
        m = Moments(d)
        m.add(rows)
        out.append(m.gaussian())
    return out


@pytest.mark.parametrize("n1,n2", [(3000, 2500), (300, 400), (300, 2500)], ids=["large", "small", "mixed"])
def test_the_frechet_step_on_the_gpu_equals_the_cpu(n1, n2):
    pairs = list(zip(_gaussians(n1, 2048, 3, 1), _gaussians(n2, 2048, 3, 2)))
    cpu = frechet_distances(pairs)
    gpu = frechet_distances(pairs, device=torch.device("cuda"))
    assert gpu == pytest.approx(cpu, rel=1e-9, abs=0)
