"""Two worker hosts that lose each other: each worker runs in a network namespace of its own (a "host",
tests/support/hosts.py) with its own data folder and no shared folder, staging through the object store as
docs/API.md's multi-machine set-up says. Redis, the object store (moto's server, standing in for S3 or
MinIO, which we cannot run here as such) and the API stay on this machine, outside both hosts.

Each scenario cuts a host's network (its link down: packets dropped, connections hang) or makes the store
unreachable from it, and checks what a user sees: the job ends with the report of an undisturbed run, the
host that comes back writes nothing over it, and nothing is left in Redis, in the store or on either
host. The service's settings here are the test stack's: a 3 s lease renewed every second.

Needs root to make network namespaces; CI runs as root, elsewhere these tests skip and say why.
"""

from __future__ import annotations

import json
import logging
import re
import time

import boto3
import pytest
import redis

import app.store.keys as keys
from app.serve import free_port, start_redis, stop_process
from tests.support.hosts import Hosts, why_not
from tests.support.images import pngs, write_images
from tests.support.presets import SLOW
from tests.support.service import Stack, part_way, strip_timing, upload, wait_for

pytestmark = pytest.mark.service

BUCKET = "trustfid-hosts"
CREDS = {"TRUSTFID_S3_ACCESS_KEY_ID": "test-access", "TRUSTFID_S3_SECRET_ACCESS_KEY": "test-secret",
         "TRUSTFID_S3_REGION": "us-east-1"}
PREFIX = "two-hosts"


@pytest.fixture(scope="module")
def hosts():
    why = why_not()
    if why:
        pytest.skip(f"the two-host tests need network namespaces: {why}")
    with Hosts(2) as made:
        yield made


