"""The report as FHIR R4 (trustfid/fhir.py): the document validates with fhir.resources and carries the
JSON report's own values; filing a job's document twice creates nothing new; an FRD-only report has
only the FRD's Observation; the Device names the release that computed the numbers. The route, the
client and the CLI serve this same builder (tests/test_pacs.py reads it through each)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import FAST_OPTIONS, write_images
from trustfid import __version__
from trustfid.fhir import bundle, to_json
from trustfid.schemas import Report


def fhir_matches(doc: str, report: dict, job_id: str | None = None) -> dict:
    """Validate ``doc`` (FHIR JSON) with fhir.resources' R4B Bundle, check that every value it carries is
    the JSON report's own, and return its Observations by distance."""
    from fhir.resources.R4B.bundle import Bundle

    b = Bundle.model_validate_json(doc)
    assert b.type == "transaction" and b.entry[0].resource.get_resource_type() == "Device"
    device = b.entry[0]
    versions = {v.type.text: v.value for v in device.resource.version}
    assert versions["trustfid"] == report["trustfid_version"]
    if report["fid"] is not None:
        assert versions["feature extractor"] == report["model"]["extractor"]
        assert versions["weights sha256"] == report["model"]["weights_sha256"]
    observations = {}
    for e in b.entry[1:]:
        obs = e.resource
        assert obs.get_resource_type() == "Observation" and obs.status == "final"
        assert obs.device.reference == device.fullUrl and e.request.url == "Observation"
        kind = obs.code.coding[0].code
        observations[kind] = obs
        parts = {c.code.coding[0].code: c for c in obs.component or []}
        counts = report["frd"] if kind == "frd" else report["counts"]
        assert parts["real-images"].valueInteger == counts["real"]["used"]
        assert parts["generated-images"].valueInteger == counts["generated"]["used"]
        assert obs.valueQuantity.code == "1" and obs.valueQuantity.system == "http://unitsofmeasure.org"
        if job_id:
            assert obs.identifier[0].value == f"{job_id}/{kind}" and e.request.ifNoneExist.endswith(f"|{job_id}/{kind}")
        if kind in ("fid", "kid"):  # the network's distances carry the trust verdict, reasons and findings
            trust = report["trust"]
            assert obs.interpretation[0].coding[0].code == trust["level"]
            assert [n.text for n in obs.note] == trust["reasons"] + [f"finding: {f}" for f in trust["findings"]]
        if kind == "fid":
            assert float(obs.valueQuantity.value) == report["fid"]
            for code, ci in (("sampling-ci95", report["headline"]["sampling_ci95"]),
                             ("network-ci95", report["headline"]["network_ci95"])):
                got = parts[code].valueRange
                assert [float(got.low.value), float(got.high.value)] == ci
        elif kind == "kid":
            assert float(obs.valueQuantity.value) == report["kid"]["value"]
        elif kind == "frd":
            frd = report["frd"]
            assert float(obs.valueQuantity.value) == frd["value"]
            got = parts["sampling-ci95"].valueRange
            assert [float(got.low.value), float(got.high.value)] == frd["sampling_ci95"]
            assert float(parts["distance-squared"].valueQuantity.value) == frd["distance_squared"]
            assert obs.interpretation is None and "does not apply" in obs.note[0].text
    expected = {k for k in ("fid", "kid", "frd") if report[k] is not None}
    assert set(observations) == expected, (set(observations), expected)
    return observations


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
