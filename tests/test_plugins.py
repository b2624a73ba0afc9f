"""Metrics as plug-ins (trustfid/plugins.py): the example of docs/METRICS.md registered as a user would, its
section in the report beside the built-in ones, which keep their numbers and their order."""

from __future__ import annotations

import pytest

from tests.support.presets import FAST_OPTIONS
from trustfid import plugins, score
from trustfid.plugins import FEATURES, Plugin, register

pytestmark = pytest.mark.engine


class MeanTerm(Plugin):
    """The FID's first term, |mu_r - mu_g|^2: how much of the distance comes from the sets' means."""

    name = "mean_term"
    uses = frozenset({FEATURES})  # the per-image work it reads

    def wanted(self, options):
        return options.fid_on

    def section(self, real, generated, ctx):
        d = real.plain.gaussian().mu - generated.plain.gaussian().mu
        return {"value": float(d @ d), "share_of_fid": float(d @ d) / ctx.sections["fid"]}


@pytest.fixture
def mean_term():
    register(MeanTerm())
    yield
    plugins.unregister("mean_term")


def test_a_registered_metric_gets_its_section_and_the_others_keep_theirs(image_sets, mean_term, tmp_path):
    from trustfid.pipeline import compute_stats

    report = score(image_sets["real"], image_sets["generated"], FAST_OPTIONS)
    section = report.extra_metrics["mean_term"]
    r, g = (compute_stats(image_sets[k], FAST_OPTIONS) for k in ("real", "generated"))
    d = r.plain.gaussian().mu - g.plain.gaussian().mu
    assert section["value"] == pytest.approx(float(d @ d), rel=1e-12)
    assert 0 < section["share_of_fid"] < 1  # the covariance term is the rest of the FID
    assert [p.name for p in plugins.registered()] == ["fid", "kid", "frd", "prdc", "memorization", "mean_term"]
    plugins.unregister("mean_term")
    without = score(image_sets["real"], image_sets["generated"], FAST_OPTIONS)
    assert without.extra_metrics == {} and without.fid == report.fid and without.kid == report.kid
    assert report.model_dump(exclude={"extra_metrics", "timing"}) == without.model_dump(exclude={"extra_metrics",
                                                                                                  "timing"})


def test_a_metric_that_is_not_wanted_is_left_out(image_sets, mean_term):
    report = score(image_sets["real"], image_sets["generated"], {**FAST_OPTIONS, "metrics": ["frd"]})
    assert "mean_term" not in report.extra_metrics and report.fid is None


def test_a_metric_needs_a_plain_name():
    class Bad(Plugin):
        name = "no spaces"

    with pytest.raises(ValueError, match="letters, digits and _"):
        register(Bad())
    assert all(p.name != "no spaces" for p in plugins.registered())