@pytest.fixture(scope="module")
def cluster(hosts, tmp_path_factory):
    """Redis and the store on this machine (reachable from each host at its own addresses), the API here,
    and one worker on each host."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
    tmp = tmp_path_factory.mktemp("two-hosts")
    port, s3_port = free_port(), free_port()
    redis_proc = start_redis(tmp / "redis", port, appendonly=False, log=tmp / "redis.log",
                             also_bind=tuple(h.redis for h in hosts))
    servers = [ThreadedMotoServer(ip_address=address, port=s3_port, verbose=False)
               for address in ("127.0.0.1", *(h.store for h in hosts))]  # one moto: every address sees the same
    for server in servers:
        server.start()
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3_port}", aws_access_key_id="test-access",
                      aws_secret_access_key="test-secret", region_name="us-east-1")
    s3.create_bucket(Bucket=BUCKET)
    s = Stack(f"redis://127.0.0.1:{port}/0", tmp, TRUSTFID_STAGING_URL=f"s3://{BUCKET}/{PREFIX}",
              TRUSTFID_S3_ENDPOINT_URL=f"http://127.0.0.1:{s3_port}", **CREDS)
    try:
        s.start_api()
        for h in hosts:
            s.start_worker(wrap=h.wrap(), TRUSTFID_REDIS_URL=f"redis://{h.redis}:{port}/0",
                           TRUSTFID_S3_ENDPOINT_URL=f"http://{h.store}:{s3_port}", TRUSTFID_DATA_DIR=str(tmp / h.name))
        s.wait_ready(workers=2)
        s.hosts, s.s3, s.redis = hosts, s3, redis.Redis(port=port, decode_responses=True)
        s.folders = [tmp / h.name for h in hosts]
        yield s
    finally:
        s.close()
        for server in servers:
            server.stop()
        stop_process(redis_proc, 5)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("two-host-sets")
    return pngs(write_images(d / "real", 16, seed=31)), pngs(write_images(d / "gen", 16, seed=32, shift=0.2))


@pytest.fixture(scope="module")
def undisturbed(cluster, sets) -> dict:
    """The report of the job, run with nothing cut."""
    with cluster.client() as c:
        job = upload(c, *sets, SLOW).json()["id"]
        assert cluster.wait_job(job)["state"] == "succeeded"
        report = strip_timing(c.get(f"/v1/jobs/{job}/report").json())
    nothing_left(cluster, job)
    return report


def host_of(s: Stack, lease: str) -> int | None:
    """Which host's worker holds a lease (a worker's id is host:pid:random)."""
    holder = s.redis.get(keys.lease(lease))
    pids = [w.pid for w in s.workers]
    return pids.index(int(holder.split(":")[1])) if holder else None


def worker_log(s: Stack, i: int) -> str:
    return (s.logs / f"worker{i + 1}.log").read_text(errors="replace")


def ended(s: Stack, job: str) -> tuple[dict, str]:
    """The ended record and the report exactly as stored, timing included."""
    rec = s.wait_job(job)
    with s.client() as c:
        return rec, c.get(f"/v1/jobs/{job}/report").text


def nothing_left(s: Stack, job: str) -> None:
    """No staged object, no copy on either host, and no lease, shard hash or cleanup mark in Redis."""
    def clean():
        objects = s.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/").get("Contents", [])
        copies = [f for folder in s.folders for f in (folder / "staging").glob(f"*{job}*")]
        in_redis = [k for k in s.redis.scan_iter(match=f"*{job}*")
                    if not k.startswith((keys.record(""), keys.report(""), keys.requeued("")))]
        marks = [m for m in s.redis.zrange(keys.cleanup(s.settings.queue), 0, -1) if job in m]
        return not (objects or copies or in_redis or marks) or None
    wait_for(clean, 60, f"job {job} to leave nothing behind", log=lambda: str(s.s3.list_objects_v2(
        Bucket=BUCKET, Prefix=f"{PREFIX}/").get("Contents", [])) + str(list(s.redis.scan_iter(match=f"*{job}*"))))


def test_a_host_cut_off_mid_job_loses_it_to_the_other_and_writes_nothing_over_it_on_its_return(cluster, sets,
                                                                                                 undisturbed):
    s = cluster
    with s.client() as c:
        job = upload(c, *sets, SLOW).json()["id"]
        wait_for(lambda: part_way(c.get(f"/v1/jobs/{job}").json(), 2) and host_of(s, job) is not None, 120,
                 "the job to be part-way on a host")
    x = host_of(s, job)
    cut_at = time.monotonic()
    s.hosts[x].cut()
    try:
        wait_for(lambda: host_of(s, job) == 1 - x, 60, "the other host to take the job over",
                 log=lambda: worker_log(s, 1 - x)[-3000:])
        redelivered_s = time.monotonic() - cut_at
        rec, report = ended(s, job)  # the other host ran it to its end while this one was away
    finally:
        s.hosts[x].restore()
    assert rec["state"] == "succeeded" and rec["attempts"] == 2, rec
    assert strip_timing(json.loads(report)) == undisturbed

    # Back on the network, the first host finds the job over at its next write: it stops, writes nothing.
    wait_for(lambda: f"score {job} ended (succeeded) while this worker ran it" in worker_log(s, x), 120,
             "the returning host to stop", log=lambda: worker_log(s, x)[-3000:])
    again, report_again = ended(s, job)
    assert again == rec and report_again == report  # the record and the report, timing and all, are the other host's
    nothing_left(s, job)
    s.wait_ready(workers=2)  # the returning host works again
    print(f"a job on a host cut off was taken over by the other after {redelivered_s:.1f} s (lease 3 s, heartbeat 1 s)")


def test_a_host_cut_off_mid_shard_has_its_shard_redone_elsewhere_and_merged_once(cluster, sets, undisturbed):
    s = cluster
    sharded = {**SLOW, "shard_size": 6}  # 16 + 16 images: three shards a set, both hosts busy

    def running_shard():
        h = s.redis.hgetall(keys.shards(job))
        for shard, state in h.items():
            if state == "running" and int(h.get(f"{shard}:done", 0)) >= 1 and host_of(s, f"{job}:{shard}") is not None:
                return shard
        return None

    with s.client() as c:
        job = upload(c, *sets, sharded).json()["id"]
        shard = wait_for(running_shard, 120, "a shard part-way on a host")
    x = host_of(s, f"{job}:{shard}")
    s.hosts[x].cut()
    try:
        rec, report = ended(s, job)
    finally:
        s.hosts[x].restore()
    assert rec["state"] == "succeeded", rec
    assert strip_timing(json.loads(report)) == undisturbed  # sharded, redone: the unsharded report exactly
    redone = re.findall(rf"job {job}: shard {re.escape(shard)} done on worker", worker_log(s, 1 - x))
    assert redone, "the cut host's shard was not run by the other host"
    def merges():
        return [line for i in (0, 1) for line in worker_log(s, i).splitlines() if f"job {job}: its shards merged" in line]
    wait_for(merges, 30, "the merge's line in its log")

    # The returning host finishes its shard (or retries it), finds the job over, and drops its statistics.
    back = wait_for(lambda: re.search(rf"job {job}: shard {re.escape(shard)} (\w+) on worker", worker_log(s, x)), 120,
                    "the returning host to end its shard", log=lambda: worker_log(s, x)[-3000:])
    assert back.group(1) in ("late", "succeeded"), back.group(0)  # "succeeded": the job's state, on a retry
    again, report_again = ended(s, job)
    assert again == rec and report_again == report
    assert len(merges()) == 1, merges()
    nothing_left(s, job)
    s.wait_ready(workers=2)


def test_a_store_unreachable_from_one_host_for_30_s_is_waited_out_and_loses_nothing(cluster, sets, undisturbed):
    s = cluster
    blocked = s.hosts[0]
    blocked.block(blocked.store)
    try:
        with s.client() as c:  # one job a host (each worker takes one at a time)
            jobs = [upload(c, *sets, SLOW).json()["id"] for _ in range(2)]
        wait_for(lambda: "object store: hand out the job's staged inputs failed" in worker_log(s, 0), 60,
                 "the cut-off host to meet the store away", log=lambda: worker_log(s, 0)[-3000:])
        time.sleep(30)
    finally:
        blocked.unblock(blocked.store)
    with s.client() as c:
        for job in jobs:
            assert s.wait_job(job)["state"] == "succeeded"
            assert strip_timing(c.get(f"/v1/jobs/{job}/report").json()) == undisturbed
    for job in jobs:
        nothing_left(s, job)
