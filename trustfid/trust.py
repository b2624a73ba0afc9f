"""The trust level of a report: can a person act on this FID?

Calibrated by the validation study (``python -m bench.validation``; method, tables and plots in
docs/VALIDATION.md). Everything the rule compares against — the domain model's coefficients, the
natural photos' distribution of its score, the latent-variance baseline, how each number was derived
and what the study found — is in ``trust_baseline.json`` next to this file, written by the study and
shipped in the package. The only hand-set numbers are the sample-size checks at the bottom, which the
study did not calibrate, and the three constants of the domain test below, which were fixed before
the study was run (not tuned on its data; docs/VALIDATION.md says why these values).

The domain check. Every image gets a domain score (domain.py: a small logistic model over the
network's own batch-norm statistics and the embedding norm; higher = less like a natural photo). The
study stores the natural photos' distribution of that score, scored out of fold (each photo by a model
fitted without it). For each set the rule counts the images above the natural photos' 90% quantile
(``natural_rate`` = 10% of natural photos score above it; 90% rather than 97.5% because the study
found that one atypical photo among eleven sets any higher quantile). A one-sided binomial test asks
whether the set has more than that share, and the share says how much more:

- share >= ``fraction_low`` (a majority) and p < ``alpha`` -> concern 1.0: most of the set does not
  look like natural photos to this network, so its FID does not measure what it measures on photos;
- share >= ``fraction_medium`` and p < ``alpha`` -> concern 0.5;
- otherwise no concern; the reason still says how many images scored outside the natural range.

Sample size (not calibrated by the study): fewer than ``FEW_IMAGES`` images in a set, or a bootstrap
95% interval wider than ``BOOTSTRAP_WIDTH`` x the FID. Statistics from another tool: their weights and
preprocessing cannot be verified, and they carry no domain inputs.

Level: any concern worth 1.0 -> low; the score is 1 - (sum of concerns) / 2 and below 0.34 -> low;
any concern -> medium; none -> high.

How far it holds (docs/VALIDATION.md): per-image AUROC natural vs medical 0.92 under cross-validation
by source image, 0.68 on held-out sources; medical sets, and natural photos under severe noise, blur
or contrast loss, are rated low; JPEG and pixelation at severity 5 are not caught; flat, blurred or
textured grayscale photos are false alarms (the reasons say so and name the files).

What was dropped, by the study's findings: the set's mean latent variance against its natural
baseline (it separated medical from natural images with AUROC 0.72 and rated a mixed medical set
"high"), and the MC-FID spread (a flat 2-3% of the FID on every set). Both are still reported.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .schemas import FidBootstrap, FidMC, SetDomain, Trust

BASELINE_FILE = Path(__file__).with_name("trust_baseline.json")

# Not calibrated by the validation study (sampling uncertainty, not the network's domain).
FEW_IMAGES = 50
BOOTSTRAP_WIDTH = 0.5

LEVEL_MEANING = {
    "high": "The images look like the natural photos the FID network was trained on and the sample is large "
            "enough: compare this FID with others computed the same way (same resize, similar image counts).",
    "medium": "Something limits this FID (see the reasons): use it to compare runs on the same data, not as an "
              "absolute quality number, and fix what the reasons name (more images, a check of the flagged files).",
    "low": "This FID does not measure what it measures on natural photos (or rests on too little data): do not "
           "act on it; use a domain-specific feature extractor or a reader study for these images.",
}


@lru_cache
def baseline() -> dict:
    return json.loads(BASELINE_FILE.read_text())


def _names(side: SetDomain, k: int = 3) -> str:
    return ", ".join(im.name for im in side.most_atypical[:k])


def domain_concerns(domain, *, base: dict | None = None) -> list[tuple[float, str]]:
    """(penalty, reason) pairs from the report's domain check (schemas.Domain or None)."""
    base = base or baseline()
    spec = base.get("domain")
    if domain is None or not domain.available or spec is None:
        why = (domain.note if domain is not None and domain.note else
               "no domain model for this network and preprocessing")
        return [(0.5, f"the domain check could not be made ({why}): whether these images suit an Inception "
                      "network trained on photos is unknown")]
    rule = spec["rule"]
    rate = spec["natural_rate"]
    out, quiet = [], []
    for name in ("real", "generated"):
        side: SetDomain | None = getattr(domain, name)
        if side is None:
            out.append((0.5, f"the {name} set has no domain scores (statistics saved without them, or from "
                             "another tool): its domain is unknown"))
            continue
        pct = 100 * side.fraction_above
        significant = side.p_value < rule["alpha"]
        where = (f"{pct:.0f}% of the {name} images score above {100 * (1 - rate):.0f}% of natural photos "
                 f"({side.above} of {side.images}; natural photos: {100 * rate:.0f}%, p = {side.p_value:.2g})")
        atypical = f"; most atypical: {_names(side)}" if side.most_atypical else ""
        caveat = (" (look at them: in the validation study flat or blurred grayscale photos and grayscale textures "
                  "also scored here)")
        if significant and side.fraction_above >= rule["fraction_low"]:
            out.append((1.0, f"{where}{atypical}. To this network most of these images do not look like natural "
                             f"photos, so the FID does not measure what it measures on photos{caveat}"))
        elif significant and side.fraction_above >= rule["fraction_medium"]:
            out.append((0.5, f"{where}{atypical}. Many images do not look like natural photos to this network: "
                             f"check them before relying on the FID{caveat}"))
        else:
            quiet.append(f"{name} {pct:.0f}%")
    if quiet:
        out.append((0.0, f"domain check: images scoring above {100 * (1 - rate):.0f}% of natural photos: "
                         + ", ".join(quiet) + f" (natural photos: {100 * rate:.0f}%; a concern from "
                         f"{100 * rule['fraction_medium']:.0f}%)"))
    return out


def assess(*, fid: float, mc: FidMC, bootstrap: FidBootstrap, domain, n_real: int, n_generated: int,
           foreign: bool) -> Trust:
    concerns: list[tuple[float, str]] = list(domain_concerns(domain))

    known = [n for n in (n_real, n_generated) if n > 0]
    if known and min(known) < FEW_IMAGES:
        concerns.append((0.5, f"only {min(known)} images in a set: FID is biased upward and noisy at this size; "
                              "compare only FIDs computed with the same number of images, or use KID / FID∞"))
    if bootstrap.ci95 is not None and fid > 0:
        width = (bootstrap.ci95[1] - bootstrap.ci95[0]) / fid
        if width > BOOTSTRAP_WIDTH:
            concerns.append((0.5, f"the bootstrap 95% interval over images spans {100 * width:.0f}% of the FID"))
    if foreign:
        concerns.append((0.5, "one side is statistics from another tool: its weights and preprocessing cannot "
                              "be verified"))
    if mc.passes == 0:
        concerns.append((0.0, "no MC-dropout passes were run: the network's own uncertainty is not reported"))

    penalties = [p for p, _ in concerns if p > 0]
    worst = max(penalties, default=0.0)
    score = max(0.0, 1.0 - sum(penalties) / 2.0)
    level = "low" if worst >= 1.0 or score < 0.34 else "medium" if worst > 0 else "high"
    # concerns first, the informational notes last
    reasons = [r for p, r in concerns if p > 0] + [r for p, r in concerns if p == 0]
    return Trust(level=level, score=round(score, 3), reasons=reasons)
