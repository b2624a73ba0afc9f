"""Staging in an object store (TRUSTFID_STAGING_URL), for an API and workers on different machines: the
real API and real Celery workers, each with its own data directory (nothing can pass through a shared
folder), against a real S3-compatible server. moto's server mode stands in for S3 or MinIO (third
parties we cannot run here as such); the service talks to it over HTTP through s3fs, as it would to
MinIO in docker-compose.yml.

Every stack stages under a prefix of its own (``store_env``), and every test reads only its own stack's
prefix: a test that fails cannot leave objects where another one looks.
"""

from __future__ import annotations

import io
import json
import signal
import tarfile
import threading
import uuid
from urllib.parse import parse_qs

import boto3
import pytest

from app.serve import free_port
from tests.support.images import pngs
from tests.support.presets import FAST_OPTIONS
from tests.support.service import KEY_A, Stack, err, strip_timing, upload, wait_for

BUCKET = "trustfid-staging"
CREDS = {"TRUSTFID_S3_ACCESS_KEY_ID": "test-access", "TRUSTFID_S3_SECRET_ACCESS_KEY": "test-secret",
         "TRUSTFID_S3_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client(url).create_bucket(Bucket=BUCKET)
    yield url
    server.stop()


def client(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test-access",
                        aws_secret_access_key="test-secret", region_name="us-east-1")


def keys(endpoint: str, bucket: str = BUCKET, prefix: str = "") -> list[str]:
    out = client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in out.get("Contents", [])]


def new_prefix() -> str:
    return f"svc-{uuid.uuid4().hex[:8]}"


def store_env(endpoint: str, prefix: str, **more) -> dict:
    return {"TRUSTFID_STAGING_URL": f"s3://{BUCKET}/{prefix}", "TRUSTFID_S3_ENDPOINT_URL": endpoint, **CREDS, **more}


@pytest.fixture
def split_stack(make_stack, s3_endpoint):
    """The API and one worker as if on two machines: their own data directories, staging in the store
    under ``s.prefix``, this test's own."""
    prefix = new_prefix()
    s = make_stack(**store_env(s3_endpoint, prefix))
    s.prefix = prefix
    s.worker_data = s.tmp / "worker-data"
    return s.start(TRUSTFID_DATA_DIR=str(s.worker_data))


