"""The trust level of a report: can this FID be relied on to compare generators against this reference?

The answer depends on three things, and only on them:

1. **The reference (real) set's domain.** FID measures distances in the feature space of an Inception
   network trained on natural photos. Where the reference images are not like those photos (medical,
   microscopy and other non-photographic images), its features do not describe them, and the FID
   cannot rank generators for them: trust is **low** when most of the reference set lies outside the
   network's domain, **medium** when a large part does.
2. **The sample size**: fewer than ``FEW_IMAGES`` images in a set, or a sampling interval wider than
   ``BOOTSTRAP_WIDTH`` x the FID -> medium.
3. **The provenance of the statistics**: statistics from another tool (their weights and preprocessing
   cannot be verified, and they carry no domain inputs) -> medium.

The generated set's domain never lowers the level. A generated set that does not look like photos
while the reference does is a finding about the generator (its FID is large, and rightly so: the
validation study measured the plain FID rising monotonically with corruption severity in every family,
far past the point where the corrupted images stop looking like photos to the network), so it is
reported under ``findings``, with the share and the most atypical files. Natural photos are natural at
any resolution and in grayscale: the domain score is trained and validated to be so (docs/VALIDATION.md).

The domain check. Every image gets a domain score (domain.py: a small logistic model over the
network's own batch-norm statistics; higher = less like a natural photo). The validation study
(``python -m bench.validation``) stores the natural photos' distribution of that score, scored out of
fold, in ``trust_baseline.json`` beside this file. For each set the rule counts the images above the
natural photos' (1 - ``natural_rate``) quantile; a one-sided binomial test asks whether the set has
more than that share, and the share says how much more: ``fraction_low`` (a majority) -> outside,
``fraction_medium`` -> partly outside, both only where p < ``alpha``.

Level: a reference outside the domain -> low; any other concern -> medium; none -> high. The
``score`` is 1 - (sum of the concerns' weights) / 2, in [0, 1]: 1 means no concern; a reference
outside the domain weighs 1, every other concern 0.5.

The MC-dropout spread (the network interval) stays in the report and out of the level: the study
found it a near-constant 2-3% of the FID on natural and medical sets alike (docs/VALIDATION.md).
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

OUTSIDE, PARTLY, NATURAL, UNKNOWN = "outside", "partly_outside", "natural", "unknown"

LEVEL_MEANING = {
    "high": "The reference images look like the natural photos the FID network was trained on and the sample "
            "is large enough: compare this FID with others computed against this reference the same way "
            "(same resize, similar image counts).",
    "medium": "Something limits this FID (see the reasons): compare it only with runs on the same reference and "
              "image counts, and fix what the reasons name.",
    "low": "The FID network's features do not describe the reference images, so this FID cannot rank generators "
           "for them: use a distance built for these images (a domain-specific feature network, radiomics "
           "features such as FRD) or a reader study.",
}


@lru_cache
def baseline() -> dict:
    return json.loads(BASELINE_FILE.read_text())


def _names(side: SetDomain, k: int = 3) -> str:
    return ", ".join(im.name for im in side.most_atypical[:k])


def _share(side: SetDomain, name: str, rate: float) -> str:
    return (f"{100 * side.fraction_above:.0f}% of the {name} images ({side.above} of {side.images}) score above "
            f"{100 * (1 - rate):.0f}% of natural photos (expected: {100 * rate:.0f}%, p = {side.p_value:.2g})")


def side_domain(side: SetDomain | None, rule: dict) -> str:
    """natural / partly_outside / outside for a scored set, unknown without scores."""
    if side is None:
        return UNKNOWN
    if side.p_value < rule["alpha"] and side.fraction_above >= rule["fraction_low"]:
        return OUTSIDE
    if side.p_value < rule["alpha"] and side.fraction_above >= rule["fraction_medium"]:
        return PARTLY
    return NATURAL


def domain_assessment(domain, *, base: dict | None = None) -> tuple[str, list[tuple[float, str]], list[str]]:
    """(the reference's domain, (weight, reason) concerns, findings) from the report's domain check."""
    base = base or baseline()
    spec = base.get("domain")
    if domain is None or not domain.available or spec is None:
        why = (domain.note if domain is not None and domain.note else
               "no domain model for this network and preprocessing")
        return UNKNOWN, [(0.5, f"the domain check could not be made ({why}): whether the FID network's features "
                               "describe the reference images is unknown")], []
    rule, rate = spec["rule"], spec["natural_rate"]
    real, gen = domain.real, domain.generated
    ref = side_domain(real, rule)
    concerns: list[tuple[float, str]] = []
    findings: list[str] = []
    atypical = f"; most atypical: {_names(real)}" if real is not None and real.most_atypical else ""
    if ref == OUTSIDE:
        concerns.append((1.0, f"the reference set is outside the FID network's domain: {_share(real, 'real', rate)}"
                              f"{atypical}"))
    elif ref == PARTLY:
        concerns.append((0.5, f"part of the reference set is outside the FID network's domain: "
                              f"{_share(real, 'real', rate)}{atypical}. Check those files: the FID describes "
                              "the rest of the set better than them"))
    elif ref == UNKNOWN:
        concerns.append((0.5, "the reference set has no domain scores (statistics saved without them, or from "
                              "another tool): whether the FID network's features describe it is unknown"))
    gen_domain = side_domain(gen, rule)
    # only against a reference that looks like photos: a medical generator against a medical reference is
    # meant not to look like photos (the reference's own reason already says what that means for the FID)
    if gen is not None and gen_domain in (OUTSIDE, PARTLY) and ref in (NATURAL, PARTLY):
        most = f" (most atypical: {_names(gen)})" if gen.most_atypical else ""
        findings.append(f"{100 * gen.fraction_above:.0f}% of the generated images ({gen.above} of {gen.images}) do "
                        f"not look like photos to the FID network{most}, against {100 * real.fraction_above:.0f}% "
                        "of the real ones: a finding about the generator, and the FID is large for that reason")
    if ref == NATURAL:
        gen_note = f", generated {100 * gen.fraction_above:.0f}%" if gen is not None and not findings else ""
        concerns.append((0.0, f"domain check: the reference images look like natural photos to the FID network "
                              f"(real {100 * real.fraction_above:.0f}% above the natural photos' "
                              f"{100 * (1 - rate):.0f}% quantile{gen_note}; natural photos: {100 * rate:.0f}%)"))
    return ref, concerns, findings


def assess(*, fid: float, mc: FidMC, bootstrap: FidBootstrap, domain, n_real: int, n_generated: int,
           foreign: bool) -> Trust:
    reference, concerns, findings = domain_assessment(domain)

    known = [n for n in (n_real, n_generated) if n > 0]
    if known and min(known) < FEW_IMAGES:
        concerns.append((0.5, f"only {min(known)} images in a set: FID is biased upward and noisy at this size; "
                              "compare only FIDs computed with the same number of images, or use KID / FID∞"))
    if bootstrap.ci95 is not None and fid > 0:
        width = (bootstrap.ci95[1] - bootstrap.ci95[0]) / fid
        if width > BOOTSTRAP_WIDTH:
            concerns.append((0.5, f"the sampling interval (bootstrap over images) spans {100 * width:.0f}% of the "
                                  "FID: more images would narrow it"))
    if foreign:
        concerns.append((0.5, "one side is statistics from another tool: its weights and preprocessing cannot "
                              "be verified"))
    if mc.passes == 0:
        concerns.append((0.0, "no MC-dropout passes were run: the network's own uncertainty is not reported"))

    weights = [w for w, _ in concerns if w > 0]
    worst = max(weights, default=0.0)
    level = "low" if worst >= 1.0 else "medium" if worst > 0 else "high"
    # concerns first, the informational notes last
    reasons = [r for w, r in concerns if w > 0] + [r for w, r in concerns if w == 0]
    return Trust(level=level, score=round(max(0.0, 1.0 - sum(weights) / 2.0), 3), reasons=reasons,
                 findings=findings, reference_domain=reference)
