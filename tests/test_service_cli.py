"""The service's commands against a live stack: `trustfid submit` on a registered reference, with tags and
with conflicting options; `--wait` shows progress and prints the summary `trustfid score` prints; the
worker healthcheck."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT
from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_A
from trustfid.client import Client
from trustfid.records import JobRecord

SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def reference(stack, image_sets):
    """A reference computed with FAST_OPTIONS: 2 passes and seed 7, not the defaults (20, 0)."""
    with Client(stack.url, KEY_A) as client:
        return client.register_reference(image_sets["real"], FAST_OPTIONS).wait(timeout=240).status()


def trustfid(stack, *args, **env):
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600, env={**os.environ, **stack.env, "TRUSTFID_URL": stack.url,
                                            "TRUSTFID_API_KEY": KEY_A, **env})


def test_tags_on_a_reference_job_keep_the_references_options(stack, reference):
    """`submit ref:ID gen --tag step=7 --wait`: before, the tag replaced the options with the defaults
    (20 passes) and the job failed after running. Now it scores, shows progress, and prints the summary."""
    p = trustfid(stack, "submit", f"ref:{reference.id}", str(SAMPLES / "generated"), "--tag", "run=cli",
                 "--tag", "step=7", "--wait", "--json", str(stack.tmp / "cli-report.json"))
    assert p.returncode == 0, p.stderr
    with Client(stack.url, KEY_A) as client:
        (job,) = client.jobs(tags=["run=cli", "step=7"])
        rec = client.job(job.id).status()
        report = client.job(job.id).report()
    assert rec.state == "succeeded" and rec.options.tags == ["run=cli", "step=7"]
    assert (rec.options.passes, rec.options.seed, rec.options.batch_size) == (2, 7, FAST_OPTIONS["batch_size"])
    from trustfid.cli import summary as _summary

    assert p.stdout == _summary(report) + "\n"  # exactly what `trustfid score` prints, reasons included
    assert "trust:" in p.stdout and report.trust.reasons and report.trust.reasons[0] in p.stdout
    assert f"job {job.id} accepted" in p.stderr and f"job {job.id} succeeded" in p.stderr
    assert "extracting generated set, 24 images" in p.stderr, p.stderr  # progress while it ran
    assert (stack.tmp / "cli-report.json").is_file()


def test_options_that_conflict_with_a_reference_are_refused_before_queueing(stack, reference, image_sets):
    with stack.client() as c:
        before = len(c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
        r = c.post("/v1/jobs", json={"real": {"reference_id": reference.id}, "generated": {"reference_id": reference.id},
                                     "options": {"passes": 5, "seed": 7, "tags": ["x"]}})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "incompatible_options"
        assert f"reference {reference.id} (real) was computed with passes=2, not 5" in err["message"]
        # Options that do not touch the statistics are free, and the numbers stay the reference's.
        r = c.post("/v1/jobs", data={"real": f'{{"reference_id": "{reference.id}"}}',
                                     "options": '{"bootstrap_resamples": 7, "callback_url": null, "tags": ["y"]}'},
                   files=[("generated", (f.name, f.read_bytes())) for f in pngs(image_sets["generated"])])
        assert r.status_code == 202, r.text
        opts = JobRecord.model_validate(r.json()).options
        assert (opts.passes, opts.seed, opts.bootstrap_resamples, opts.tags) == (2, 7, 7, ["y"])
        assert len(c.get("/v1/jobs", params={"limit": 1000}).json()["jobs"]) == before + 1
    p = trustfid(stack, "submit", f"ref:{reference.id}", str(SAMPLES / "generated"), "--passes", "20")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "passes=2, not 20" in p.stderr
    assert stack.wait_job(r.json()["id"])["state"] == "succeeded"


def test_worker_healthcheck(stack):
    p = trustfid(stack, "healthcheck")
    assert p.returncode == 0, p.stderr
    assert "worker alive" in p.stdout
    p = trustfid(stack, "healthcheck", TRUSTFID_QUEUE="a-queue-nobody-serves")
    assert p.returncode == 1 and p.stderr.count("\n") == 1
    assert "no worker of queue 'a-queue-nobody-serves'" in p.stderr
    p = trustfid(stack, "healthcheck", TRUSTFID_REDIS_URL="redis://127.0.0.1:9/0")
    assert p.returncode == 1 and "Redis is not reachable" in p.stderr
