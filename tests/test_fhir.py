"""The report as FHIR R4 (trustfid/fhir.py): the document validates with fhir.resources and carries the
JSON report's own values; filing a job's document twice creates nothing new; an FRD-only report has
only the FRD's Observation; the Device names the release that computed the numbers. The route, the
client and the CLI serve this same builder (tests/test_pacs.py reads it through each)."""

from __future__ import annotations

import json

import pytest

from tests.support.images import write_images
from tests.support.oracles import fhir_matches
from tests.support.presets import FAST_OPTIONS
from trustfid import __version__
from trustfid.fhir import bundle, to_json
from trustfid.schemas import Report

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Report:
    from trustfid import score

    d = tmp_path_factory.mktemp("fhir")
    real, gen = write_images(d / "real", 6, seed=11), write_images(d / "gen", 6, seed=12, shift=0.1)
    return score(real, gen, {**FAST_OPTIONS, "metrics": ["fid", "frd"]})


def test_the_fhir_document_validates_and_carries_the_reports_values(report):
    data = json.loads(report.model_dump_json())
    observations = fhir_matches(to_json(report), data)
    assert set(observations) == {"fid", "kid", "frd"} and data["trustfid_version"] == __version__
    assert observations["fid"].issued.isoformat().startswith(data["timing"]["finished_at"][:19])


def test_filing_a_jobs_document_twice_creates_nothing_new(report):
    # With a job id, every entry is a conditional create on an identifier naming the job, and the document's
    # ids are the same every time it is built: a FHIR server stores one copy however often it is filed.
    a, b = bundle(report, "job1"), bundle(report, "job1")
    assert a.model_dump_json() == b.model_dump_json()
    assert a.identifier.value == "job1"
    assert [e.request.ifNoneExist for e in a.entry[1:]] == [f"identifier=urn:trustfid:job|job1/{k}" for k in
                                                            ("fid", "kid", "frd")]
    assert a.entry[0].request.ifNoneExist.startswith("identifier=urn:trustfid:device|" + __version__)
    other = bundle(report, "job2")
    assert {e.fullUrl for e in other.entry[1:]}.isdisjoint(e.fullUrl for e in a.entry[1:])
    # Without a job (the CLI's score) there is no job identifier to create on.
    plain = bundle(report)
    assert plain.identifier is None and all(e.request.ifNoneExist is None for e in plain.entry[1:])


def test_an_frd_only_report_has_only_the_frd_observation_and_no_trust_verdict(tmp_path):
    from trustfid import score

    real, gen = write_images(tmp_path / "r", 4, seed=3), write_images(tmp_path / "g", 4, seed=4, shift=0.2)
    r = score(real, gen, {**FAST_OPTIONS, "metrics": ["frd"]})
    data = json.loads(r.model_dump_json())
    assert data["fid"] is None and data["trust"] is None
    observations = fhir_matches(to_json(r), data)
    assert set(observations) == {"frd"}
    device = bundle(r).entry[0].resource
    kinds = [v.type.text for v in device.version]
    assert "weights sha256" not in kinds and "FRD configuration sha256" in kinds  # no network ran


def test_a_stored_report_keeps_the_release_that_made_it(report):
    data = json.loads(report.model_dump_json())
    assert Report.model_validate(data).trustfid_version == __version__
    older = {k: v for k, v in data.items() if k != "trustfid_version"} | {"schema_version": "1.5"}
    read = Report.model_validate(older)
    assert read.trustfid_version is None  # not this release's: it did not compute it
    versions = {v.type.text: v.value for v in bundle(read).entry[0].resource.version}
    assert versions["trustfid"] == "unknown"
    made = Report.model_validate(older | {"trustfid_version": "0.1.9"})
    assert {v.type.text: v.value for v in bundle(made).entry[0].resource.version}["trustfid"] == "0.1.9"
