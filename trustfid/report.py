"""From two sets' statistics to the report: plain FID, the MC-dropout FID distribution, a bootstrap
interval over images, the headline that leads with both, latent-variance summaries, the domain
check and the trust level (KID and FID∞ are in kid.py).

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
from .inputs.intensity import EIGHT_BIT, FLOAT_01
from .inputs.rules import plural
from .schemas import (
    AtypicalImage,
    Domain,
    FeatureRows,
    FidBootstrap,
    FidMC,
    Frd,
    ImageVariance,
    LatentVariance,
    SetDomain,
    SetRows,
    SetVariance,
    Trust,
    VarianceSummary,
)
from .stats import Gaussian, SetStats
from .trust import assess, baseline

AS_GIVEN = "values as given (8-bit, or float in [0, 1])"
FEW_RESAMPLES = 10  # an interval from fewer passes or resamples than this gets a warning

PASS_GROUP = 4  # passes whose d x d matrices are held at once in the Fréchet step


def _ci95(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def fid_mc(real: SetStats, generated: SetStats, device=None) -> FidMC:
    """The FID of every MC pass; ``device`` (a CUDA GPU) runs the float64 Fréchet step there."""
    passes = min(len(real.mc), len(generated.mc))
    samples = []
    for start in range(0, passes, PASS_GROUP):  # a group's Gaussians at a time: memory stays bounded
        group = range(start, min(start + PASS_GROUP, passes))
        samples += frechet_distances([(real.mc[t].gaussian(), generated.mc[t].gaussian()) for t in group],
                                     group=PASS_GROUP, **({"device": device} if device is not None else {}))
    if not samples:
        return FidMC(passes=0)
    s = np.asarray(samples)
    return FidMC(passes=passes, mean=float(s.mean()), std=float(s.std(ddof=1)) if passes > 1 else None,
                 ci95=_ci95(s), samples=[float(v) for v in s])


def resampled(rows: np.ndarray, rng: np.random.Generator) -> Gaussian:
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
    return bootstrap(real, generated, resamples, seed)[0]


def bootstrap(real: SetStats, generated: SetStats, resamples: int, seed: int) -> tuple[FidBootstrap, np.ndarray | None]:
    """The bootstrap summary and its resampled FIDs (the kept feature rows, resampled with replacement)."""
    r, g = real.feature_rows(), generated.feature_rows()
    if resamples < 2 or r is None or g is None or len(r) < 2 or len(g) < 2:
        return FidBootstrap(resamples=0), None
    rng = np.random.default_rng([seed, 0xB007])
    s = np.asarray([frechet_distance(resampled(r, rng), resampled(g, rng)) for _ in range(resamples)])
    return FidBootstrap(resamples=resamples, ci95=_ci95(s), std=float(s.std(ddof=1))), s


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


def trust(fid: float, mc: FidMC, boot: FidBootstrap, domain: Domain, real: SetStats, generated: SetStats) -> Trust:
    return assess(fid=fid, mc=mc, bootstrap=boot, domain=domain, n_real=real.n, n_generated=generated.n,
                  foreign=real.provenance is None or generated.provenance is None)


def intensity_finding(real: dict[str, int], generated: dict[str, int]) -> str | None:
    """A finding when the two sets' images were brought to 0..255 by different intensity mappings (bit depths,
    DICOM windows), or one set mixes them (``SetStats.intensity``: images per mapping); None when all agree.
    8-bit values and floats in [0, 1] count as one mapping: both are the values as given."""
    def families(counts: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, n in counts.items():
            key = AS_GIVEN if name in (EIGHT_BIT, FLOAT_01) else name
            out[key] = out.get(key, 0) + n
        return out

    def listed(counts: dict[str, int]) -> str:
        most_first = sorted(counts.items(), key=lambda kv: -kv[1])
        return " and ".join(f"'{name}' ({plural(n, 'image')})" for name, n in most_first)

    sides = {"real": families(real), "generated": families(generated)}
    parts = [f"the {side} set mixes {listed(c)}" for side, c in sides.items() if len(c) > 1]
    if not parts and all(sides.values()) and set(sides["real"]) != set(sides["generated"]):
        parts.append(f"the real set was read as {listed(sides['real'])} and the generated set as "
                     f"{listed(sides['generated'])}")
    if not parts:
        return None
    return ("intensities were mapped to 0..255 differently: " + "; ".join(parts) + ". Images of other bit depths "
            "or windows differ in brightness and contrast for reasons that are not the generator's, and the "
            "distances count that: store both sets alike, or give one fixed window (--window) for both")


# --- the headline ----------------------------------------------------------------------------------

def _g(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def fid_headline(fid: float, mc: FidMC | None, boot_samples: np.ndarray | None,
                 rows: FeatureRows | None) -> tuple[dict, str, list[str]]:
    """The FID's part of the headline (fid.py): its fields, its text and its warnings. The plain FID with two
    95% intervals about it (schemas.Headline says how they are made)."""
    warnings = []
    sampling = None
    resamples = 0 if boot_samples is None else len(boot_samples)
    if resamples >= 2:
        lo, med, hi = np.percentile(boot_samples, [2.5, 50, 97.5])
        sampling = (max(0.0, float(fid + lo - med)), float(fid + hi - med))
    network, rel = None, None
    if mc is not None and mc.passes >= 2 and mc.samples:
        s = np.asarray(mc.samples)
        lo, med, hi = np.percentile(s, [2.5, 50, 97.5])
        if med > 0:
            network = (float(fid * lo / med), float(fid * hi / med))
        rel = float(s.std(ddof=1) / s.mean()) if s.mean() > 0 else None
    text = f"FID {fid:.2f}"
    if sampling:
        text += (f", 95% interval {_g(sampling[0])}–{_g(sampling[1])} from resampling the images "
                 f"({resamples} resamples)")
    else:
        text += " (no sampling interval: bootstrap off)"
        warnings.append("no sampling interval: the bootstrap over images was off (bootstrap_resamples < 2)")
    if network and rel is not None:
        text += (f"; the network's own uncertainty moves it by ±{100 * rel:.1f}% "
                 f"({_g(network[0])}–{_g(network[1])}, {mc.passes} dropout passes)")
    passes = mc.passes if mc is not None else 0
    for what, n in (("sampling", resamples if sampling else None), ("network", passes if network else None)):
        if n is not None and n < FEW_RESAMPLES:
            unit = "resamples" if what == "sampling" else "dropout passes"
            warnings.append(f"the {what} interval rests on only {n} {unit} (fewer than {FEW_RESAMPLES}): "
                            "its ends are rough")
    if rows is not None and rows.capped and sampling:
        warnings.append(f"the sampling interval, KID, FID∞ and precision/recall/density/coverage use "
                        f"{rows.generated.kept} of {rows.generated.used} generated and {rows.real.kept} of "
                        f"{rows.real.used} real images (max_feature_rows "
                        f"{rows.cap}): the interval is wider than the whole set's")
    fields = dict(fid=fid, sampling_ci95=sampling, resamples=resamples if sampling else 0, network_ci95=network,
                  network_relative_std=rel, passes=passes)
    return fields, text, warnings


def frd_text(frd: Frd) -> str:
    """The FRD in the headline's words."""
    if frd.value is None:
        return "FRD: the two sets' radiomic features have identical statistics (d² = 0)"
    text = f"FRD {frd.value:.3f} ({frd.log}, radiomics, frd-score {frd.version})"
    if frd.sampling_ci95:
        text += (f", 95% interval {frd.sampling_ci95[0]:.3f}–{frd.sampling_ci95[1]:.3f} from resampling the images "
                 f"({frd.resamples} resamples)")
    return text