class StoreEndpoint:
    """A second endpoint of the test's S3 server, on a port of its own, that a test takes away and brings
    back (moto keeps its buckets in this process: every endpoint sees the same objects). While away, the
    port refuses connections, and a connection kept alive from before gets 503 and is closed.

    ``start(trip="away")`` makes it go away by itself the moment the first removal (a DELETE or a bulk
    delete) reaches it: exactly between a job's last write and its cleanup. ``trip="hold"`` holds that
    request instead, until ``release()``, so that the test can kill the worker in that moment."""

    def __init__(self):
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.moto = DomainDispatcherApplication(create_backend_app)
        self.tripped, self.released = threading.Event(), threading.Event()
        self.trip: str | None = None
        self.away = True
        self.server = None

    def __call__(self, environ, start_response):
        method, query = environ["REQUEST_METHOD"], parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if self.trip and (method == "DELETE" or (method == "POST" and "delete" in query)):
            trip, self.trip = self.trip, None
            self.away = trip == "away"
            self.tripped.set()
            if trip == "hold":
                self.released.wait(60)
                self.away = True
        if self.away:
            start_response("503 Service Unavailable", [("Connection", "close"), ("Content-Length", "0")])
            return [b""]
        return self.moto(environ, start_response)

    def start(self, trip: str | None = None) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from werkzeug.serving import make_server

        self.trip, self.away = trip, False
        self.tripped.clear()
        self.server = make_server("127.0.0.1", self.port, self, threaded=True, request_handler=MotoRequestHandler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def stop(self) -> None:
        self.away = True
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


@pytest.fixture
def store_endpoint():
    endpoint = StoreEndpoint()
    yield endpoint
    endpoint.release()
    endpoint.stop()


def metric(stack: Stack, name: str) -> float:
    with stack.client(key=None) as c:
        lines = c.get("/metrics").text.splitlines()
    return float(next(line.rsplit(" ", 1)[1] for line in lines if line.startswith(name + " ")))


def folder_empty(path) -> bool:
    return not path.exists() or not any(path.iterdir())


def removed(endpoint: str, prefix: str, timeout: float = 30, also=lambda: True) -> None:
    """What docs/API.md promises: the objects under ``prefix`` go right after their record ends (a worker
    writes the end first, then removes them), or, when the store was away, a heartbeat after it is back.
    ``also()``: anything else that goes with them (a worker's local copy)."""
    wait_for(lambda: keys(endpoint, prefix=prefix) == [] and also(), timeout, f"the objects under {prefix} removed",
             log=lambda: str(keys(endpoint, prefix=prefix)))


def test_an_upload_goes_through_the_store_and_scores_as_on_a_shared_volume(split_stack, stack, image_sets, s3_endpoint):
    real, gen = pngs(image_sets["real"]), pngs(image_sets["generated"])
    with split_stack.client() as c:
        r = upload(c, real, gen, FAST_OPTIONS)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        # Accepted means in the store, and gone from the API's disk.
        assert folder_empty(split_stack.data_dir / "staging")
        rec = split_stack.wait_job(job)
        assert rec["state"] == "succeeded", rec
        stored = c.get(f"/v1/jobs/{job}/report").json()
    with stack.client() as c:  # the same job on the shared-volume stack, no object store
        plain = upload(c, real, gen, FAST_OPTIONS).json()["id"]
        assert stack.wait_job(plain)["state"] == "succeeded"
        shared = c.get(f"/v1/jobs/{plain}/report").json()
    assert strip_timing(stored) == strip_timing(shared)
    # Ended: the staged objects and the worker's working copy are gone.
    removed(s3_endpoint, f"{split_stack.prefix}/staging/", also=lambda: folder_empty(split_stack.worker_data / "staging"))


def test_a_reference_computed_by_one_worker_is_read_from_the_store(split_stack, image_sets, s3_endpoint):
    real, gen = pngs(image_sets["real"]), pngs(image_sets["generated"])
    with split_stack.client() as c:
        r = c.post("/v1/references", files=[("source", (p.name, p.read_bytes(), "image/png")) for p in real],
                   data={"options": json.dumps(FAST_OPTIONS), "name": "real set"})
        assert r.status_code == 202, r.text
        ref = r.json()["id"]
        assert split_stack.wait_job(ref, path="/v1/references/")["state"] == "succeeded"
        assert keys(s3_endpoint, prefix=f"{split_stack.prefix}/references/") == [
            f"{split_stack.prefix}/references/{ref}.npz"]
        assert not (split_stack.worker_data / "references" / f"{ref}.npz").exists()  # the store's copy only

        on_ref = c.post("/v1/jobs", files=[("generated", (p.name, p.read_bytes(), "image/png")) for p in gen],
                        data={"real": json.dumps({"reference_id": ref})}).json()["id"]
        direct = upload(c, real, gen, FAST_OPTIONS).json()["id"]
        assert split_stack.wait_job(on_ref)["state"] == "succeeded"
        assert split_stack.wait_job(direct)["state"] == "succeeded"
        fids = [c.get(f"/v1/jobs/{j}/report").json()["fid"] for j in (on_ref, direct)]
        assert fids[0] == pytest.approx(fids[1], rel=1e-9)

        assert c.delete(f"/v1/references/{ref}").status_code == 204
    assert keys(s3_endpoint, prefix=f"{split_stack.prefix}/references/") == []  # the API removed them before 204
    removed(s3_endpoint, f"{split_stack.prefix}/staging/")


def tgz(files) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for p in files:
            tf.add(p, arcname=p.name)
    return buf.getvalue()


def test_s3_uris_are_read_from_the_operators_store(split_stack, image_sets, s3_endpoint):
    data = f"datasets-{uuid.uuid4().hex[:8]}"
    s3 = client(s3_endpoint)
    s3.create_bucket(Bucket=data)
    s3.put_object(Bucket=data, Key="sets/real.tar.gz", Body=tgz(pngs(image_sets["real"])))
    s3.put_object(Bucket=data, Key="sets/gen.tar.gz", Body=tgz(pngs(image_sets["generated"])))
    with split_stack.client() as c:
        def job(real: str, gen: str) -> dict:
            r = c.post("/v1/jobs", json={"real": {"uri": real}, "generated": {"uri": gen}, "options": FAST_OPTIONS})
            assert r.status_code == 202, r.text
            return split_stack.wait_job(r.json()["id"])

        ok = job(f"s3://{data}/sets/real.tar.gz", f"s3://{data}/sets/gen.tar.gz")
        assert ok["state"] == "succeeded", ok
        assert ok["real"]["uri"] == f"s3://{data}/sets/real.tar.gz" and ok["fid"] > 0
        for missing in (f"s3://{data}/sets/nope.tar.gz", "s3://no-such-bucket-here/real.tar.gz"):
            bad = job(f"s3://{data}/sets/real.tar.gz", missing)
            assert bad["state"] == "failed", bad
            assert bad["error"]["code"] == "fetch_failed" and missing in bad["error"]["message"], bad
        # The service's own bucket is not an input, nor a chain of fsspec protocols or an odd bucket name.
        for forbidden in (f"s3://{BUCKET}/{split_stack.prefix}/references/x.npz", f"s3://{data}/sets/real.tar.gz::http://x/y",
                          "s3://169.254.169.254:80/latest.tar.gz", "s3://user@bucket/x.tar.gz"):
            err(c.post("/v1/jobs", json={"real": {"uri": forbidden}, "generated": {"uri": forbidden}}),
                422, "forbidden_uri")
        for not_one_object in (f"s3://{data}/sets/", f"s3://{data}/notes.txt"):
            err(c.post("/v1/jobs", json={"real": {"uri": not_one_object}, "generated": {"uri": not_one_object}}),
                415, "unsupported_type")
    assert split_stack.workers[0].poll() is None  # no bad URI took the worker down


def test_a_queued_upload_waits_in_the_store_and_cancelling_removes_it(make_stack, image_sets, s3_endpoint):
    prefix = new_prefix()
    s = make_stack(**store_env(s3_endpoint, prefix))
    s.start_api()  # no worker: the job stays queued
    with s.client() as c:
        job = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS).json()["id"]
        staged = keys(s3_endpoint, prefix=f"{prefix}/staging/{job}/")
        assert sorted(k.rsplit("/", 2)[-2] for k in staged) == ["generated"] * 4 + ["real"] * 4, staged
        assert folder_empty(s.data_dir / "staging")
        assert c.delete(f"/v1/jobs/{job}").json()["state"] == "cancelled"
    assert keys(s3_endpoint, prefix=f"{prefix}/staging/{job}/") == []  # the API removed them before answering


