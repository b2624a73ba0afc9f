"""The API's published contract: the OpenAPI document is complete and valid, the live service answers
only what it documents (schemathesis, bounded), and /docs works without a network."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import pytest
from openapi_spec_validator import validate

from tests.support import ROOT
from tests.support.oracles import chromium
from tests.support.service import KEY_A

SUBMITS = ("/v1/jobs", "/v1/references")
# Every status a route can answer besides its success; the API's error shape for each.
EXPECTED_ERRORS = {
    ("post", "/v1/jobs"): {401, 408, 409, 413, 415, 422, 429, 503, 500},
    ("post", "/v1/references"): {401, 408, 413, 415, 422, 429, 503, 500},
    ("get", "/v1/jobs"): {401, 422, 503, 500},
    ("get", "/v1/jobs/{job_id}"): {401, 404, 422, 503, 500},
    ("get", "/v1/jobs/{job_id}/report"): {401, 404, 409, 422, 503, 500},
    ("delete", "/v1/jobs/{job_id}"): {401, 404, 422, 503, 500},
    ("get", "/v1/references"): {401, 422, 503, 500},
    ("get", "/v1/references/{ref_id}"): {401, 404, 422, 503, 500},
    ("delete", "/v1/references/{ref_id}"): {401, 404, 422, 503, 500},
    ("get", "/v1/series"): {401, 422, 503, 500},
    ("get", "/metrics"): {503, 500},
}


@pytest.fixture(scope="module")
def doc(stack) -> dict:
    r = httpx.get(stack.url + "/openapi.json", timeout=30)
    assert r.status_code == 200
    return r.json()


def test_the_openapi_document_is_valid(doc):
    validate(doc)  # openapi-spec-validator: the OpenAPI 3.1 schema plus its semantic rules


def test_both_posts_document_json_and_multipart_bodies(doc):
    schemas = doc["components"]["schemas"]
    for path, model, sets in (("/v1/jobs", "JobSubmit", ["real", "generated"]), ("/v1/references", "ReferenceSubmit", ["source"])):
        content = doc["paths"][path]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": f"#/components/schemas/{model}"}
        assert model in schemas and "InputRef" in schemas
        form = content["multipart/form-data"]["schema"]
        assert form["required"] == sets and "options" in form["properties"]
        files = form["properties"][sets[0]]["anyOf"][0]
        assert files == {"type": "array", "items": {"type": "string", "format": "binary"}}
    assert set(schemas["JobSubmit"]["properties"]) == {"real", "generated", "options"}


def test_every_error_status_is_documented_in_the_real_error_shape(doc):
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's shape, not ours
    err = doc["components"]["schemas"]["ErrorResponse"]
    assert err["required"] == ["error"]
    for (method, path), statuses in EXPECTED_ERRORS.items():
        responses = doc["paths"][path][method]["responses"]
        errors = {int(s) for s in responses if int(s) >= 400}
        assert errors == statuses, (method, path)
        for s in statuses:
            assert responses[str(s)]["content"]["application/json"]["schema"] == \
                {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, s)
    assert "Retry-After" in doc["paths"]["/v1/jobs"]["post"]["responses"]["429"]["headers"]


def test_bearer_scheme_and_the_signed_callback(doc):
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": doc["components"]["securitySchemes"]["bearer"]["description"]}
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path.startswith("/v1/"):
                assert op["security"] == [{"bearer": []}], (method, path)
            else:
                assert "security" not in op, (method, path)  # health, readiness, metrics: no key
    (callback,) = doc["paths"]["/v1/jobs"]["post"]["callbacks"].values()
    op = callback["{$request.body#/options/callback_url}"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/JobRecord"}
    headers = {p["name"].lower() for p in op["parameters"] if p["in"] == "header"}
    assert headers == {"x-trustfid-timestamp", "x-trustfid-signature"}


def test_the_report_is_documented_as_json_html_and_fhir(doc):
    op = doc["paths"]["/v1/jobs/{job_id}/report"]["get"]
    (fmt,) = [p for p in op["parameters"] if p["name"] == "format"]
    assert fmt["in"] == "query" and fmt["schema"]["enum"] == ["json", "html", "fhir"]
    assert fmt["schema"]["default"] == "json" and "FHIR R4" in fmt["description"]
    content = op["responses"]["200"]["content"]
    assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Report"}
    assert set(content) == {"application/json", "text/html", "application/fhir+json"}
    assert "Observation" in content["application/fhir+json"]["schema"]["description"]


# --- the live service conforms to its document ------------------------------------------------------

def test_schemathesis_finds_no_undocumented_status_or_shape(stack, tmp_path):
    """Schemathesis generates requests (valid and invalid) for every operation from the live document and
    checks each answer: status documented, body matching its schema, content type documented, no 5xx.
    Bounded: 25 examples per operation in the fuzzing phase, no stateful phase; under a minute on two cores."""
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", stack.url + "/openapi.json",
         "--checks", "status_code_conformance,response_schema_conformance,content_type_conformance,"
                     "response_headers_conformance,not_a_server_error",
         "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "1",
         "--workers", "1", "--request-timeout", "30", "--suppress-health-check", "all",
         "--header", f"Authorization: Bearer {KEY_A}", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its crash cache goes there too
    took = time.monotonic() - t0
    cases = re.search(r"\d+ generated[^\n]*", p.stdout)
    print(f"schemathesis took {took:.0f} s: {cases.group(0) if cases else '?'}")
    assert p.returncode == 0, p.stdout[-8000:] + p.stderr[-3000:]
    assert re.search(r"\b\d+ passed\b", p.stdout) or "No issues found" in p.stdout, p.stdout[-3000:]


# --- docs/API.md's samples are what the code sends ------------------------------------------------------

def test_the_documented_202_answer_has_every_field_of_a_job_record():
    from trustfid.records import JobOptions, JobRecord

    doc = (ROOT / "docs" / "API.md").read_text()
    sample = json.loads(doc.split("Response (202):\n\n```json\n", 1)[1].split("```", 1)[0])
    record = JobRecord.model_validate(sample)  # strict: a field the code no longer has fails here
    assert list(sample) == list(JobRecord.model_fields)
    assert list(sample["options"]) == list(JobOptions.model_fields)
    assert record.options.metrics == ["fid"] and record.state == "queued"


# --- offline docs --------------------------------------------------------------------------------------

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|['"]https?://""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_external_host(stack, page):
    with httpx.Client(base_url=stack.url, timeout=30) as c:
        r = c.get(page)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        html = r.text
        assert not EXTERNAL.search(html), EXTERNAL.search(html).group(0)
        assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html) + \
            re.findall(r"""(?:url|spec-url)\s*[:=]\s*['"](/[^'"]+)['"]""", html)
        assert any(a.endswith(".js") for a in assets), assets
        for asset in assets:  # every script, style and the document itself come from this app
            assert asset.startswith("/"), asset
            assert c.get(asset).status_code == 200, asset


def test_swagger_ui_renders_with_every_other_host_unreachable(stack, tmp_path):
    """Headless Chromium opens /docs with every host but 127.0.0.1 unresolvable, as on an air-gapped
    network: Swagger UI must still draw the operations."""
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", f"--user-data-dir={tmp_path / 'p'}",
             "--virtual-time-budget=15000", "--dump-dom", stack.url + "/docs"]
    dom = subprocess.run(flags, capture_output=True, text=True, timeout=120).stdout
    assert "swagger-ui" in dom
    assert "/v1/series" in dom and "/v1/jobs/{job_id}/report" in dom, dom[-2000:]