def point_to_frd(trust: Trust, frd: Frd | None, mode: str) -> None:
    """A reference outside the FID network's domain: the trust reason names the distance to use instead."""
    if frd is not None and frd.value is not None:
        hint = (f": use the Fréchet Radiomics Distance in this report instead (FRD {frd.value:.3f}, radiomic "
                "features that need no network; compare it only with FRDs against this reference)")
    elif mode == "auto":
        hint = (": frd:auto found it so, but the FRD could not be computed here (a set given as statistics saved "
                "without radiomic features: recompute them with metrics fid,frd)")
    else:
        hint = (": add frd to metrics (or frd:auto) for the Fréchet Radiomics Distance, a radiomics distance "
                "that needs no network (the medical extra)")
    trust.reasons[0] += hint
def feature_rows(real: SetStats, generated: SetStats, cap: int) -> FeatureRows | None:
    r, g = real.feature_rows(), generated.feature_rows()
    if r is None or g is None:
        return None
    return FeatureRows(cap=cap, capped=len(r) < real.n or len(g) < generated.n,
                       real=SetRows(kept=len(r), used=real.n), generated=SetRows(kept=len(g), used=generated.n))


# --- the domain check ---------------------------------------------------------------------------------

def _png_data_uri(im: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(im, np.uint8)).save(buf, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def domain_scores(stats: SetStats, model) -> np.ndarray | None:
    return model.score_stats(stats.per_image, stats.n)


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, p)) if k > 0 else 1.0


