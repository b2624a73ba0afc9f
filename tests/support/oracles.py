"""What results are checked against: frd-score's own command line, the FHIR R4B schema, a real browser."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def frd_score(a: Path, b: Path) -> float:
    """frd-score's FRD (v1, its defaults) of two folders, from its own command line."""
    r = subprocess.run([sys.executable, "-m", "frd_score", str(a), str(b), "--num_workers", "2"],
                       capture_output=True, text=True, timeout=600)
    found = re.search(r"FRD \(v1\): (\S+)", r.stdout)
    assert found, r.stdout[-3000:] + r.stderr[-3000:]
    return float(found.group(1))


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.environ.get("CI"):
        pytest.fail("headless Chromium is needed (scripts/test.sh installs the Debian package chromium)")
    pytest.skip("no chromium on this machine")


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
