"""The trust rule does what the validation study (docs/VALIDATION.md) says it does, on real images
through the real engine, and its model, thresholds and defaults are the study's.

What the study found, and these tests pin:
- the domain check (per-image domain score, binomial test against the natural photos' 90%
  quantile) rates medical images "low" and leaves clean natural photos without a domain concern;
- the engine's MC defaults are the ones the latent-variance baseline was measured with, and the
  shipped domain model is the candidate the study's stated rule chose.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.validation import data as D
from bench.validation import domain as study_domain
from trustfid import score, trust
from trustfid.schemas import Domain, FidBootstrap, FidMC, ScoreOptions, SetDomain

BASE = trust.baseline()
SPEC = BASE["domain"]
RULE = SPEC["rule"]


def _side(above: int, n: int, p: float, names=("a.png", "b.png", "c.png", "d.png")) -> SetDomain:
    from trustfid.schemas import AtypicalImage

    return SetDomain(images=n, mean=0.0, median=0.0, p95=0.0, above=above, fraction_above=above / n, p_value=p,
                     most_atypical=[AtypicalImage(name=x, domain_score=5.0 - i) for i, x in enumerate(names)])


def _assess(real: SetDomain | None, generated: SetDomain | None, n: int = 500, passes: int = 20, available=True):
    dom = Domain(available=available, threshold=SPEC["threshold"], real=real, generated=generated,
                 note=None if available else "no model")
    return trust.assess(fid=10.0, mc=FidMC(passes=passes, mean=10.0, std=0.3), bootstrap=FidBootstrap(resamples=0),
                        domain=dom, n_real=n, n_generated=n, foreign=False)


# --- the rule, without the network --------------------------------------------------------------

def test_the_shipped_model_and_rule_are_the_studys_choice():
    """The shipped model is the candidate the study's stated rule chose, with the rule's constants."""
    assert SPEC["model"]["inputs"] in study_domain.CANDIDATES.values()
    assert RULE == study_domain.RULE and SPEC["natural_rate"] == study_domain.NATURAL_RATE
    m = SPEC["model"]
    assert len(m["coef"]) == len(m["center"]) == len(m["scale"]) == len(m["inputs"])
    q = SPEC["natural_quantiles"]
    assert q["q"] == study_domain.QUANTILES and q["value"] == sorted(q["value"])
    assert SPEC["threshold"] == pytest.approx(np.interp(1 - SPEC["natural_rate"], q["q"], q["value"]), rel=1e-9)
    assert SPEC["measured_with"]["weights_sha256"] == BASE["measured_with"]["weights_sha256"]


def test_engine_defaults_are_the_settings_the_baseline_was_measured_with():
    o, m = ScoreOptions(), BASE["measured_with"]
    assert (o.dropout_at, o.dropout_rate, o.dropout_kind, o.mask_mode, o.passes, o.resize) == \
        (m["dropout_at"], m["dropout_rate"], m["dropout_kind"], m["mask_mode"], m["passes"], m["resize"])
    assert (o.kid_subsets, o.kid_subset_size) == (100, 1000)  # clean-fid's


@pytest.mark.parametrize("above, p, level", [
    (10, 0.5, "high"),                 # 10% above: what natural photos do
    (35, 1e-9, "medium"),              # 35%: a concern
    (62, 1e-30, "low"),                # most of the set
    (45, 0.02, "high"),                # (a small set) not significant at alpha 0.01
])
def test_level_follows_the_share_above_the_natural_threshold_with_readable_reasons(above, p, level):
    t = _assess(_side(8, 100, 0.6), _side(above, 100, p))
    assert t.level == level
    if level == "low":
        assert t.reasons[0].startswith("62% of the generated images score above 90% of natural photos (62 of 100")
        assert "most atypical: a.png, b.png, c.png" in t.reasons[0]
    if level == "high":
        assert t.reasons == [t.reasons[0]] and t.reasons[0].startswith("domain check:")


def test_a_medical_real_set_is_caught_too():
    t = _assess(_side(80, 100, 1e-30), _side(1, 100, 0.9))
    assert t.level == "low" and "of the real images" in t.reasons[0]


def test_without_a_domain_check_the_level_is_at_most_medium():
    t = _assess(None, None, available=False)
    assert t.level == "medium" and "could not be made" in t.reasons[0]
    t = _assess(_side(1, 100, 0.9), None)  # e.g. statistics saved without domain inputs
    assert t.level == "medium" and "the generated set has no domain scores" in t.reasons[0]


def test_few_images_cap_the_level_at_medium_and_no_passes_is_only_a_note():
    t = _assess(_side(0, 20, 1.0), _side(0, 20, 1.0), n=20)
    assert t.level == "medium" and t.reasons[0].startswith("only 20 images")
    t = _assess(_side(1, 100, 0.9), _side(1, 100, 0.9), passes=0)
    assert t.level == "high" and any("no MC-dropout passes" in r for r in t.reasons)


# --- on real images, through the engine ----------------------------------------------------------

@pytest.fixture(scope="module")
def medical():
    """The study's medical crops (same sources, seeds and order as bench.validation)."""
    sources, _ = D.medical_sources()
    return D.crop_set("medical", sources, 4, seed=4)


def _score(real: np.ndarray, generated: np.ndarray, passes: int = 2):
    return score(real, generated, ScoreOptions(passes=passes, bootstrap_resamples=0, device="cpu", batch_size=16))


@pytest.mark.slow
def test_clean_natural_photos_raise_no_domain_concern():
    rgb = D.natural_rgb_sources()
    real = np.stack(D.crop_set("a", rgb, 2, seed=11).images)
    generated = np.stack(D.crop_set("b", rgb, 2, seed=12).images)
    report = _score(real, generated)
    assert report.domain.available and report.model.weights_sha256 == SPEC["measured_with"]["weights_sha256"]
    for side in (report.domain.real, report.domain.generated):
        assert side.fraction_above < RULE["fraction_medium"], side
    # the only concern is the sample size; with enough images this report would be "high"
    assert report.trust.level == "medium"
    assert [x for x in report.trust.reasons if not x.startswith("domain check:")] == \
        [f"only {len(real)} images in a set: FID is biased upward and noisy at this size; "
         "compare only FIDs computed with the same number of images, or use KID / FID∞"]


@pytest.mark.slow
def test_a_mixed_medical_set_is_rated_low(medical):
    """CT, MR, NM, ultrasound, fundus and microscopy against natural photos: the old latent-variance
    rule said "high" here; the domain check says "low" and names the atypical files."""
    rgb = D.natural_rgb_sources()
    real = np.stack(D.crop_set("a", rgb, 2, seed=11).images)
    generated = np.stack([im for i, im in enumerate(medical.images) if i % 4 == 1])  # one crop per source
    report = _score(real, generated)
    g = report.domain.generated
    assert g.fraction_above >= RULE["fraction_low"] and g.p_value < RULE["alpha"], g
    assert report.trust.level == "low"
    assert "of the generated images score above 90% of natural photos" in report.trust.reasons[0]
    assert g.most_atypical and g.most_atypical[0].thumbnail.startswith("data:image/png;base64,")
