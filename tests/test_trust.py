"""The trust verdict means what README "What the report means" says, and its model is the validation
study's (docs/VALIDATION.md):

- the reference (real) set's domain decides "low": a reference the FID network's features do not
  describe makes the FID unable to rank generators for it;
- a generated set that does not look like photos is a finding about the generator, never "low";
- natural photos are natural at 32, 64, 128 px and full size;
- sample size and provenance cap the level at "medium".

The slow tests run the real engine on sets built from the study's held-out sources, which no model
was fitted on.
"""

from __future__ import annotations

import numpy as np
import pytest

from bench.validation import domain as study_domain
from bench.validation import domain_sets as DS
from bench.validation import split
from trustfid import score, trust
from trustfid.domain import RAW_INPUTS, STATS_KEY, DomainModel
from trustfid.schemas import AtypicalImage, Domain, FidBootstrap, FidMC, ScoreOptions, SetDomain

BASE = trust.baseline()
SPEC = BASE["domain"]
RULE = SPEC["rule"]


def _side(above: int, n: int, p: float, names=("a.png", "b.png", "c.png", "d.png")) -> SetDomain:
    return SetDomain(images=n, mean=0.0, median=0.0, p95=0.0, above=above, fraction_above=above / n, p_value=p,
                     most_atypical=[AtypicalImage(name=x, domain_score=5.0 - i) for i, x in enumerate(names)])


def _assess(real: SetDomain | None, generated: SetDomain | None, n: int = 500, passes: int = 20,
            available=True, foreign=False):
    dom = Domain(available=available, threshold=SPEC["threshold"], real=real, generated=generated,
                 note=None if available else "no model")
    return trust.assess(fid=10.0, mc=FidMC(passes=passes, mean=10.0, std=0.3), bootstrap=FidBootstrap(resamples=0),
                        domain=dom, n_real=n, n_generated=n, foreign=foreign)


# --- the model and the split are the study's -------------------------------------------------------

def test_the_shipped_model_and_rule_are_the_studys_choice():
    m = SPEC["model"]
    assert any(m["inputs"] == c["inputs"] and bool(m.get("embedding")) == c["embedding"]
               for c in study_domain.CANDIDATES.values())
    assert RULE == study_domain.RULE and SPEC["natural_rate"] == study_domain.NATURAL_RATE
    assert len(m["coef"]) == len(m["center"]) == len(m["scale"]) == len(m["inputs"])
    if m.get("embedding"):
        assert len(m["embedding"]["weights"]) == 2048
    q = SPEC["natural_quantiles"]
    assert q["q"] == study_domain.QUANTILES and q["value"] == sorted(q["value"])
    assert SPEC["threshold"] == pytest.approx(np.interp(1 - SPEC["natural_rate"], q["q"], q["value"]), rel=1e-9)
    assert SPEC["measured_with"]["weights_sha256"] == BASE["measured_with"]["weights_sha256"]


def test_the_held_out_sources_are_the_rules_and_never_fitted_on():
    """The split is the mechanical rule's (a new source cannot move it silently), and no training image
    comes from a held-out source."""
    assert list(split.HELDOUT) == split.heldout_by_rule()
    frames = {name: [np.zeros((40, 40, 3), np.uint8)] for name in [*split.HELDOUT, "skimage:coffee.png"]}
    items, _ = DS.training(1, frames)
    assert items and {it.source for it in items} == {"skimage:coffee.png"}


def test_engine_defaults_are_the_settings_the_baseline_was_measured_with():
    o, m = ScoreOptions(), BASE["measured_with"]
    assert (o.dropout_at, o.dropout_rate, o.dropout_kind, o.mask_mode, o.passes, o.resize) == \
        (m["dropout_at"], m["dropout_rate"], m["dropout_kind"], m["mask_mode"], m["passes"], m["resize"])
    assert (o.kid_subsets, o.kid_subset_size) == (100, 1000)  # clean-fid's


# --- the semantics, without the network -------------------------------------------------------------

