"""The FRD through the service (real API, Redis and Celery workers): a job with metrics fid,frd gives frd-score's
FRD, the HTML report and /v1/series show it, a sharded job's FRD equals the unsharded one (with frd:auto, its
radiomics run as a second round of shards), and a service whose
workers cannot compute it refuses the request with 422 instead of failing later."""

from __future__ import annotations

import os
import uuid

import pytest

from tests.support.presets import FAST_OPTIONS
from tests.support.service import upload


def _files(folder):
    return sorted(p for p in folder.iterdir() if p.is_file())


def _job(stack, frd_sets, options: dict, tags=()) -> dict:
    with stack.client() as c:
        r = upload(c, _files(frd_sets["real"]), _files(frd_sets["generated"]), {**options, "tags": list(tags)})
        assert r.status_code == 202, r.text
        rec = stack.wait_job(r.json()["id"], timeout=600)
        assert rec["state"] == "succeeded", rec
        return {"record": rec, "report": c.get(f"/v1/jobs/{rec['id']}/report").json(),
                "html": c.get(f"/v1/jobs/{rec['id']}/report", params={"format": "html"}).text}


def test_a_job_with_fid_and_frd_gives_frd_score_s_frd_in_report_page_and_series(stack, frd_sets):
    run = f"run=frd-{uuid.uuid4().hex[:8]}"  # this test's own series on the shared stack
    got = _job(stack, frd_sets, {**FAST_OPTIONS, "metrics": ["fid", "frd"], "bootstrap_resamples": 20},
               tags=[run, "step=3"])
    report, theirs = got["report"], frd_sets["frd_score"]
    assert abs(report["frd"]["value"] - theirs) <= 1e-6 * abs(theirs), (report["frd"]["value"], theirs)
    assert report["fid"] > 0 and report["trust"]["level"] in ("high", "medium", "low")
    assert got["record"]["headline"]["frd"] == report["frd"]["value"]
    assert "Fréchet Radiomics Distance" in got["html"] and f"{report['frd']['value']:.3f}" in got["html"]
    with stack.client() as c:
        (point,) = c.get("/v1/series", params={"tag": run}).json()["points"]
    assert point["frd"] == report["frd"]["value"] and point["fid"] == report["fid"]
    assert point["frd_ci95_low"] <= point["frd"] <= point["frd_ci95_high"]


def test_a_sharded_frd_job_equals_the_unsharded_one(stack, frd_sets):
    options = {**FAST_OPTIONS, "metrics": ["frd"], "bootstrap_resamples": 20, "max_feature_rows": 8}
    whole = _job(stack, frd_sets, options)
    sharded = _job(stack, frd_sets, {**options, "shard_size": 5})
    a, b = whole["report"]["frd"], sharded["report"]["frd"]
    assert b["value"] == pytest.approx(a["value"], rel=1e-9, abs=0)
    assert b["sampling_ci95"] == pytest.approx(a["sampling_ci95"], rel=1e-9)
    assert whole["report"]["fid"] is None and whole["report"]["trust"] is None
    assert "No FID and no trust level" in whole["html"]


def test_a_sharded_frd_auto_job_runs_the_radiomics_as_shards_and_equals_the_unsharded_one(stack, tmp_path):
    """frd:auto on a medical reference (the study's held-out crops, never fitted on): the first merge finds it
    outside the FID network's domain and sends each set's radiomics as a second round of shards, never
    computing them itself; the job's report equals the unsharded job's."""
    from PIL import Image

    from bench.validation import domain_sets as DS

    held = DS.heldout(24)
    assert not held.notes, held.notes
    sets = {}
    for set_name, source in (("real", "medical_a"), ("generated", "natural_64_b")):
        folder = sets[set_name] = tmp_path / set_name
        folder.mkdir()
        for i, im in enumerate(held.sets[source].images[:10]):
            Image.fromarray(im).save(folder / f"{i:02d}.png")
    options = {**FAST_OPTIONS, "metrics": ["fid", "frd:auto"], "bootstrap_resamples": 10}
    whole = _job(stack, sets, options)["report"]
    sharded = _job(stack, sets, {**options, "shard_size": 4})
    report = sharded["report"]
    assert whole["trust"]["reference_domain"] == "outside" and whole["frd"] is not None
    assert report["frd"]["value"] == pytest.approx(whole["frd"]["value"], rel=1e-9, abs=0)
    assert report["frd"]["sampling_ci95"] == pytest.approx(whole["frd"]["sampling_ci95"], rel=1e-9)
    assert report["fid"] == pytest.approx(whole["fid"], rel=1e-9) and report["trust"] == whole["trust"]
    logs = "".join((stack.logs / f).read_text(errors="replace") for f in os.listdir(stack.logs) if "worker" in f)
    job = sharded["record"]["id"]
    for shard in ("real:0:radiomics", "real:2:radiomics", "generated:2:radiomics"):
        assert f"job {job}: shard {shard} done" in logs, logs[-3000:]


def test_without_a_worker_that_can_compute_frd_the_request_is_refused_with_422(make_stack, tmp_path, image_sets):
    """A worker without pyradiomics (an import stand-in that fails as a missing package does, first on its
    PYTHONPATH) advertises no FRD; the API then refuses FRD jobs at submission and still takes FID jobs."""
    blocker = tmp_path / "no-radiomics" / "radiomics"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('No module named radiomics (a worker without it)')\n")
    s = make_stack().start(workers=1, PYTHONPATH=str(blocker.parent))
    real, gen = _files(image_sets["real"]), _files(image_sets["generated"])
    with s.client() as c:
        r = upload(c, real, gen, {**FAST_OPTIONS, "metrics": ["fid", "frd:auto"]})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["code"] == "frd_unavailable" and "medical extra" in err["message"]
        assert upload(c, real, gen, FAST_OPTIONS).status_code == 202
