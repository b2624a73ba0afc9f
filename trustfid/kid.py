"""Small-sample alternatives to the plain FID, from the sets' feature rows (rows.py).

FID is biased upward at small N (by roughly c/N), and at the 50-500 images per protocol that a
hospital has, the bias can be larger than the differences being judged. Two remedies:

KID (Bińkowski et al., ICLR 2018), exactly as clean-fid 0.1.35 computes it (``cleanfid.fid.
kernel_distance``): polynomial kernel k(x, y) = (x·y / d + 1)^3, the unbiased estimator of MMD² on
``subsets`` random subsets of m = min(n_real, n_generated, subset_size) rows of each set (100 and
1000 in clean-fid), drawn without replacement with ``numpy.random.choice``: in each subset first the
generated rows, then the real ones. Here the draws come from ``numpy.random.RandomState(seed mod
2^32)``, i.e. the draws clean-fid makes after ``numpy.random.seed(seed mod 2^32)``; with the same
features the value equals clean-fid's (tests/test_kid.py: within 1e-6 relative; we compute in float64,
clean-fid in its input's dtype). ``std`` is the spread of the per-subset estimates (ddof 1), not a
standard error: the subsets overlap. When both sets are no larger than the subset size, every subset
is the whole of both sets (in another order) and gives the same estimate: one subset is computed and
``std`` is None, rather than a spread of rounding noise (3e-16 at 24 images).

FID∞ (Chong & Forsyth, CVPR 2020, "Effectively Unbiased FID and Inception Score and where to find
them"): FID is very nearly linear in 1/N, so FID at several subset sizes N, fitted by a straight line
in 1/N, extrapolates to N = ∞ at the intercept. They subsample the generated set (without
replacement) against fixed reference statistics from 50k images; our users' reference sets are small
too, so both sets are subsampled at the same fraction f of their (kept) rows, and both bias terms
scale as 1/f. Points: f in ``FRACTIONS`` (only sizes of at least ``MIN_ROWS`` rows per set), each
below f = 1 drawn ``REPEATS`` times; the line is fitted to every draw.
"""

from __future__ import annotations

import numpy as np

from .frechet import frechet_distance
from .plugin import FEATURES, Plugin
from .schemas import FidInfinity, FidInfinityPoint, Kid
from .stats import Moments

KID_SUBSETS = 100  # clean-fid's num_subsets
KID_SUBSET_SIZE = 1000  # clean-fid's max_subset_size
GRAM_LIMIT = 4096  # up to this many rows in all, the kernel matrix of all rows is computed once

FRACTIONS = (0.2, 0.4, 0.6, 0.8, 1.0)
REPEATS = 3
MIN_ROWS = 10


def _poly(a: np.ndarray, b: np.ndarray, d: int) -> np.ndarray:
    return (a @ b.T / d + 1.0) ** 3