def test_a_reference_outside_the_domain_is_low_and_says_what_to_use_instead():
    t = _assess(_side(80, 100, 1e-30), _side(85, 100, 1e-35))
    assert t.level == "low" and t.reference_domain == "outside"
    assert t.reasons[0].startswith("the reference set is outside the FID network's domain: 80% of the real "
                                   "images (80 of 100) score above 90% of natural photos")
    assert "most atypical: a.png, b.png, c.png" in t.reasons[0]
    assert "FRD" in trust.LEVEL_MEANING["low"]
    assert t.findings == []  # generated images unlike photos against a reference unlike photos: as meant


@pytest.mark.parametrize("generated_above, p", [(35, 1e-9), (62, 1e-30), (100, 1e-100)])
def test_a_generated_set_unlike_photos_is_a_finding_never_a_lower_level(generated_above, p):
    t = _assess(_side(8, 100, 0.6), _side(generated_above, 100, p))
    assert t.level == "high" and t.reference_domain == "natural"
    assert t.findings == [f"{generated_above}% of the generated images ({generated_above} of 100) do not look like "
                          "photos to the FID network (most atypical: a.png, b.png, c.png), against 8% of the real "
                          "ones: a finding about the generator, and the FID is large for that reason"]
    assert not any("generated" in r for r in t.reasons if not r.startswith("domain check"))


def test_part_of_the_reference_outside_is_medium_and_names_the_files():
    t = _assess(_side(38, 100, 1e-9), _side(5, 100, 0.8))
    assert t.level == "medium" and t.reference_domain == "partly_outside"
    assert "part of the reference set is outside" in t.reasons[0] and "a.png, b.png, c.png" in t.reasons[0]


def test_a_share_that_is_not_significant_is_no_concern():
    t = _assess(_side(45, 100, 0.02), _side(2, 100, 0.9))  # e.g. a small set: not significant at alpha 0.01
    assert t.level == "high" and t.reasons[0].startswith("domain check: the reference images look like natural")


def test_sample_size_provenance_and_an_unknown_domain_cap_the_level_at_medium():
    assert _assess(_side(0, 20, 1.0), _side(0, 20, 1.0), n=20).reasons[0].startswith("only 20 images")
    assert _assess(_side(0, 20, 1.0), _side(0, 20, 1.0), n=20).level == "medium"
    t = _assess(_side(1, 100, 0.9), _side(1, 100, 0.9), foreign=True)
    assert t.level == "medium" and "another tool" in t.reasons[0]
    t = _assess(None, None, available=False)
    assert t.level == "medium" and t.reference_domain == "unknown" and "could not be made" in t.reasons[0]
    t = _assess(None, _side(1, 100, 0.9))  # e.g. reference statistics saved without domain inputs
    assert t.level == "medium" and "the reference set has no domain scores" in t.reasons[0]
    # several medium concerns stay medium: none of them says the features do not describe the reference
    t = _assess(None, _side(1, 100, 0.9), n=20, foreign=True)
    assert t.level == "medium" and t.score == 0.25
    t = _assess(_side(1, 100, 0.9), _side(1, 100, 0.9), passes=0)
    assert t.level == "high" and t.score == 1.0 and any("no MC-dropout passes" in r for r in t.reasons)


def test_statistics_of_an_older_layout_or_another_model_are_not_scored():
    model = DomainModel(SPEC["model"])
    n = 4
    old = {STATS_KEY: np.ones((n, 21))}  # saved before Mixed_7b/7c were observed
    assert model.score_stats(old, n) is None
    current = {STATS_KEY: np.ones((n, len(RAW_INPUTS)))}
    if model.embedding is not None:
        assert model.score_stats(current, n) is None  # no embedding term of this model
        current["domain_embedding_another"] = np.zeros(n)
        assert model.score_stats(current, n) is None
        current[f"domain_embedding_{model.embedding_id}"] = np.zeros(n)
    assert model.score_stats(current, n).shape == (n,)


# --- on the held-out sources, through the engine ---------------------------------------------------------

NEEDED = [f"natural_{v}_{h}" for v in ("full", "128", "64", "32") for h in "ab"] + \
    ["natural_blur", "natural_noise", "medical_a", "medical_b"]


