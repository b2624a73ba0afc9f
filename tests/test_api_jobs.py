"""End to end over HTTP with a real Redis, a real Celery worker and the real engine."""

from __future__ import annotations

import html
import subprocess
import uuid

import pytest

from tests.support.images import pngs
from tests.support.oracles import chromium
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_B, strip_timing, upload

RUN = f"run=jobs-{uuid.uuid4().hex[:8]}"  # a tag of this module's own on the shared stack


@pytest.fixture(scope="module")
def engine_report(image_sets):
    """The engine's own report for the shared image sets, computed in this process."""
    from trustfid import score
    from trustfid.schemas import ScoreOptions

    return score(image_sets["real"], image_sets["generated"], ScoreOptions(**FAST_OPTIONS)).model_dump(mode="json")


@pytest.fixture(scope="module")
def finished_job(stack, image_sets):
    with stack.client() as c:
        r = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]),
                   {**FAST_OPTIONS, "tags": [RUN, "step=100"]})
    assert r.status_code == 202, r.text
    return r, stack.wait_job(r.json()["id"])


def test_upload_poll_report_equals_engine(stack, finished_job, engine_report, image_sets):
    r, rec = finished_job
    assert r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert r.json()["state"] == "queued"
    assert rec["state"] == "succeeded", rec
    assert rec["real"] == {"kind": "upload", "uri": None, "reference_id": None, "files": 4,
                           "bytes": sum(p.stat().st_size for p in pngs(image_sets["real"]))}
    assert rec["progress"]["stage"] == "done" and rec["started_at"] <= rec["finished_at"]
    with stack.client() as c:
        report = c.get(f"/v1/jobs/{rec['id']}/report")
    assert report.status_code == 200
    assert strip_timing(report.json()) == strip_timing(engine_report)
    assert rec["fid"] == engine_report["fid"]
    # the job record (also the callback body and the /v1/jobs list entry) carries the headline
    assert rec["headline"] == engine_report["headline"]
    assert rec["headline"]["sampling_ci95"][0] <= rec["fid"] <= rec["headline"]["sampling_ci95"][1]


def test_job_list_by_tag_newest_first(stack, finished_job, image_sets):
    _, first = finished_job
    with stack.client() as c:
        r = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]),
                   {**FAST_OPTIONS, "tags": [RUN, "step=200"]})
        second = r.json()["id"]
        listed = c.get("/v1/jobs", params={"tag": RUN}).json()["jobs"]
        assert [j["id"] for j in listed][:2] == [second, first["id"]]
        assert listed[1]["headline"]["text"] == first["headline"]["text"]
        only = c.get("/v1/jobs", params=[("tag", RUN), ("tag", "step=100")]).json()["jobs"]
        assert [j["id"] for j in only] == [first["id"]]
        assert c.get("/v1/jobs", params={"tag": f"{RUN}-none"}).json()["jobs"] == []
        assert len(c.get("/v1/jobs", params={"limit": 1}).json()["jobs"]) == 1
    stack.wait_job(second)


def test_other_keys_see_nothing(stack, finished_job):
    _, rec = finished_job
    with stack.client(KEY_B) as c:
        for method, path in [("GET", f"/v1/jobs/{rec['id']}"), ("GET", f"/v1/jobs/{rec['id']}/report"),
                             ("DELETE", f"/v1/jobs/{rec['id']}")]:
            r = c.request(method, path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
        assert all(j["id"] != rec["id"] for j in c.get("/v1/jobs").json()["jobs"])
    with stack.client() as c:  # still there for its owner
        assert c.get(f"/v1/jobs/{rec['id']}").status_code == 200


def test_html_report_renders_in_headless_chromium(stack, finished_job, tmp_path):
    _, rec = finished_job
    with stack.client() as c:
        r = c.get(f"/v1/jobs/{rec['id']}/report", params={"format": "html"})
        report = c.get(f"/v1/jobs/{rec['id']}/report").json()
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = tmp_path / "report.html"
    page.write_text(r.text)
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert f"FID {report['fid']:.2f}" in dom
    assert html.escape(report["headline"]["text"], quote=False) in dom
    assert "the network interval rests on only 2 dropout passes" in dom  # FAST_OPTIONS: warned
    hist = dom.split('id="fid-distribution"')[1].split("</svg>")[0]
    assert hist.count('class="bar"') >= 1  # the distribution over the MC passes
    assert 'id="plain-fid"' in hist and f"plain FID {report['fid']:.2f}" in hist  # drawn and labelled
    assert ">FID</text>" in hist and ">passes</text>" in hist  # both axes titled
    var = dom.split('id="latent-variance"')[1].split("</svg>")[0]
    assert 'id="variance-baseline"' in var and 'id="variance-threshold"' in var
    dplot = dom.split('id="domain-scores"')[1].split("</svg>")[0]
    assert 'id="domain-threshold"' in dplot and 'class="domain-bar"' in dplot
    for side in ("real", "generated"):
        for im in report["latent_variance"][side]["most_uncertain"]:
            assert im["name"] in dom.split('id="most-uncertain"')[1]
        for im in report["domain"][side]["most_atypical"]:
            assert im["thumbnail"] in dom.split('id="most-atypical"')[1]  # the thumbnail itself, inline
    assert report["model"]["weights_sha256"] in dom and report["timing"]["finished_at"] in dom
    assert dom.count('<li class="level-') == 3  # one sentence per level
    assert "upload (4 files" in dom.split('id="input-real"')[1][:200]
    shot = tmp_path / "shot.png"
    subprocess.run(flags + [f"--screenshot={shot}", "--window-size=800,1400", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    colors = Image.open(shot).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colors is None or len(colors) > 20, "the page rendered blank"


def test_metrics_and_readiness(stack, finished_job):
    with stack.client(key=None) as c:
        ready = c.get("/readyz").json()
        metrics = c.get("/metrics").text
    assert ready == {"status": "ready", "redis": True, "workers": 1}
    values = {}
    for line in metrics.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    assert values['trustfid_jobs_finished_total{kind="score",state="succeeded"}'] >= 1
    assert values['trustfid_images_scored_total{kind="score"}'] >= 8
    assert values['trustfid_job_duration_seconds_count{kind="score",state="succeeded"}'] >= 1
    assert values['trustfid_job_duration_seconds_sum{kind="score",state="succeeded"}'] > 0
    assert 'trustfid_job_duration_seconds_count{kind="score",state="failed"}' in values  # failures are timed too
    assert values['trustfid_queue_wait_seconds_count{kind="score"}'] >= 1
    assert "trustfid_queue_depth" in values and values["trustfid_workers"] == 1
    assert 'trustfid_jobs{kind="score",state="running"}' in values
    assert any(k.startswith("trustfid_build_info{") for k in values)
