"""Fidelity and diversity: precision, recall, density and coverage (Naeem, Oh, Uh, Choi & Yoo, ICML 2020,
"Reliable Fidelity and Diversity Metrics for Generative Models"), from the feature rows the FID's sampling
interval and KID use (rows.py), so no image is decoded twice; with the FRD, also from the radiomic
features, z-scored against the reference as the FRD z-scores them.

A FID says how far the generated set is; these say why. Each image gets a ball reaching its k-th nearest
neighbour in its own set (k = ``prdc_k``, 5 as in the paper):

- precision: the share of generated images inside at least one real image's ball (fidelity: does each
  generated image look like some real one? Artefacts lower it);
- recall: the share of real images inside at least one generated image's ball (diversity: is every kind
  of real image produced? Mode collapse lowers it);
- density: how many real balls hold each generated image, divided by k and averaged (fidelity that
  outliers of the real set do not inflate; about 1 when both sets come from one distribution, above 1
  when the generator crowds into the real set's densest regions);
- coverage: the share of real images whose ball holds at least one generated image (diversity that
  outliers of the generated set do not inflate).

The values equal the ``prdc`` package's ``compute_prdc`` (0.2) on the same rows (tests/test_prdc.py):
Euclidean distances computed in float64 and held in float32, as scikit-learn's ``pairwise_distances``
holds them for float32 rows; a ball's radius is the (k+1)-th smallest distance of its row to its own set,
the row itself included; strict comparisons. Distances are computed in blocks of ``BLOCK`` rows, so the
point values need O(BLOCK x n) memory for any number of rows (10,000 against 10,000 rows of 2048 take
tens of seconds on 2 cores: bench/RESULTS.md).

The 95% intervals resample both sets' rows with replacement, as the FID's sampling interval does: a
resample holds the balls of the real and generated images drawn (an image drawn twice is one ball) and
counts each draw once in the averages. The radii stay those of the whole sets: recomputed within a
resample, an image drawn twice would be its own neighbour at distance 0 (radii shrink) or, counted once,
the fewer distinct images would give larger radii; either moves every value and pins those near 1 to
1. The interval is the value moved by the resamples' (2.5%, 97.5%) quantiles about their median,
clipped to the metric's range. Up to ``BOOT_LIMIT`` rows per set the real-to-generated distances are
held once (float32, at most 64 MiB) and indexed by each resample; above it the values are computed but
the interval is not (the report says so).
"""

from __future__ import annotations

import numpy as np

from .plugin import FEATURES, Plugin
from .schemas import Prdc, PrdcValue

BLOCK = 1024  # rows of one set whose distances to the other set are held at once
BOOT_LIMIT = 4096  # rows per set up to which the intervals are computed (full distance matrices)
NAMES = ("precision", "recall", "density", "coverage")

MEANING = {
    "precision": "share of generated images that look like some real image (fidelity; artefacts lower it)",
    "recall": "share of real images that some generated image resembles (diversity; mode collapse lowers it)",
    "density": "how densely generated images sit among real ones (fidelity robust to outliers; ~1 for the "
               "same distribution, can exceed 1)",
    "coverage": "share of real images with a generated image nearby (diversity robust to outliers)",
}


def _as64(rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rows, dtype=np.float32).astype(np.float64)


def distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray | None = None,
              b_sq: np.ndarray | None = None) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) of float64 rows, as scikit-learn computes them for float32
    input: -2 a·b + |a|² + |b|² in float64, then float32, clipped at 0, square root in float32."""
    a_sq = np.einsum("ij,ij->i", a, a) if a_sq is None else a_sq
    b_sq = np.einsum("ij,ij->i", b, b) if b_sq is None else b_sq
    d = -2.0 * (a @ b.T)
    d += a_sq[:, None]
    d += b_sq[None, :]
    d = d.astype(np.float32)
    np.maximum(d, 0, out=d)
    return np.sqrt(d, out=d)


def _radii(x: np.ndarray, x_sq: np.ndarray, k: int) -> np.ndarray:
    """Each row's distance to its k-th nearest other row: the (k+1)-th smallest, itself included."""
    out = np.empty(len(x), np.float32)
    for s in range(0, len(x), BLOCK):
        d = distances(x[s:s + BLOCK], x, x_sq[s:s + BLOCK], x_sq)
        out[s:s + BLOCK] = np.partition(d, k, axis=1)[:, k]
    return out


def _prepare(real: np.ndarray, generated: np.ndarray, k: int) -> tuple:
    """What the values and the bootstrap share: both sets' float64 rows, squared norms and ball radii."""
    r, g = _as64(real), _as64(generated)
    r_sq, g_sq = np.einsum("ij,ij->i", r, r), np.einsum("ij,ij->i", g, g)
    return r, g, r_sq, g_sq, _radii(r, r_sq, k), _radii(g, g_sq, k)