@pytest.fixture(scope="module")
def heldout():
    """The study's held-out sets (bench/validation/domain_sets.heldout, >= 100 images each), extracted
    by the engine with MC dropout off (the verdict does not use it)."""
    from trustfid.job import open_job
    from trustfid.pipeline import extract

    held = DS.heldout(100)
    assert not held.notes, f"held-out sources missing (scripts/setup.sh installs them): {held.notes}"
    opts = ScoreOptions(device="cpu", batch_size=16, passes=0)
    job = open_job(opts)
    stats = {k: extract(np.stack(held.sets[k].images), "generated", job) for k in NEEDED}
    return held, stats, opts


def _report(heldout, real: str, generated: str):
    _, stats, opts = heldout
    return score(stats[real], stats[generated], opts)


def _only_sample_size(reasons: list[str]) -> bool:
    concerns = [r for r in reasons if not r.startswith(("domain check:", "no MC-dropout"))]
    return all(r.startswith(("only ", "the sampling interval")) for r in concerns)


MISSED_AT_64 = pytest.mark.xfail(strict=True, reason=(
    "held-out goal missed (docs/VALIDATION.md, 'Where the domain check falls short'): 34 of the 104 held-out "
    "natural photos at 64 px in half a score above the natural threshold, 33% against the 30% that makes a "
    "reference 'partly outside'; half b has 24 of 104"))


@pytest.mark.engine
@pytest.mark.parametrize("form", ["full", "128", pytest.param("64", marks=MISSED_AT_64), "32"])
def test_natural_against_natural_is_high_at_every_resolution(heldout, form):
    rep = _report(heldout, f"natural_{form}_a", f"natural_{form}_b")
    assert rep.counts.real.used >= 100 and rep.counts.generated.used >= 100
    assert rep.trust.reference_domain == "natural", rep.trust.reasons
    assert rep.trust.level == "high" or (rep.trust.level == "medium" and _only_sample_size(rep.trust.reasons)), \
        rep.trust.reasons
    # no domain finding; the copy check may rightly flag some: halves a and b are crops (half to all of the
    # short side) of the same photos, so two large crops of one photo overlap almost entirely
    assert [f for f in rep.trust.findings if not f.startswith("copies found")] == []


@pytest.mark.engine
@pytest.mark.parametrize("form", ["full", "128", "64", "32"])
def test_natural_photos_are_never_low_and_never_outside_at_any_resolution(heldout, form):
    for real, generated in ((f"natural_{form}_a", f"natural_{form}_b"), (f"natural_{form}_b", f"natural_{form}_a")):
        rep = _report(heldout, real, generated)
        assert rep.trust.level != "low" and rep.trust.reference_domain != "outside", rep.trust.reasons


@pytest.mark.engine
@pytest.mark.parametrize("generated", ["natural_64_b", "natural_32_b", "natural_blur", "natural_noise", "medical_b"])
def test_natural_against_a_poor_generator_is_never_low(heldout, generated):
    rep = _report(heldout, "natural_full_a", generated)
    assert rep.trust.level != "low" and rep.trust.reference_domain == "natural", rep.trust.reasons
    clean = _report(heldout, "natural_full_a", "natural_full_b")
    assert rep.fid > clean.fid  # the FID does its job: the poor generator is further from the reference
    if generated == "medical_b":
        g = rep.domain.generated
        assert rep.trust.findings and rep.trust.findings[0].startswith(
            f"{100 * g.fraction_above:.0f}% of the generated images ({g.above} of {g.images}) do not look like photos")
        assert g.most_atypical[0].name in rep.trust.findings[0]


@pytest.mark.engine
def test_medical_against_medical_is_low(heldout):
    rep = _report(heldout, "medical_a", "medical_b")
    assert rep.trust.level == "low" and rep.trust.reference_domain == "outside"
    assert rep.trust.reasons[0].startswith("the reference set is outside the FID network's domain")
    r = rep.domain.real
    assert r.fraction_above >= RULE["fraction_low"] and r.p_value < RULE["alpha"]
    assert r.most_atypical[0].thumbnail.startswith("data:image/png;base64,")
