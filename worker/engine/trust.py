"""The trust level of a report: can a person act on this FID?

PROVISIONAL RULE. The thresholds below are placeholders until the validation study
(bench/validation, docs/VALIDATION.md) measures on real images how latent variance and the MC-FID
spread grow away from natural photos, and replaces them. The baseline the rule compares against
(``trust_baseline.json``) is the mean latent variance of natural photos under the default MC
settings; it ships inside the package and records the settings it was measured with.

Signals, each turned into a reason a person can read:
- latent variance of each set relative to the natural-image baseline (out-of-distribution inputs
  make the sampled networks disagree about their embedding);
- relative spread of the MC-dropout FID (std / mean);
- the number of images (FID is biased upward and noisy with few images; the bootstrap shows how much);
- statistics from another tool, whose weights and preprocessing cannot be verified.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from app.schemas import FidBootstrap, FidMC, LatentVariance, Trust

BASELINE_FILE = Path(__file__).with_name("trust_baseline.json")

# Provisional thresholds (see module docstring).
VARIANCE_RATIO_MEDIUM = 1.5
VARIANCE_RATIO_LOW = 2.5
MC_CV_MEDIUM = 0.10
MC_CV_LOW = 0.25
FEW_IMAGES = 50


@lru_cache
def baseline() -> dict:
    return json.loads(BASELINE_FILE.read_text())


def assess(*, fid: float, mc: FidMC, bootstrap: FidBootstrap, latent: LatentVariance,
           n_real: int, n_generated: int, foreign: bool) -> Trust:
    reasons: list[str] = []
    penalties: list[float] = []  # 0 = no concern, 1 = do not trust

    base = baseline()["latent_variance_mean"]
    matches_baseline = mc.passes > 0
    for name, side in (("real", latent.real), ("generated", latent.generated)):
        if side.mean is None or not matches_baseline:
            continue
        ratio = side.mean / base
        if ratio >= VARIANCE_RATIO_LOW:
            penalties.append(1.0)
            reasons.append(f"latent variance of the {name} set is {ratio:.1f}x the natural-image baseline: "
                           "the network's features are unstable on these images (likely outside its "
                           "training domain)")
        elif ratio >= VARIANCE_RATIO_MEDIUM:
            penalties.append(0.5)
            reasons.append(f"latent variance of the {name} set is {ratio:.1f}x the natural-image baseline")

    if mc.passes > 1 and mc.mean:
        cv = (mc.std or 0.0) / mc.mean
        if cv >= MC_CV_LOW:
            penalties.append(1.0)
            reasons.append(f"the FID moves by {100 * cv:.0f}% (std/mean) across {mc.passes} dropout-perturbed "
                           "networks")
        elif cv >= MC_CV_MEDIUM:
            penalties.append(0.5)
            reasons.append(f"the FID moves by {100 * cv:.0f}% (std/mean) across dropout-perturbed networks")
    elif mc.passes == 0:
        penalties.append(0.5)
        reasons.append("no MC-dropout passes were run (or one side's statistics have none), so model "
                       "uncertainty is unknown")

    known = [n for n in (n_real, n_generated) if n > 0]
    if known and min(known) < FEW_IMAGES:
        penalties.append(0.5)
        reasons.append(f"only {min(known)} images in a set: FID is biased upward and noisy at this size; "
                       "compare only FIDs computed with the same number of images")
    if bootstrap.ci95 is not None and fid > 0:
        width = (bootstrap.ci95[1] - bootstrap.ci95[0]) / fid
        if width > 0.5:
            penalties.append(0.5)
            reasons.append(f"the bootstrap 95% interval over images spans {100 * width:.0f}% of the FID")
    if foreign:
        penalties.append(0.5)
        reasons.append("one side is statistics from another tool: its weights and preprocessing cannot be "
                       "verified")

    worst = max(penalties, default=0.0)
    score = max(0.0, 1.0 - sum(penalties) / 2.0)
    level = "low" if worst >= 1.0 or score < 0.34 else "medium" if worst > 0 else "high"
    if not reasons:
        reasons.append("latent variance and MC-FID spread are within the natural-image range")
    return Trust(level=level, score=round(score, 3), reasons=reasons)