@pytest.mark.parametrize("where", ["store down", "no such bucket"])
def test_an_unreachable_store_refuses_uploads_with_503_and_keeps_nothing(make_stack, image_sets, s3_endpoint, where):
    endpoint = f"http://127.0.0.1:{free_port()}" if where == "store down" else s3_endpoint
    key = f"key-{uuid.uuid4().hex[:8]}"
    s = make_stack(**store_env(endpoint, new_prefix(), TRUSTFID_STAGING_URL=f"s3://missing-{uuid.uuid4().hex[:8]}/x"),
                   TRUSTFID_API_KEYS=key)
    s.start_api()
    with s.client(key) as c:
        e = err(upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS),
                503, "storage_unavailable")
        assert "object store" in e["message"]
        assert c.get("/v1/jobs").json()["jobs"] == []  # nothing half-accepted
    assert folder_empty(s.data_dir / "staging")


def test_a_worker_rides_out_a_store_restart_and_fails_a_job_whose_inputs_are_gone(
        make_stack, image_sets, s3_endpoint, store_endpoint):
    prefix = new_prefix()
    s = make_stack(**store_env(s3_endpoint, prefix))
    s.start_api()
    # The worker reaches the store through an endpoint of its own, away until the test brings it back.
    worker = s.start_worker(TRUSTFID_DATA_DIR=str(s.tmp / "worker-data"), TRUSTFID_STORAGE_RETRY_S="30",
                            TRUSTFID_S3_ENDPOINT_URL=store_endpoint.url)
    s.wait_ready()
    sets = pngs(image_sets["real"]), pngs(image_sets["generated"])

    def store_away_then_back(job: str, meanwhile=lambda: None) -> dict:
        wait_for(lambda: any("trying again" in line and job in line for line in s.log("worker1.log").splitlines()),
                 60, "the worker to retry the store", log=lambda: s.log("worker1.log"))
        meanwhile()
        store_endpoint.start()
        return s.wait_job(job)

    with s.client(KEY_A) as c:
        back = upload(c, *sets, FAST_OPTIONS).json()["id"]
        assert store_away_then_back(back)["state"] == "succeeded"
        removed(s3_endpoint, f"{prefix}/staging/{back}/")

        store_endpoint.stop()
        gone = upload(c, *sets, FAST_OPTIONS).json()["id"]
        remove = lambda: [client(s3_endpoint).delete_object(Bucket=BUCKET, Key=k)  # noqa: E731
                          for k in keys(s3_endpoint, prefix=f"{prefix}/staging/{gone}/")]
        rec = store_away_then_back(gone, remove)
        assert rec["state"] == "failed" and rec["error"]["code"] == "storage_error", rec
        assert "not in the object store" in rec["error"]["message"]
    assert worker.poll() is None


