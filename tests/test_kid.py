"""KID equals clean-fid's on the same features; FID∞ removes the small-sample bias where its model
holds; the kept feature rows are deterministic and shards merge to the whole set's rows.

What "equal" means for KID. clean-fid's ``kernel_distance`` draws its subsets from numpy's global
RNG, unseeded, so two calls never agree; with ``numpy.random.seed(s)`` first it draws exactly what
``kid.py`` draws from ``RandomState(s)`` (generated rows first, then real, per subset). On the same
features and the same draws the two must agree within 1e-6 relative (in float64 they agree to ~1e-12).
clean-fid computes in its input's dtype: given float32 features it rounds to float32, and its value
then differs from the float64 one by round-off (measured 1e-7 to 4e-7 relative here; bounded at 1e-5).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import realimages
from trustfid import compute_stats
from trustfid.kid import fid_infinity, kid
from trustfid.rows import KeptRows
from trustfid.schemas import ScoreOptions

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def features():
    """Plain pool3 features of real photo crops and real medical crops, from the engine."""
    opts = ScoreOptions(passes=0, bootstrap_resamples=0, device="cpu")
    real = compute_stats(np.stack(realimages.crops(realimages.NATURAL, 40, size=80, seed=5)), opts)
    gen = compute_stats(np.stack(realimages.crops(realimages.MEDICAL, 36, size=80, seed=6)), opts)
    return real.feature_rows(), gen.feature_rows()


def _clean_fid(real, gen, seed, **kw):
    from cleanfid.fid import kernel_distance

    np.random.seed(seed)
    return kernel_distance(real, gen, **kw)


@pytest.mark.parametrize("subset_size", [1000, 17])  # 1000: clean-fid's default (m = 36 here); 17: real draws
def test_kid_equals_clean_fid_on_the_same_features_and_draws(features, subset_size):
    real, gen = features
    r64, g64 = real.astype(np.float64), gen.astype(np.float64)
    ours = kid(real, gen, subsets=100, subset_size=subset_size, seed=3)
    theirs = _clean_fid(r64, g64, 3, num_subsets=100, max_subset_size=subset_size)
    assert ours.value == pytest.approx(theirs, rel=1e-6)
    assert ours.subsets == 100 and ours.subset_size == min(36, subset_size)
    assert ours.value > 0.05  # photos against medical images: clearly apart
    # clean-fid on float32 input computes in float32: the same number up to its round-off
    assert ours.value == pytest.approx(_clean_fid(real, gen, 3, num_subsets=100, max_subset_size=subset_size),
                                       rel=1e-5)


def test_kid_on_sets_no_larger_than_a_subset_reports_no_spread(features):
    # 36 rows a side, subsets of up to 1000: every subset is the whole of both sets, so the 100
    # estimates differ by round-off only (clean-fid's spread here is ~1e-17). The report says "no
    # spread" (std None, one subset) instead of a "± 0.00000" that claims a precision it does not have.
    real, gen = features
    real = real[:36]
    ours = kid(real, gen, subsets=100, subset_size=1000, seed=3)
    assert ours.std is None and ours.subsets == 1 and ours.subset_size == 36
    theirs = _clean_fid(real.astype(np.float64), gen.astype(np.float64), 3, num_subsets=100, max_subset_size=1000)
    assert ours.value == pytest.approx(theirs, rel=1e-6)
    # one side larger than the subset size: subsets differ, and their spread is reported
    wider = kid(features[0], gen, subsets=100, subset_size=1000, seed=3)
    assert wider.subsets == 100 and wider.std > 1e-6


def test_kid_is_unbiased_where_fid_is_not():
    """Two independent samples of one distribution (Gaussian, d = 64, 50 rows each), 60 times: the
    mean KID is zero within 3 standard errors, while every FID is far above zero."""
    from bench.validation.analysis import fid

    rng = np.random.default_rng(1)
    kids, fids = [], []
    for r in range(60):
        a, b = rng.normal(size=(2, 50, 64)).astype(np.float32)
        kids.append(kid(a, b, subsets=1, subset_size=50, seed=r).value)
        fids.append(fid(a, b))
    kids = np.asarray(kids)
    assert abs(kids.mean()) < 3 * kids.std(ddof=1) / np.sqrt(len(kids))
    assert min(kids) < 0 < max(kids) and min(fids) > 20


def test_kid_uses_the_kernel_matrix_once_or_per_subset_with_the_same_result(features, monkeypatch):
    real, gen = features
    a = kid(real, gen, subsets=20, subset_size=12, seed=1).value
    import trustfid.kid as K

    monkeypatch.setattr(K, "GRAM_LIMIT", 0)  # force the per-subset path
    assert kid(real, gen, subsets=20, subset_size=12, seed=1).value == pytest.approx(a, rel=1e-10)


def test_fid_infinity_removes_most_of_the_small_sample_bias_where_fid_is_linear_in_1_over_n():
    """Gaussian features (d = 64) with a known FID of 16: at N = 400 the plain FID is biased upward
    by about a third; FID∞ from the same 400 rows lands within 10% of the truth."""
    from bench.validation.analysis import fid

    rng = np.random.default_rng(0)
    d, n, true = 64, 400, 16.0
    for seed in range(3):
        a = rng.normal(size=(n, d)).astype(np.float32)
        b = (rng.normal(size=(n, d)) + 0.5).astype(np.float32)
        plain, inf = fid(a, b), fid_infinity(a, b, seed=seed)
        assert plain > 1.2 * true
        assert abs(inf.value - true) < 0.1 * true, (plain, inf.value)
        assert [p.n_generated for p in inf.points] == [80, 160, 240, 320, 400]
        assert inf.points[0].fid > inf.points[-1].fid and inf.slope > 0


def test_a_negative_extrapolation_or_kid_is_explained_never_printed_bare():
    """Two samples of one distribution, few rows for their dimension: the fit in 1/N lands below 0 and so
    does KID's unbiased estimate (seed 4 gives both). FID∞ says it failed and is 0; KID says what below 0 means;
    the CLI summary prints neither as a bare negative number."""
    from trustfid.cli import small_sample

    r = np.random.default_rng(4)
    a, b = r.normal(size=(60, 16)), r.normal(size=(60, 16))
    f, k = fid_infinity(a, b, seed=0), kid(a, b, subsets=10, subset_size=50, seed=0)
    assert f.fit_intercept < 0 and f.value == 0.0 and "not reliable" in f.note and f"{f.fit_intercept:.2f}" in f.note
    assert k.value < 0 and "not told apart at 50 images" in k.note
    line = "   ".join(small_sample(k, f))
    assert "FID∞ not reliable" in line and "read it as 0" in line and "FID∞ -" not in line
    r = np.random.default_rng(2)
    fine = fid_infinity(r.normal(size=(60, 16)), r.normal(size=(60, 16)), seed=0)
    assert fine.value == fine.fit_intercept > 0 and fine.note is None


def test_fid_infinity_needs_two_sizes_of_ten_rows():
    x = np.random.default_rng(0).normal(size=(11, 8)).astype(np.float32)
    assert fid_infinity(x, x + 1, seed=0) is None  # 20% .. 80% of 11 rows are below 10
    assert fid_infinity(None, x) is None
    y = np.random.default_rng(1).normal(size=(13, 8)).astype(np.float32)
    assert [p.n_generated for p in fid_infinity(y, y + 1, seed=0).points] == [10, 13]


def test_kept_rows_are_the_same_whatever_the_batches_and_shards_merge_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    whole = KeptRows(4, 64, seed=7)
    whole.add(x, 0)
    batched = KeptRows(4, 64, seed=7)
    for i in range(0, 500, 33):
        batched.add(x[i:i + 33], i)
    a, b = KeptRows(4, 64, seed=7), KeptRows(4, 64, seed=7)
    a.add(x[:180], 0)
    b.add(x[180:], 180)
    merged = a.merge(b)
    for kept in (batched, merged):
        assert np.array_equal(kept.index(), whole.index()) and np.array_equal(kept.rows(), whole.rows())
    assert len(whole) == 64 and whole.capped and whole.seen == 500
    assert np.array_equal(whole.rows(), x[whole.index()])
    assert not np.array_equal(_kept(x, 8).index(), whole.index())  # another seed, another sample
    small = _kept(x[:50], 7)  # under the cap: every row, in image order
    assert not small.capped and np.array_equal(small.rows(), x[:50])


def _kept(x, seed):
    k = KeptRows(x.shape[1], 64, seed=seed)
    k.add(x, 0)
    return k
