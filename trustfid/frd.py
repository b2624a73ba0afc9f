"""The Fréchet Radiomics Distance (FRD v1; Osuala et al. 2024, Konz et al. 2025) from two sets' radiomic
statistics, equal to frd-score 1.0's ``compute_frd`` (radiomics.py computes the features).

frd-score v1, step by step, and where each step sits here:

1. features of every image (radiomics.py), cast to float32; images with a NaN feature are dropped from
   their set. Here: ``RadiomicsStats.add`` (the dropped images are listed as skipped).
2. z-score against the reference set (D1): z = (x - mean_1) / std_1, with the reference's mean and its
   standard deviation with ddof 0, for both sets. The map is affine, so the z-scored sets' mean and
   covariance follow from the raw moments: mu_z = (mu - mean_1) / std_1, S_z = S / (std_1 std_1^T).
   We keep raw moments (float64, streaming, merged across shards), so one reference serves many
   generated sets and shards merge exactly; frd-score does this arithmetic in float32 (differences
   of about 1e-7 relative).
3. columns whose z-scores hold NaN or Inf in either set are dropped: a feature constant over the
   reference (std_1 = 0) or non-finite anywhere. Here: per-column min and max, kept in the statistics.
4. Fréchet distance d² of the two Gaussians (frechet.py, exact, in numpy; frd-score uses scipy's sqrtm).
5. FRD = log(d²) (frd-score's default, "the original code convention"); with ``frd_paper_log``,
   log(d) = log(d²) / 2 as the paper's Eq. 3 writes it. The log sits after the distance: the
   statistics hold raw moments, never logs.

The 95% sampling interval resamples the kept feature rows (a capped, seeded sample, as for KID) of
both sets with replacement and recomputes all of steps 2-5, the reference's mean and std included.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError
from .plugin import RADIOMICS, Plugin
from .schemas import Frd, FrdSet
from .stats import Gaussian, RadiomicsStats, check_compatible

# --- the distance --------------------------------------------------------------------------------

def _variance0(g: Gaussian) -> np.ndarray:
    """Per-feature variance with ddof 0 (numpy's std, as frd-score's nanstd)."""
    diag = np.diag(g.sigma) if g.sigma is not None else np.sum(g.factor() ** 2, axis=0)
    return diag * (g.n - 1) / g.n


def _standardised(g: Gaussian, mean: np.ndarray, std: np.ndarray, keep: np.ndarray) -> Gaussian:
    """The Gaussian of (x - mean) / std over the kept features."""
    mu = (g.mu[keep] - mean[keep]) / std[keep]
    if g.sigma is not None:
        return Gaussian(g.n, mu, sigma=g.sigma[np.ix_(keep, keep)] / np.outer(std[keep], std[keep]))
    return Gaussian(g.n, mu, weighted_factor=g.factor()[:, keep] / std[keep])


def distance_squared(real: Gaussian, generated: Gaussian, usable: np.ndarray) -> tuple[float, int]:
    """(d², features used): steps 2-4 of the module docstring, on raw-feature Gaussians; ``usable`` the
    features finite in both sets."""
    from .frechet import NUMPY, frechet_distance

    std = np.sqrt(_variance0(real))
    keep = usable & np.isfinite(real.mu) & np.isfinite(generated.mu) & np.isfinite(std) & (std > 0)
    if not keep.any():
        raise InputError("FRD: no radiomic feature varies over the reference set (every one is constant or "
                         "undefined); it needs at least two differing reference images")
    d2 = frechet_distance(_standardised(real, real.mu, std, keep), _standardised(generated, real.mu, std, keep),
                          NUMPY)  # numpy's LAPACK: a job of metrics frd never imports torch
    return d2, int(keep.sum())


def log_distance(d2: float, paper_log: bool) -> float | None:
    """FRD from d²: log(d²), or log(d) with the paper's Eq. 3; None when d² is 0 (identical sets; frd-score
    prints -inf)."""
    if d2 <= 0:
        return None
    return 0.5 * math.log(d2) if paper_log else math.log(d2)


def _usable(real: RadiomicsStats, generated: RadiomicsStats) -> np.ndarray:
    """Features that stay finite after z-scoring in frd-score: finite everywhere, not constant over the
    reference (its std would be 0)."""
    finite = np.isfinite(real.low) & np.isfinite(real.high) & np.isfinite(generated.low) & np.isfinite(generated.high)
    return finite & (real.high > real.low)


def bootstrap(real: RadiomicsStats, generated: RadiomicsStats, resamples: int, seed: int,
              paper_log: bool) -> np.ndarray | None:
    """FRDs of ``resamples`` resamples of both sets' kept rows (None when a set has fewer than 2)."""
    from .report import resampled

    r, g = real.kept.rows(), generated.kept.rows()
    if resamples < 2 or len(r) < 2 or len(g) < 2:
        return None
    rng = np.random.default_rng([seed, 0xF2D])
    usable = _usable(real, generated)
    out = []
    for _ in range(resamples):
        gr, gg = resampled(r, rng), resampled(g, rng)
        try:
            d2, _ = distance_squared(gr, gg, usable)
        except InputError:  # a resample whose reference is constant in every feature
            continue
        value = log_distance(d2, paper_log)
        if value is not None:
            out.append(value)
    return np.asarray(out) if len(out) >= 2 else None


