"""The worker's guarantees, with real processes: a job survives a worker killed with SIGKILL
mid-job (Redis hands its unacknowledged message to the next worker), cancelling stops a running job,
and deleting a finished one removes it."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support.images import pngs, write_images
from tests.support.presets import FAST_OPTIONS
from tests.support.service import part_way, strip_timing, upload, wait_for

SLOW = {**FAST_OPTIONS, "batch_size": 2}  # many small batches: progress to watch, and places to stop


@pytest.fixture(scope="module")
def bigger_sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("bigger")
    return pngs(write_images(d / "real", 10, seed=11)), pngs(write_images(d / "gen", 10, seed=12, shift=0.2))


def test_job_survives_kill_9_of_its_worker(make_stack, bigger_sets):
    s = make_stack()
    s.start_api()
    first = s.start_worker()
    s.wait_ready()
    real, gen = bigger_sets
    with s.client() as c:
        job = upload(c, real, gen, SLOW).json()["id"]

        wait_for(lambda: part_way(c.get(f"/v1/jobs/{job}").json(), 2), what="the job to be part-way",
                 log=lambda: s.log("worker1.log"))
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert c.get(f"/v1/jobs/{job}").json()["state"] == "running"  # the record still says so: nobody knows yet

        s.start_worker()
        rec = s.wait_job(job)
        assert rec["state"] == "succeeded", rec
        assert rec["attempts"] == 2
        survived = c.get(f"/v1/jobs/{job}/report").json()

        # The same inputs and seed, undisturbed, give the same report.
        again = upload(c, real, gen, SLOW).json()["id"]
        assert s.wait_job(again)["state"] == "succeeded"
        undisturbed = c.get(f"/v1/jobs/{again}/report").json()
    assert strip_timing(survived) == strip_timing(undisturbed)


def test_cancel_a_running_job_then_delete_it(stack, bigger_sets, image_sets):
    real, gen = bigger_sets
    with stack.client() as c:
        job = upload(c, real, gen, SLOW).json()["id"]
        wait_for(lambda: c.get(f"/v1/jobs/{job}").json()["state"] == "running", what="running")
        r = c.delete(f"/v1/jobs/{job}")
        assert r.status_code == 202 and r.json()["state"] == "cancelled"
        # The worker stops at its next batch and is free for the next job, which succeeds.
        nxt = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS).json()["id"]
        assert stack.wait_job(nxt)["state"] == "succeeded"
        rec = c.get(f"/v1/jobs/{job}").json()
        assert rec["state"] == "cancelled" and rec["fid"] is None
        assert c.get(f"/v1/jobs/{job}/report").json()["error"]["code"] == "job_cancelled"
        assert not (stack.data_dir / "staging" / job).exists()
        # A finished job is deleted: gone for good.
        assert c.delete(f"/v1/jobs/{job}").status_code == 204
        assert c.get(f"/v1/jobs/{job}").status_code == 404
        assert c.delete(f"/v1/jobs/{nxt}").status_code == 204
        assert c.get(f"/v1/jobs/{nxt}/report").status_code == 404
        assert all(j["id"] not in (job, nxt) for j in c.get("/v1/jobs").json()["jobs"])


def test_cancel_a_queued_job(make_stack, image_sets):
    s = make_stack()  # an API with no worker: the job stays queued, and the API says nothing runs it
    s.start_api()
    with s.client() as c:
        accepted = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS)
        assert accepted.status_code == 202 and "no worker is running" in accepted.json()["notice"]
        job = accepted.json()["id"]
        polled = c.get(f"/v1/jobs/{job}").json()
        assert polled["state"] == "queued" and "no worker is running" in polled["notice"]
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json() | {"message": "-"} == {"status": "unavailable", "redis": True, "workers": 0, "message": "-"}
        assert "queued" in ready.json()["message"]
        assert c.delete(f"/v1/jobs/{job}").json()["state"] == "cancelled"
        s.start_worker()  # a worker that gets the message leaves the cancelled job alone
        s.wait_ready()
        ok = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS).json()["id"]
        assert s.wait_job(ok)["state"] == "succeeded"
        rec = c.get(f"/v1/jobs/{job}").json()
        assert rec["state"] == "cancelled" and rec["attempts"] == 0


def test_lost_jobs_are_queued_again_only_by_their_own_services_workers(redis_url, tmp_path):
    """Two services on one Redis (their own queues, workers and data folders): a running job whose
    lease lapsed is taken up by its own service's reaper only; the other's workers could not read its
    inputs."""
    from app.settings import Settings
    from app.store import Store, Stored, connect, new_id
    from trustfid.records import InputInfo, JobOptions, JobRecord

    store = Store(connect(redis_url), Settings(redis_url=redis_url, data_dir=tmp_path))
    made = {}
    for queue in ("service-a", "service-b"):
        rec = JobRecord(id=new_id(), state="running", created_at=time.time(), real=InputInfo(kind="upload"),
                        generated=InputInfo(kind="upload"), options=JobOptions())
        made[queue] = Stored(owner="test", record=rec, queue=queue)
        store.create(made[queue])
    try:
        taken = {record_id for _, record_id in store.orphans("service-a")}
        assert made["service-a"].record.id in taken and made["service-b"].record.id not in taken
        assert made["service-b"].record.id in {record_id for _, record_id in store.orphans("service-b")}
    finally:
        for st in made.values():
            store.delete(st)


def test_a_worker_whose_lease_passed_to_another_writes_neither_its_end_nor_its_report(redis_url, tmp_path):
    """The fence of a worker cut off past its lease (tests/test_hosts.py runs it across hosts): while
    another worker holds the record's lease, this one's progress, end and report are refused; once the
    lease is free again and the record still runs, its write takes the lease back."""
    from app.settings import Settings
    from app.store import Finish, LeaseLost, Store, Stored, connect, keys, new_id
    from trustfid.records import InputInfo, JobOptions, JobRecord

    store = Store(connect(redis_url), Settings(redis_url=redis_url, data_dir=tmp_path, lease_s=30))
    rec = JobRecord(id=new_id(), state="running", created_at=time.time(), real=InputInfo(kind="upload"),
                    generated=InputInfo(kind="upload"), options=JobOptions())
    st = Stored(owner="test", record=rec, queue="fence")
    store.create(st)
    try:
        with store.lease(rec.id, "worker-a"):
            store.r.set(keys.lease(rec.id), "worker-b")  # a's lease lapsed while it was away; b took the job
            with pytest.raises(LeaseLost, match="worker-b"):
                store.update(rec.id, Finish("succeeded", report='{"fid": 1.0}', fid=1.0), fence=(rec.id, "worker-a"))
            assert store.get(rec.id).record.state == "running" and store.get_report(rec.id) is None

            store.r.delete(keys.lease(rec.id))  # b died as well: nobody holds it
            done = store.update(rec.id, Finish("succeeded", report='{"fid": 1.0}', fid=1.0), fence=(rec.id, "worker-a"))
            assert done.record.state == "succeeded" and store.get_report(rec.id) == '{"fid": 1.0}'
            assert store.lease_holder(rec.id) == "worker-a"

            # A second end (first end wins) writes neither the record nor the report.
            store.update(rec.id, Finish("failed", report='{"fid": 2.0}'), fence=(rec.id, "worker-a"))
            assert store.get(rec.id).record.state == "succeeded" and store.get_report(rec.id) == '{"fid": 1.0}'
    finally:
        store.delete(st)


def test_a_progress_write_is_fenced_by_the_lease_and_stops_once_the_record_ended(redis_url, tmp_path):
    """A progress write (its own key, one Lua script) keeps the fence of every other write: refused while
    another worker holds the lease, taking it back once nobody does; once the record has ended it writes
    nothing, and the worker learns that it ended. The end folds the last progress into the record."""
    from app.settings import Settings
    from app.store import Finish, LeaseLost, Store, Stored, connect, keys, new_id
    from trustfid.records import InputInfo, JobOptions, JobRecord
    from trustfid.schemas import Progress
    from worker.hooks import Hooks

    settings = Settings(redis_url=redis_url, data_dir=tmp_path, lease_s=30)
    store = Store(connect(redis_url), settings)
    rec = JobRecord(id=new_id(), state="running", created_at=time.time(), real=InputInfo(kind="upload"),
                    generated=InputInfo(kind="upload"), options=JobOptions())
    st = Stored(owner="test", record=rec, queue="fence")
    store.create(st)
    raw = store.r.get(keys.record(rec.id))
    shown = Progress(stage="extracting", set="real", images_done=4, images_total=10)
    hooks = Hooks(store, rec.id, settings, holder="worker-a")
    try:
        store.r.set(keys.lease(rec.id), "worker-b", px=30_000)  # a's lease lapsed while it was away; b took it
        with pytest.raises(LeaseLost, match="worker-b"):
            hooks.write_record(shown)
        assert store.get(rec.id).record.progress is None and not store.r.exists(keys.progress(rec.id))

        store.r.delete(keys.lease(rec.id))  # b died as well: nobody holds it
        hooks.write_record(shown)
        assert store.lease_holder(rec.id) == "worker-a" and store.get(rec.id).record.progress == shown
        assert store.r.get(keys.record(rec.id)) == raw  # the record itself is not rewritten

        store.update(rec.id, Finish("cancelled"))  # the API's cancel
        assert not store.r.exists(keys.progress(rec.id)) and store.get(rec.id).record.progress == shown
        hooks.write_record(shown.model_copy(update={"images_done": 6}))
        assert hooks.ended == "cancelled" and hooks.should_cancel()
        assert not store.r.exists(keys.progress(rec.id)) and store.get(rec.id).record.progress == shown
    finally:
        store.delete(st)
        store.r.delete(keys.lease(rec.id))


def test_progress_moves_while_the_record_stays_byte_identical(stack, bigger_sets):
    """A running job's progress is written beside its record (O(1) whatever the record's size): the record
    as stored stays the same bytes while GET /v1/jobs/{id} shows the images done moving. A cancel then
    folds the last progress shown into the record and removes the progress key."""
    import redis

    from app.store import keys

    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    real, gen = bigger_sets
    with stack.client() as c:
        job = upload(c, real, gen, SLOW).json()["id"]
        wait_for(lambda: part_way(c.get(f"/v1/jobs/{job}").json()), what="the job to be part-way",
                 log=lambda: stack.log("worker1.log"))
        stored = r.get(keys.record(job))
        seen: set[tuple] = set()

        def moved() -> bool:
            raw = r.get(keys.record(job))  # read before the record the API shows: both were running then
            rec = c.get(f"/v1/jobs/{job}").json()
            # (each set's count starts again from 0: a poll may land on the second set's first batch)
            assert rec["state"] == "running", f"the job ended before its progress was seen to move: {rec}"
            assert raw == stored, "a progress write rewrote the record"
            seen.add((rec["progress"]["set"], rec["progress"]["images_done"]))
            return len(seen) >= 3

        wait_for(moved, what="three different counts of images done", log=lambda: stack.log("worker1.log"))
        last = c.get(f"/v1/jobs/{job}").json()["progress"]
        assert c.delete(f"/v1/jobs/{job}").status_code == 202
        ended = stack.wait_job(job)
        assert ended["state"] == "cancelled" and ended["progress"]["images_done"] >= last["images_done"]
        assert not r.exists(keys.progress(job))
        assert c.delete(f"/v1/jobs/{job}").status_code == 204
