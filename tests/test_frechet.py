"""The Fréchet core against scipy's sqrtm (pytorch-fid's calculate_frechet_distance) and analytic cases."""

import numpy as np
import pytest
from pytorch_fid.fid_score import calculate_frechet_distance as pytorch_fid_frechet

from trustfid.frechet import NUMPY, frechet_distance, frechet_distances
from trustfid.stats import Gaussian, Moments

REL = 1e-6  # the acceptance tolerance on well-conditioned cases


def _sets(d, n1, n2, seed=0):
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    x = (rng.normal(size=(n1, d)) @ mix).astype(np.float32)
    y = (rng.normal(size=(n2, d)) @ mix * 1.2 + 0.3).astype(np.float32)
    return x, y


def _moments(rows, batch):
    m = Moments(rows.shape[1])
    for i in range(0, len(rows), batch):
        m.add(rows[i:i + batch])
    return m.gaussian()


def _reference(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    return pytorch_fid_frechet(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))


@pytest.mark.parametrize("d,n1,n2", [
    (64, 400, 900),    # both sets larger than d: Cholesky + eigvalsh route
    (64, 40, 900),     # one small set: n1 x n1 eigenproblem
    (64, 40, 50),      # both small: nuclear norm of the cross matrix
    (512, 100, 120),   # both small, wide
])
def test_equals_scipy_sqrtm(d, n1, n2):
    x, y = _sets(d, n1, n2)
    ours = frechet_distance(_moments(x, 33), _moments(y, 50))
    assert ours == pytest.approx(_reference(x, y), rel=REL)


def test_equals_scipy_sqrtm_at_d2048_with_small_sets():
    x, y = _sets(2048, 120, 150, seed=3)
    assert frechet_distance(_moments(x, 64), _moments(y, 64)) == pytest.approx(_reference(x, y), rel=REL)


def test_equal_covariances_give_the_squared_mean_distance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(32, 32))
    sigma = a @ a.T + np.eye(32)
    mu1, mu2 = rng.normal(size=32), rng.normal(size=32)
    fid = frechet_distance(Gaussian(1000, mu1, sigma=sigma), Gaussian(1000, mu2, sigma=sigma.copy()))
    assert fid == pytest.approx(float(np.sum((mu1 - mu2) ** 2)), rel=1e-9)


def test_diagonal_covariances_have_a_closed_form():
    d1, d2 = np.linspace(0.5, 3, 16), np.linspace(2, 0.1, 16)
    fid = frechet_distance(Gaussian(10, np.zeros(16), sigma=np.diag(d1)), Gaussian(10, np.zeros(16), sigma=np.diag(d2)))
    assert fid == pytest.approx(float(np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)), rel=1e-9)


def test_identical_sets_give_zero_never_negative():
    x, _ = _sets(128, 60, 10)
    for g in (_moments(x, 7), _moments(np.concatenate([x] * 4), 7)):
        fid = frechet_distance(g, g)
        assert 0.0 <= fid < 1e-8


def test_singular_covariance_from_repeated_images_is_finite():
    x, y = _sets(32, 8, 200)
    repeated = np.repeat(x, 10, axis=0)  # 80 rows, rank 7 in 32 dims: Cholesky fails
    fid = frechet_distance(_moments(repeated, 16), _moments(y, 16))
    assert np.isfinite(fid)
    assert fid == pytest.approx(_reference(repeated, y), rel=1e-5)


@pytest.mark.parametrize("device", ["cpu", NUMPY])
def test_batched_distances_equal_one_by_one(device):
    pairs = []
    for seed in range(3):
        x, y = _sets(48, 300, 200, seed=seed)
        pairs.append((_moments(x, 64), _moments(y, 64)))
    x, y = _sets(48, 20, 30)
    pairs.append((_moments(x, 8), _moments(y, 8)))  # a small-set pair in the same call
    low_rank = np.cov(np.repeat(x, 10, axis=0), rowvar=False)  # rank 19 in 48 dims: its Cholesky fails
    pairs.append((Gaussian(200, x.mean(0), sigma=low_rank), Gaussian(200, y.mean(0), sigma=np.cov(y, rowvar=False))))
    batched = frechet_distances(pairs, group=2, device=device)
    assert batched == pytest.approx([frechet_distance(a, b, device) for a, b in pairs], rel=1e-10)
    assert np.isfinite(batched).all()


def test_small_sets_batched_and_gram_route_equal_the_svd_nuclear_norm():
    """Two small sets (n <= d): tr sqrt(S1 S2) from the eigenvalues of the cross matrix's Gram
    matrix, batched over passes, equals the sum of its singular values (an SVD) within 1e-12."""
    import torch

    from trustfid.frechet import _fid

    pairs = []
    for seed in range(3):
        x, y = _sets(256, 90, 120, seed=seed)
        pairs.append((_moments(x, 32), _moments(y, 32)))
    svd = [_fid(a, b, float(torch.linalg.svdvals(torch.from_numpy(a.factor()) @ torch.from_numpy(b.factor()).T).sum()))
           for a, b in pairs]
    assert frechet_distances(pairs, group=2) == pytest.approx(svd, rel=1e-12)
    assert [frechet_distance(a, b) for a, b in pairs] == pytest.approx(svd, rel=1e-12)


def test_numpy_gives_torch_s_distance():
    """The FRD's route (numpy, which never imports torch) and the FID's (torch on the CPU) run one algorithm:
    the same distance within 1e-12 on every route whose eigenvalues are determined — two large sets, two
    small sets (the FRD's route up to d images per set), one of them singular from repeated images — and
    the same batched. Where a route takes the square roots of round-off zeros (one small set: F1 S2 F1^T
    always has one; a singular covariance given as a matrix) two LAPACKs agree only to about sqrt(eps),
    as the GPU and the CPU do (tests/test_cuda.py)."""
    pairs = []
    for seed in range(3):
        x, y = _sets(64, 400, 900, seed=seed)
        pairs.append((_moments(x, 64), _moments(y, 64)))  # both large: Cholesky + eigvalsh
        x, y = _sets(464, 40, 60, seed=seed)
        pairs.append((_moments(x, 8), _moments(y, 8)))  # both small: the cross matrix's Gram eigenvalues
        repeated = np.repeat(x[:12], 3, axis=0)  # 36 rows of rank 11: a singular covariance
        pairs.append((_moments(repeated, 8), _moments(y, 8)))
        pairs.append((_moments(y, 8), _moments(repeated, 8)))
    assert pairs[0][0].sigma is not None and pairs[1][0].factor() is not None
    torch_route = [frechet_distance(a, b) for a, b in pairs]
    assert [frechet_distance(a, b, NUMPY) for a, b in pairs] == pytest.approx(torch_route, rel=1e-12, abs=0)
    assert frechet_distances(pairs, group=2, device=NUMPY) == pytest.approx(torch_route, rel=1e-12, abs=0)