def values(real: np.ndarray, generated: np.ndarray, k: int, prepared: tuple | None = None) -> dict[str, float]:
    """Precision, recall, density and coverage of two sets of rows (n, d), as ``prdc.compute_prdc``."""
    r, g, r_sq, g_sq, r_rad, g_rad = prepared or _prepare(real, generated, k)
    in_real_ball = np.zeros(len(g), bool)  # per generated image
    balls_holding = np.zeros(len(g), np.int64)
    recalled = np.empty(len(r), bool)  # per real image
    covered = np.empty(len(r), bool)
    for s in range(0, len(r), BLOCK):
        d = distances(r[s:s + BLOCK], g, r_sq[s:s + BLOCK], g_sq)
        inside = d < r_rad[s:s + BLOCK, None]
        in_real_ball |= inside.any(axis=0)
        balls_holding += inside.sum(axis=0)
        recalled[s:s + BLOCK] = (d < g_rad[None, :]).any(axis=1)
        covered[s:s + BLOCK] = d.min(axis=1) < r_rad[s:s + BLOCK]
    return dict(precision=float(in_real_ball.mean()), recall=float(recalled.mean()),
                density=float(balls_holding.mean() / k), coverage=float(covered.mean()))


def _resampled_values(r_rad, g_rad, rg, k, counts_r, counts_g) -> list[float]:
    """The four values of one resample (``counts_*``: how often each row was drawn), the balls' radii those
    of the whole sets."""
    ur, ug = np.flatnonzero(counts_r), np.flatnonzero(counts_g)
    wr, wg = counts_r[ur].astype(np.float64), counts_g[ug].astype(np.float64)
    d = rg[np.ix_(ur, ug)]
    inside = d < r_rad[ur, None]
    n_r, n_g = wr.sum(), wg.sum()
    return [float(wg @ inside.any(axis=0) / n_g), float(wr @ (d < g_rad[None, ug]).any(axis=1) / n_r),
            float(wg @ (wr @ inside) / (n_g * k)), float(wr @ (d.min(axis=1) < r_rad[ur]) / n_r)]


def bootstrap(real: np.ndarray, generated: np.ndarray, k: int, resamples: int, seed: int,
              prepared: tuple | None = None) -> np.ndarray | None:
    """(resamples, 4) resampled values (see the module docstring), or None above ``BOOT_LIMIT`` rows."""
    if resamples < 2 or max(len(real), len(generated)) > BOOT_LIMIT:
        return None
    r, g, r_sq, g_sq, r_rad, g_rad = prepared or _prepare(real, generated, k)
    rg = distances(r, g, r_sq, g_sq)
    rng = np.random.default_rng([seed, 0x9D0C])
    out = np.empty((resamples, 4))
    for b in range(resamples):
        counts_r = rng.multinomial(len(r), np.full(len(r), 1.0 / len(r)))
        counts_g = rng.multinomial(len(g), np.full(len(g), 1.0 / len(g)))
        out[b] = _resampled_values(r_rad, g_rad, rg, k, counts_r, counts_g)
    return out


def prdc(real: np.ndarray | None, generated: np.ndarray | None, *, k: int, resamples: int, seed: int,
         features: str, exact: bool) -> Prdc | None:
    """The report's section from two sets of rows; None when k is 0 or a set has no more than k rows.
    ``features`` says which features the rows are; ``exact``: every image's row is there."""
    if not k or real is None or generated is None or min(len(real), len(generated)) <= k:
        return None
    prepared = _prepare(real, generated, k)  # norms and radii once, for the values and the bootstrap
    v = values(real, generated, k, prepared)
    samples = bootstrap(real, generated, k, resamples, seed, prepared)
    note = None
    if samples is None and resamples >= 2:
        note = (f"no intervals: more than {BOOT_LIMIT} rows in a set (the values use all "
                f"{len(real)} + {len(generated)} rows)")
    out = {}
    for j, name in enumerate(NAMES):
        ci = None
        if samples is not None:
            lo, med, hi = np.percentile(samples[:, j], [2.5, 50, 97.5])
            top = np.inf if name == "density" else 1.0
            ci = (float(np.clip(v[name] - (med - lo), 0.0, top)), float(np.clip(v[name] + (hi - med), 0.0, top)))
        out[name] = PrdcValue(value=v[name], ci95=ci)
    return Prdc(features=features, k=k, real_rows=len(real), generated_rows=len(generated), exact=exact,
                resamples=0 if samples is None else len(samples), note=note, **out)


def text(p: Prdc) -> str:
    """The four values in the headline's words."""
    return (f"precision {p.precision.value:.3f}, recall {p.recall.value:.3f}, density {p.density.value:.3f}, "
            f"coverage {p.coverage.value:.3f} (k = {p.k}, {p.features} features)")


class _Prdc(Plugin):
    """Precision, recall, density and coverage as a metric (plugins.py), on the FID network's kept rows."""

    name = "prdc"
    uses = frozenset({FEATURES})
    fields = ("prdc",)

    def wanted(self, options) -> bool:
        return options.fid_on and options.prdc_k > 0

    def section(self, r, g, ctx) -> dict:
        rows = ctx.sections.get("feature_rows")
        return dict(prdc=of_options(r.feature_rows(), g.feature_rows(), ctx.options, "network",
                                    rows is not None and not rows.capped))

    def headline(self, sections: dict) -> tuple[dict, str | None, list[str]]:
        p = sections.get("prdc")
        if p is None:
            return {}, None, []
        return {name: getattr(p, name).value for name in NAMES}, text(p), []


def of_options(real, generated, options, features: str, exact: bool) -> Prdc | None:
    """``prdc`` with a job's options (``prdc_k``, its bootstrap resamples and seed)."""
    return prdc(real, generated, k=options.prdc_k, resamples=options.bootstrap_resamples, seed=options.seed,
                features=features, exact=exact)


PLUGIN = _Prdc()
