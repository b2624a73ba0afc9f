"""From two sets' statistics to the report: plain FID, the MC-dropout FID distribution, a bootstrap
interval over images, latent-variance summaries and the trust level.

Two kinds of uncertainty, reported apart:
- ``fid_mc``: model uncertainty — how much the FID moves when the embedding network itself is
  perturbed by dropout (T sampled networks θ_t). Large spread = the network's features for these
  images are unstable = the number rests on shaky features.
- ``fid_bootstrap``: sampling uncertainty — how much the FID moves when the images are resampled
  with replacement (the plain network, B resamples). Large spread = too few images.
"""

from __future__ import annotations

import numpy as np

from .frechet import frechet_distance, frechet_distances
from .schemas import (
    FidBootstrap,
    FidMC,
    ImageVariance,
    LatentVariance,
    SetVariance,
    Trust,
    VarianceSummary,
)
from .stats import Gaussian, SetStats
from .trust import assess

PASS_GROUP = 4  # passes whose d x d matrices are held at once in the Fréchet step


def _ci95(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def fid_mc(real: SetStats, generated: SetStats) -> FidMC:
    passes = min(len(real.mc), len(generated.mc))
    samples = []
    for start in range(0, passes, PASS_GROUP):  # a group's Gaussians at a time: memory stays bounded
        group = range(start, min(start + PASS_GROUP, passes))
        samples += frechet_distances([(real.mc[t].gaussian(), generated.mc[t].gaussian()) for t in group],
                                     group=PASS_GROUP)
    if not samples:
        return FidMC(passes=0)
    s = np.asarray(samples)
    return FidMC(passes=passes, mean=float(s.mean()), std=float(s.std(ddof=1)) if passes > 1 else 0.0,
                 ci95=_ci95(s), samples=[float(v) for v in s])


def _resampled(rows: np.ndarray, rng: np.random.Generator) -> Gaussian:
    n = len(rows)
    counts = rng.multinomial(n, np.full(n, 1.0 / n))
    keep = counts > 0
    x, c = rows[keep].astype(np.float64), counts[keep].astype(np.float64)
    mu = (c @ x) / n
    factor = (x - mu) * np.sqrt(c / (n - 1))[:, None]
    if len(x) <= x.shape[1]:
        return Gaussian(n, mu, weighted_factor=factor)  # S = F^T F
    return Gaussian(n, mu, sigma=factor.T @ factor)


def fid_bootstrap(real: SetStats, generated: SetStats, resamples: int, seed: int) -> FidBootstrap:
    r, g = real.plain.rows(), generated.plain.rows()
    if resamples < 2 or r is None or g is None or len(r) < 2 or len(g) < 2:
        return FidBootstrap(resamples=0)
    rng = np.random.default_rng([seed, 0xB007])
    s = np.asarray([frechet_distance(_resampled(r, rng), _resampled(g, rng)) for _ in range(resamples)])
    return FidBootstrap(resamples=resamples, ci95=_ci95(s), std=float(s.std(ddof=1)))


def summarize(values: np.ndarray) -> VarianceSummary:
    if len(values) == 0:
        return VarianceSummary()
    return VarianceSummary(mean=float(np.mean(values)), median=float(np.median(values)),
                           p95=float(np.percentile(values, 95)))


def set_variance(stats: SetStats, top_k: int) -> SetVariance:
    v = np.asarray(stats.latent_variance, np.float64)
    order = np.argsort(-v, kind="stable")[:top_k]
    return SetVariance(**summarize(v).model_dump(),
                       most_uncertain=[ImageVariance(name=stats.names[i], latent_variance=float(v[i]))
                                       for i in order])


def latent_variance(real: SetStats, generated: SetStats, top_k: int) -> LatentVariance:
    return LatentVariance(real=set_variance(real, top_k), generated=set_variance(generated, top_k))


def trust(fid: float, mc: FidMC, boot: FidBootstrap, lv: LatentVariance,
          real: SetStats, generated: SetStats) -> Trust:
    return assess(fid=fid, mc=mc, bootstrap=boot, latent=lv, n_real=real.n, n_generated=generated.n,
                  foreign=real.provenance is None or generated.provenance is None,
                  settings=real.provenance or generated.provenance)
