"""Faults against the real embedded stack (`trustfid serve`: redis-server, one Celery worker, the
API): a worker or redis-server killed with SIGKILL is restarted and every accepted job completes with
the report an undisturbed run gives; a job cut short by stopping `serve` runs again within a minute of
the next start; a burst of concurrent jobs loses none."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.images import pngs, write_images
from tests.support.presets import FAST_OPTIONS, SLOW
from tests.support.service import Serve, part_way, upload

pytestmark = pytest.mark.service


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault-sets")
    return pngs(write_images(d / "real", 16, seed=21)), pngs(write_images(d / "gen", 16, seed=22, shift=0.2))


@pytest.fixture
def serve(tmp_path):
    made = []

    def make(**env) -> Serve:
        s = Serve(tmp_path, **{"TRUSTFID_HEARTBEAT_S": "1", "TRUSTFID_LEASE_S": "3", **env})
        made.append(s)
        return s.start()

    yield make
    for s in made:
        s.stop()


def _running(s: Serve, job_id: str) -> bool:
    rec = s.job(job_id)
    return rec["state"] is not None and part_way(rec)  # None: Redis restarting


def test_worker_killed_mid_job_is_restarted_and_the_job_completes_unchanged(serve, sets):
    s = serve()
    with s.client() as c:
        job = upload(c, *sets, SLOW).json()["id"]
        s.wait(lambda: _running(s, job), 120, "the job to be running")
        worker = s.child("celery")
        os.kill(worker, signal.SIGKILL)
        s.wait(lambda: s.child("celery") != worker, 60, "a new worker")
        rec = s.wait_done(job)
        assert rec["state"] == "succeeded" and rec["attempts"] == 2, rec
        assert "worker exited" in s.log() and "worker restarted" in s.log()
        again = upload(c, *sets, SLOW).json()["id"]  # an undisturbed run of the same job
        assert s.wait_done(again)["state"] == "succeeded"
    assert s.report(job) == s.report(again)


def test_redis_killed_with_jobs_queued_and_running_loses_none(serve, sets):
    s = serve()
    with s.client() as c:
        jobs = [upload(c, *sets, SLOW).json()["id"] for _ in range(3)]
        s.wait(lambda: _running(s, jobs[0]), 120, "the first job to be running")
        redis = s.child("redis-server")
        os.kill(redis, signal.SIGKILL)
        s.wait(lambda: s.child("redis-server") != redis, 60, "a new redis-server")
        records = [s.wait_done(j, 300) for j in jobs]
    assert [r["state"] for r in records] == ["succeeded"] * 3, records
    assert "redis-server exited" in s.log() and "redis-server restarted" in s.log()
    reports = [s.report(j) for j in jobs]
    assert reports[0] == reports[1] == reports[2]  # the same job three times: the same report


def test_a_job_cut_short_by_stopping_serve_runs_again_within_a_minute(tmp_path, sets):
    """Default lease and heartbeat: the guarantee as shipped."""
    s = Serve(tmp_path, TRUSTFID_SHUTDOWN_GRACE_S="0").start()
    try:
        with s.client() as c:
            job = upload(c, *sets, SLOW).json()["id"]
        s.wait(lambda: _running(s, job), 120, "the job to be running")
        s.stop(signal.SIGTERM)  # no grace: the running job is cut short
        assert s.proc.returncode is not None
        s.start()  # the same data folder: Redis comes back from its append-only file
        t0 = time.monotonic()
        s.wait(lambda: s.job(job)["attempts"] >= 2, 60, "the job to start again")
        assert time.monotonic() - t0 < 60
        assert s.wait_done(job)["state"] == "succeeded"
    finally:
        s.stop()


def test_twelve_concurrent_jobs_all_complete(serve, sets):
    """Twelve uploads at once (more than the service's workers and decode processes): every one is accepted
    and ends with the same FID. Twelve, not more: each job adds seconds to the suite and nothing new."""
    s = serve()
    tiny = {**FAST_OPTIONS, "passes": 0, "bootstrap_resamples": 0}
    real, gen = sets[0][:2], sets[1][:2]

    def submit(_):
        with s.client() as c:
            return upload(c, real, gen, tiny)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(submit, range(12)))
    assert [a.status_code for a in answers] == [202] * 12
    records = [s.wait_done(a.json()["id"], 300) for a in answers]
    assert all(r["state"] == "succeeded" for r in records), [r["state"] for r in records]
    fids = {r["fid"] for r in records}
    assert len(fids) == 1  # the same inputs twelve times: one FID
