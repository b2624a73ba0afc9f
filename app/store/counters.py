"""The counters and histograms behind /metrics, kept in Redis so that every API replica reports the
same numbers (app/metrics.py formats them): records by state, ends by final state, durations, queue
waits and images scored. A histogram is a Redis hash of cumulative bucket counts, sum and count."""

from __future__ import annotations

import time

import app.store.keys as keys
from trustfid.records import FINAL_STATES

from .base import execute

DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, float("inf"))
KINDS = ("score", "reference")


def bucket_label(b: float) -> str:
    """A histogram bucket's upper bound as Prometheus writes it."""
    return "+Inf" if b == float("inf") else str(b)


def observe(pipe, key: str, seconds: float) -> None:
    """One observation into a histogram."""
    seconds = max(0.0, float(seconds))
    for b in DURATION_BUCKETS:
        if seconds <= b:
            pipe.hincrby(key, bucket_label(b), 1)
    pipe.hincrbyfloat(key, "sum", seconds)
    pipe.hincrby(key, "count", 1)


def record_state_change(pipe, old, new) -> None:
    """A record moving from ``old`` to ``new`` (records.py ``update``): between the state sets, and
    into the counters: queue wait when it first starts, duration and images when it ends."""
    o, n, kind = old.state, new.state, new.kind
    if o == n:
        return
    pipe.srem(keys.state(kind, o), new.id)
    if n not in FINAL_STATES:
        pipe.sadd(keys.state(kind, n), new.id)
    if n == "running" and o == "queued" and new.started_at:
        observe(pipe, keys.queue_wait(kind), new.started_at - new.created_at)
    if n in FINAL_STATES:
        pipe.hincrby(keys.finished(kind), n, 1)
        if new.started_at and new.finished_at:
            observe(pipe, keys.duration(kind, n), new.finished_at - new.started_at)
        if n == "succeeded" and new.progress and new.progress.images_total:
            pipe.incrby(keys.images(kind), new.progress.images_total)


class Counters:
    """The metrics part of the Store (app/store/__init__.py)."""

    def metrics_snapshot(self, queue: str) -> dict:
        """Everything /metrics shows, read in one round trip (app/metrics.py formats it)."""
        finals = sorted(FINAL_STATES)
        pipe = self.r.pipeline()
        for kind in KINDS:
            for state in ("queued", "running"):
                pipe.scard(keys.state(kind, state))
            pipe.hgetall(keys.finished(kind))
            for state in finals:
                pipe.hgetall(keys.duration(kind, state))
            pipe.hgetall(keys.queue_wait(kind))
            pipe.get(keys.images(kind))
        pipe.llen(queue)
        pipe.zcount(keys.workers(queue), time.time() - self.worker_ttl, "+inf")
        pipe.zcard(keys.cleanup(queue))
        res = iter(execute(pipe))
        out: dict = {"active": {}, "finished": {}, "duration": {}, "queue_wait": {}, "images": {}}
        for kind in KINDS:
            out["active"][kind] = {"queued": next(res), "running": next(res)}
            out["finished"][kind] = {k: int(v) for k, v in next(res).items()}
            out["duration"][kind] = {state: next(res) for state in finals}
            out["queue_wait"][kind] = next(res)
            out["images"][kind] = int(next(res) or 0)
        out["queue_depth"] = next(res)
        out["workers"] = next(res)
        out["cleanup_pending"] = next(res)
        return out