def set_domain(stats: SetStats, scores: np.ndarray, spec: dict, bins: np.ndarray, top_k: int) -> SetDomain:
    threshold, rate = spec["threshold"], spec["natural_rate"]
    above = int(np.sum(scores > threshold))
    order = np.argsort(-scores, kind="stable")[:top_k]
    thumbs: dict = {}
    for name, _, im in stats.thumbnails:  # matched by name (the collector scored the same inputs)
        thumbs.setdefault(name, im)
    atypical = []
    for i in order:
        im = thumbs.get(stats.names[i])
        atypical.append(AtypicalImage(name=stats.names[i], domain_score=float(scores[i]),
                                      thumbnail=_png_data_uri(im) if im is not None else None))
    hist = np.histogram(np.clip(scores, bins[0], bins[-1]), bins=bins)[0]
    return SetDomain(images=len(scores), mean=float(scores.mean()), median=float(np.median(scores)),
                     p95=float(np.percentile(scores, 95)), above=above, fraction_above=above / len(scores),
                     p_value=binomial_sf(above, len(scores), rate), histogram=[int(c) for c in hist],
                     most_atypical=atypical)


def domain(real: SetStats | None, generated: SetStats, weights_sha256: str, resize: str, top_k: int) -> Domain:
    """The domain check of both sets (``real`` None: inspect's single set goes in ``generated``)."""
    from .extras import shipped_model

    spec = baseline().get("domain")
    model = shipped_model(weights_sha256, resize)
    if spec is None or model is None:
        note = ("the shipped domain model was measured with other weights or another resize mode"
                if spec else "this installation ships no domain model")
        return Domain(available=False, note=note)
    sides = {"real": real, "generated": generated}
    scores = {k: domain_scores(v, model) for k, v in sides.items() if v is not None}
    q = spec["natural_quantiles"]
    known = [s for s in scores.values() if s is not None and len(s)]
    lo = min([q["value"][0]] + [float(s.min()) for s in known])
    hi = max([q["value"][-1]] + [float(s.max()) for s in known])
    bins = np.linspace(lo, hi + 1e-9, 25)
    out = {k: set_domain(sides[k], s, spec, bins, max(top_k, 3)) if s is not None else None for k, s in scores.items()}
    missing = [k for k, v in sides.items() if v is not None and out.get(k) is None]
    return Domain(available=True, model=model.describe(), threshold=spec["threshold"],
                  natural_rate=spec["natural_rate"], natural_median=float(np.interp(0.5, q["q"], q["value"])),
                  bins=[float(b) for b in bins], real=out.get("real"), generated=out.get("generated"),
                  note=(f"no domain inputs for the {' and '.join(missing)} set" if missing else None))