def standardised_rows(real: RadiomicsStats, generated: RadiomicsStats) -> tuple[np.ndarray, np.ndarray]:
    """Both sets' kept rows of the features the FRD uses, z-scored against the reference as the FRD does (its
    mean and std with ddof 0 over all its images): the rows precision, recall, density and coverage read."""
    g = real.moments.gaussian()
    std = np.sqrt(_variance0(g))
    keep = _usable(real, generated) & np.isfinite(g.mu) & np.isfinite(std) & (std > 0)
    return tuple((s.kept.rows()[:, keep].astype(np.float64) - g.mu[keep]) / std[keep] for s in (real, generated))


def check_frd_stats(side: RadiomicsStats | None, set_name: str, source: str, expected: dict) -> RadiomicsStats:
    if side is None:
        raise InputError(f"the {set_name} set's statistics ({source}) hold no radiomic features, so no FRD can be "
                         "computed from them: recompute them with metrics fid,frd (trustfid stats --metrics fid,frd)",
                         code="no_radiomics")
    check_compatible(side.provenance, expected, "radiomic statistics and this engine")
    if side.n < 2:
        raise InputError(f"FRD: the {set_name} set has {side.n} image(s) with radiomic features; at least 2 are "
                         "needed" + (f" ({len(side.skipped)} gave NaN features)" if side.skipped else ""),
                         code="too_few_images")
    return side


def frd(real: RadiomicsStats, generated: RadiomicsStats, *, resamples: int, seed: int,
        paper_log: bool = False) -> tuple[Frd, np.ndarray | None]:
    """The report's ``frd`` field and the bootstrap's FRDs."""
    d2, used = distance_squared(real.moments.gaussian(), generated.moments.gaussian(), _usable(real, generated))
    value = log_distance(d2, paper_log)
    samples = bootstrap(real, generated, resamples, seed, paper_log)
    ci = None
    if value is not None and samples is not None:
        lo, med, hi = np.percentile(samples, [2.5, 50, 97.5])
        ci = (float(value + lo - med), float(value + hi - med))
    return Frd(value=value, distance_squared=d2, log="log(d)" if paper_log else "log(d²)",
               version=real.provenance["frd_version"], config_sha256=real.provenance["config_sha256"],
               pyradiomics=real.provenance["pyradiomics"], features=used, features_extracted=len(real.names),
               sampling_ci95=ci, resamples=0 if samples is None else len(samples),
               real=FrdSet(used=real.n, kept_rows=len(real.kept), skipped=sorted(real.skipped, key=_name)),
               generated=FrdSet(used=generated.n, kept_rows=len(generated.kept),
                                skipped=sorted(generated.skipped, key=_name))), samples


def _name(skipped) -> str:
    return skipped.name


class _Frd(Plugin):
    """The FRD as a metric (plugins.py): computed when metrics has frd, or frd:auto and the FID's domain check
    finds the reference outside the network's domain and both sets have radiomic statistics; with it,
    precision, recall, density and coverage on the radiomic features. A reference outside the domain gets
    the trust reason's pointer to it, or to how to get it: also when metrics left the FRD out."""

    name = "frd"
    fields = ("frd", "prdc_radiomics")

    def wanted(self, options) -> bool:
        return True  # without frd in metrics it computes nothing, but still points a reader to the FRD

    def needs(self, options) -> frozenset[str]:
        return frozenset({RADIOMICS}) if options.frd_mode == "on" else frozenset()  # frd:auto: pipeline.frd_auto

    def section(self, r, g, ctx) -> dict:
        from .radiomics import provenance as radiomics_provenance
        from .report import intensity_finding, point_to_frd

        options, trust = ctx.options, ctx.sections.get("trust")
        outside = trust is not None and trust.reference_domain == "outside"
        mode = options.frd_mode
        value = prdc_radiomics = None
        if mode == "on" or (mode == "auto" and outside and r.radiomics is not None and g.radiomics is not None):
            expected = radiomics_provenance(options.frd_reading)
            real, generated = (check_frd_stats(s.radiomics, name, s.source or name, expected)
                               for name, s in (("real", r), ("generated", g)))
            value, _ = frd(real, generated, resamples=options.bootstrap_resamples, seed=options.seed,
                           paper_log=options.frd_paper_log)
            if real.kept is not None and generated.kept is not None:
                from .prdc import of_options

                prdc_radiomics = of_options(*standardised_rows(real, generated), options, "radiomics",
                                            len(real.kept) == real.n and len(generated.kept) == generated.n)
        if outside:
            point_to_frd(trust, value, mode)
        # without the FID (whose trust findings carry it) the headline warns of sets read differently
        unlike = intensity_finding(r.intensity, g.intensity) if value is not None and trust is None else None
        return dict(frd=value, prdc_radiomics=prdc_radiomics, frd_intensity=unlike)

    def headline(self, sections: dict) -> tuple[dict, str | None, list[str]]:
        from .report import frd_text

        value = sections.get("frd")
        if value is None:
            return {}, None, []
        warnings = [w for w in (sections.get("frd_intensity"), few_images(value)) if w]
        return dict(frd=value.value, frd_ci95=value.sampling_ci95), frd_text(value), warnings


def few_images(f: Frd) -> str | None:
    """A warning when a set has fewer images than the FRD has features: its covariance is then singular (rank at
    most images - 1), so the distance is biased upward and moves from one sample of images to the next."""
    n = min(f.real.used, f.generated.used)
    if n > f.features:
        return None
    side = "real" if f.real.used == n else "generated"
    return (f"the FRD rests on {n} {side} images against {f.features} radiomic features: with no more images than "
            "features the covariance is singular, the FRD is biased upward and moves from one sample of images to "
            f"the next; compare it only with FRDs of the same set sizes, or use more than {f.features} images a set")


PLUGIN = _Frd()