def kid_subsets(real: np.ndarray, generated: np.ndarray, subsets: int = KID_SUBSETS,
                subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> tuple[np.ndarray, int]:
    """Per-subset unbiased MMD² estimates and the subset size m (see the module docstring)."""
    x_all = np.asarray(generated, np.float64)
    y_all = np.asarray(real, np.float64)
    d = x_all.shape[1]
    m = min(len(x_all), len(y_all), subset_size)
    if m < 2 or subsets < 1:
        raise ValueError("KID needs at least 2 rows per set and 1 subset")
    rng = np.random.RandomState(int(seed) % 2**32)
    draws = [(rng.choice(len(x_all), m, replace=False), rng.choice(len(y_all), m, replace=False))
             for _ in range(subsets)]
    values = np.empty(subsets)
    if len(x_all) + len(y_all) <= GRAM_LIMIT:  # every kernel value once, then index into it
        z = np.concatenate([x_all, y_all])
        k = _poly(z, z, d)
        off = len(x_all)
        for s, (ix, iy) in enumerate(draws):
            iy = iy + off
            values[s] = _mmd(k[np.ix_(ix, ix)], k[np.ix_(iy, iy)], k[np.ix_(ix, iy)], m)
    else:
        for s, (ix, iy) in enumerate(draws):
            x, y = x_all[ix], y_all[iy]
            values[s] = _mmd(_poly(x, x, d), _poly(y, y, d), _poly(x, y, d), m)
    return values, m


def _mmd(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, m: int) -> float:
    a = kxx + kyy
    return float(((a.sum() - np.trace(a)) / (m - 1) - kxy.sum() * 2 / m) / m)


def kid(real: np.ndarray | None, generated: np.ndarray | None, subsets: int = KID_SUBSETS,
        subset_size: int = KID_SUBSET_SIZE, seed: int = 0) -> Kid | None:
    if real is None or generated is None or subsets < 1 or min(len(real), len(generated)) < 2:
        return None
    if min(subset_size, len(real), len(generated)) == len(real) == len(generated):
        subsets = 1  # every subset would be the whole of both sets: the same estimate, no spread
    values, m = kid_subsets(real, generated, subsets, subset_size, seed)
    value = float(values.mean())
    note = None
    if value < 0:
        note = (f"below 0: KID is an unbiased estimate, which scatters about 0 when the two sets are not told apart "
                f"at {m} images per subset; read it as 0, not as closer than identical")
    return Kid(value=value, std=float(values.std(ddof=1)) if subsets > 1 else None, subsets=subsets, subset_size=m,
               note=note)


def _gaussian(rows: np.ndarray):
    g = Moments(rows.shape[1])
    g.add(rows)
    return g.gaussian()


def fid_infinity(real: np.ndarray | None, generated: np.ndarray | None, seed: int = 0,
                 fractions=FRACTIONS, repeats: int = REPEATS) -> FidInfinity | None:
    """FID∞ from the kept rows of both sets (see the module docstring); None when fewer than two
    subset sizes have at least ``MIN_ROWS`` rows per set."""
    if real is None or generated is None:
        return None
    nr, ng = len(real), len(generated)
    sizes = sorted({(max(2, round(f * nr)), max(2, round(f * ng))) for f in fractions})
    sizes = [(a, b) for a, b in sizes if min(a, b) >= MIN_ROWS]
    if len(sizes) < 2:
        return None
    rng = np.random.default_rng([int(seed), 0xF1D])
    xs, ys, points = [], [], []
    for a, b in sizes:
        full = a == nr and b == ng
        fids = []
        for _ in range(1 if full else repeats):
            ra = real if a == nr else real[np.sort(rng.choice(nr, a, replace=False))]
            gb = generated if b == ng else generated[np.sort(rng.choice(ng, b, replace=False))]
            fids.append(frechet_distance(_gaussian(ra), _gaussian(gb)))
        xs += [1.0 / b] * len(fids)
        ys += fids
        points.append(FidInfinityPoint(n_real=a, n_generated=b, fid=float(np.mean(fids)), repeats=len(fids)))
    slope, intercept = np.polyfit(np.asarray(xs), np.asarray(ys), 1)
    note = None
    if intercept < 0:
        note = (f"not reliable: the straight line through the FIDs of {len(points)} subset sizes reaches "
                f"{intercept:.2f} at infinitely many images, and no FID is below 0; the FID falls with 1/N faster "
                "than linearly here (too few images for the extrapolation): read the plain FID")
    return FidInfinity(value=max(0.0, float(intercept)), slope=float(slope), points=points,
                       fit_intercept=float(intercept), note=note)


class _Kid(Plugin):
    """KID and FID∞ as a metric (plugins.py), from the FID network's kept feature rows."""

    name = "kid"
    uses = frozenset({FEATURES})
    fields = ("kid", "fid_infinity")

    def wanted(self, options) -> bool:
        return options.fid_on

    def section(self, r, g, ctx) -> dict:
        o = ctx.options
        real, generated = r.feature_rows(), g.feature_rows()
        return dict(kid=kid(real, generated, o.kid_subsets, o.kid_subset_size, o.seed),
                    fid_infinity=fid_infinity(real, generated, o.seed))


PLUGIN = _Kid()