@pytest.mark.parametrize("moment", ["the store goes away", "the worker is killed"])
def test_nothing_staged_outlives_a_job_whose_cleanup_is_cut_short(make_stack, image_sets, s3_endpoint, store_endpoint,
                                                                   moment):
    """Between a job's last write and the removal of its staged objects, the store goes away (or the worker
    dies). The job has ended all the same; its objects are counted on /metrics as waiting, and a worker
    removes them once the store answers again (or another worker is alive)."""
    prefix = new_prefix()
    s = make_stack(**store_env(s3_endpoint, prefix), TRUSTFID_HEARTBEAT_S="0.5")
    s.start_api()
    killed = moment == "the worker is killed"
    store_endpoint.start(trip="hold" if killed else "away")
    worker = s.start_worker(TRUSTFID_DATA_DIR=str(s.tmp / "machine-1"), TRUSTFID_S3_ENDPOINT_URL=store_endpoint.url)
    s.wait_ready()
    with s.client() as c:
        job = upload(c, pngs(image_sets["real"]), pngs(image_sets["generated"]), FAST_OPTIONS).json()["id"]
        assert store_endpoint.tripped.wait(240), s.log("worker1.log")  # the first removal reached the store
        if killed:
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            store_endpoint.release()
        else:
            store_endpoint.stop()
        assert s.wait_job(job)["state"] == "succeeded"
    staged = f"{prefix}/staging/{job}/"
    assert len(keys(s3_endpoint, prefix=staged)) == 8  # 4 + 4 uploaded images, still there
    assert metric(s, "trustfid_cleanup_pending") == 1
    if killed:  # another worker (another machine, which reaches the store directly) finds them
        s.start_worker(TRUSTFID_DATA_DIR=str(s.tmp / "machine-2"))
        s.wait_ready()
    else:  # the worker tries again while the store is away, and keeps them counted
        wait_for(lambda: s.log("worker1.log").count(f"could not remove {BUCKET}/{staged.rstrip('/')}") >= 3, 60,
                 "the worker to try the removal again", log=lambda: s.log("worker1.log"))
        assert len(keys(s3_endpoint, prefix=staged)) == 8 and metric(s, "trustfid_cleanup_pending") == 1
        store_endpoint.start()  # back
    removed(s3_endpoint, staged)
    wait_for(lambda: metric(s, "trustfid_cleanup_pending") == 0, 10, "the cleanup count back to 0")


def test_a_sharded_job_over_workers_on_two_machines_equals_the_unsharded_job(
        redis_url, tmp_path_factory, image_sets, s3_endpoint):
    """Two workers with their own data folders (two machines): one uploaded set and one s3:// set, split
    into shards that both workers run; the merge reads shards the other machine made from the store."""
    from tests.support.service import shard_lines

    tmp = tmp_path_factory.mktemp("two-machines")
    prefix = new_prefix()
    s = Stack(redis_url, tmp, **store_env(s3_endpoint, prefix))
    machines = [tmp / "machine-1", tmp / "machine-2"]
    try:
        s.start_api()
        for data in machines:  # a sweep of ended jobs' copies every 20 heartbeats: every 5 s here
            s.start_worker(TRUSTFID_DATA_DIR=str(data), TRUSTFID_HEARTBEAT_S="0.25")
        s.wait_ready(workers=2)
        data = f"datasets-{uuid.uuid4().hex[:8]}"
        client(s3_endpoint).create_bucket(Bucket=data)
        client(s3_endpoint).put_object(Bucket=data, Key="gen.tar.gz", Body=tgz(pngs(image_sets["generated"])))
        real = pngs(image_sets["real"])
        files = [("real", (p.name, p.read_bytes(), "image/png")) for p in real]
        with s.client() as c:
            def job(options: dict) -> str:
                r = c.post("/v1/jobs", files=files, data={"generated": json.dumps({"uri": f"s3://{data}/gen.tar.gz"}),
                                                          "options": json.dumps(options)})
                assert r.status_code == 202, r.text
                return r.json()["id"]

            sharded, plain = job({**FAST_OPTIONS, "shard_size": 1}), job(FAST_OPTIONS)
            for j in (sharded, plain):
                assert s.wait_job(j)["state"] == "succeeded", s.log("worker1.log") + s.log("worker2.log")
            reports = [c.get(f"/v1/jobs/{j}/report").json() for j in (sharded, plain)]
        assert reports[0]["fid"] == pytest.approx(reports[1]["fid"], rel=1e-9)
        assert reports[0]["fid_mc"]["samples"] == pytest.approx(reports[1]["fid_mc"]["samples"], rel=1e-9)
        assert strip_timing(reports[0]) == strip_timing(reports[1])
        done = shard_lines(s, "done")
        assert sum(len(v) for v in done.values()) >= 8 and all(done.values()), done  # 4 + 4 shards, both machines
        # the store holds nothing of the ended jobs (a shard sent twice that finished after the merge removes
        # its own copy moments later: worker/shards.py)
        removed(s3_endpoint, f"{prefix}/staging/")
        # each machine drops its copies of the ended jobs' inputs and shards
        wait_for(lambda: all(folder_empty(m / "staging") for m in machines), 60, "both machines' sweeps",
                 log=lambda: str([list((m / "staging").iterdir()) for m in machines]))
    finally:
        s.close()
