"""The trust level of a report: can a person act on this FID?

Calibrated by the validation study (``python -m bench.validation``; method, tables and plots in
docs/VALIDATION.md). Everything the rule compares against — the natural-image baseline of the latent
variance, the thresholds and how each was derived, the MC settings they were measured with and what
the study found — is in ``trust_baseline.json`` next to this file, written by the study and shipped
in the package. Nothing here is a hand-set number except the two sample-size checks at the bottom,
which the study did not calibrate (it says so).

Signals, each turned into a reason a person can read:

- Latent variance of each set (mean over its images of the per-image predictive variance across the
  T dropout passes) relative to the natural-image baseline. The study found that this ratio depends
  on image *content* about as much as on domain: across clean natural photos it spans roughly
  0.6-1.7x, so only a ratio above that whole range is evidence that the network is out of its depth
  (``variance_ratio_medium``: the upper 97.5% limit of the natural range), and a ratio above it by as
  much as severity-5 corruption raises a set (``variance_ratio_low``) means the features are not to be
  trusted. Inside the range the check is silent, and the study showed that silence is weak evidence:
  a mixed medical set stayed inside (see the reason text, which quotes the study's numbers).
- The comparison is only made when the report's MC network (dropout points, rate, kind, resize and
  weights) is the one the baseline was measured with; otherwise the reason says it was skipped.
  T, the seed and the mask mode do not change the expected latent variance, so they may differ.
- The spread of the MC-dropout FID is *not* used for the level: the study found its coefficient of
  variation flat (about 2-3%) across clean, corrupted and medical sets, i.e. the MC-FID std grows in
  proportion to the FID and carries no information the FID itself does not.
- Sample size (not calibrated by the study): fewer than ``FEW_IMAGES`` images in a set, or a
  bootstrap 95% interval wider than ``BOOTSTRAP_WIDTH`` x the FID.
- Statistics from another tool, whose weights and preprocessing cannot be verified.

Level: any concern worth 1.0 -> low; the score is 1 - (sum of concerns) / 2 and below 0.34 -> low;
any concern -> medium; none -> high.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .schemas import FidBootstrap, FidMC, LatentVariance, Trust

BASELINE_FILE = Path(__file__).with_name("trust_baseline.json")

# Not calibrated by the validation study (sampling uncertainty, not model uncertainty).
FEW_IMAGES = 50
BOOTSTRAP_WIDTH = 0.5

# The provenance keys that change the expected latent variance (stats.provenance's names).
NETWORK_KEYS = ("dropout_at", "dropout_rate", "dropout_kind", "resize", "weights_sha256")


@lru_cache
def baseline() -> dict:
    return json.loads(BASELINE_FILE.read_text())


def _network_difference(settings: dict | None, base: dict) -> list[str]:
    """The MC-network settings in which a report differs from the baseline's (empty: comparable).
    ``settings`` is a statistics provenance (stats.provenance) or None when not known."""
    if not settings:
        return []
    measured = base.get("measured_with", {})
    diff = []
    for key in NETWORK_KEYS:
        if key in settings and key in measured and settings[key] != measured[key]:
            diff.append(f"{key} {settings[key]!r} (baseline {measured[key]!r})")
    return diff


def variance_concerns(latent: LatentVariance, *, settings: dict | None = None,
                      base: dict | None = None) -> list[tuple[float, str]]:
    """(penalty, reason) pairs from the latent variance of both sets: 1.0 = do not trust, 0.5 =
    doubtful, 0.0 = no concern (its reason still says what was checked and how weak it is)."""
    base = base or baseline()
    th = base["thresholds"]
    medium, low = th["variance_ratio_medium"], th["variance_ratio_low"]
    sides = [(name, side.mean) for name, side in (("real", latent.real), ("generated", latent.generated))
             if side.mean is not None]
    if not sides:
        return [(0.5, "no per-image latent variance (fewer than 2 MC passes, or statistics without them): "
                      "the network's stability on these images is unknown")]
    diff = _network_difference(settings, base)
    if diff:
        return [(0.5, "latent variance was not compared with the natural-image baseline: it was measured "
                      "with another MC network (" + "; ".join(diff) + "), so its size means nothing here")]
    out = []
    for name, mean in sides:
        ratio = mean / base["latent_variance_mean"]
        if ratio >= low:
            out.append((1.0, f"latent variance of the {name} set is {ratio:.1f}x the natural-image baseline, "
                             f"beyond the natural range (up to {medium:.2f}x) by more than severity-5 "
                             "corruption moves natural photos: the network's features are unstable on these "
                             "images, which are likely far outside its training domain"))
        elif ratio >= medium:
            out.append((0.5, f"latent variance of the {name} set is {ratio:.1f}x the natural-image baseline, "
                             f"above the range of natural photos (up to {medium:.2f}x): the network may be "
                             "outside its training domain"))
    if not out:
        found = base.get("study", {})
        ratios = ", ".join(f"{name} {mean / base['latent_variance_mean']:.2f}x" for name, mean in sides)
        note = ""
        if found.get("medical_set_ratio") is not None and found.get("natural_vs_medical_auroc") is not None:
            note = (f" This check is weak: in the validation study a mixed medical set also stayed inside "
                    f"the range ({found['medical_set_ratio']:.2f}x; natural-vs-medical AUROC "
                    f"{found['natural_vs_medical_auroc']:.2f}), so it does not show that an Inception "
                    "network trained on photos suits non-photographic images")
        out.append((0.0, f"latent variance is within the range of natural photos ({ratios} of the baseline; "
                         f"natural photos reach {medium:.2f}x).{note}"))
    return out


def assess(*, fid: float, mc: FidMC, bootstrap: FidBootstrap, latent: LatentVariance,
           n_real: int, n_generated: int, foreign: bool, settings: dict | None = None) -> Trust:
    """``settings``: the MC settings of the report as a statistics provenance (stats.provenance);
    when given, the latent variance is compared with the baseline only if the MC network matches."""
    concerns: list[tuple[float, str]] = []

    if mc.passes == 0:
        concerns.append((0.5, "no MC-dropout passes were run (or one side's statistics have none), so model "
                              "uncertainty is unknown"))
    else:
        concerns += variance_concerns(latent, settings=settings)

    known = [n for n in (n_real, n_generated) if n > 0]
    if known and min(known) < FEW_IMAGES:
        concerns.append((0.5, f"only {min(known)} images in a set: FID is biased upward and noisy at this size; "
                              "compare only FIDs computed with the same number of images"))
    if bootstrap.ci95 is not None and fid > 0:
        width = (bootstrap.ci95[1] - bootstrap.ci95[0]) / fid
        if width > BOOTSTRAP_WIDTH:
            concerns.append((0.5, f"the bootstrap 95% interval over images spans {100 * width:.0f}% of the FID"))
    if foreign:
        concerns.append((0.5, "one side is statistics from another tool: its weights and preprocessing cannot "
                              "be verified"))

    penalties = [p for p, _ in concerns if p > 0]
    worst = max(penalties, default=0.0)
    score = max(0.0, 1.0 - sum(penalties) / 2.0)
    level = "low" if worst >= 1.0 or score < 0.34 else "medium" if worst > 0 else "high"
    # concerns first, the informational note last
    reasons = [r for p, r in concerns if p > 0] + [r for p, r in concerns if p == 0]
    return Trust(level=level, score=round(score, 3), reasons=reasons)
