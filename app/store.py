"""The Redis job store: job and reference records as JSON (trustfid/records.py models), reports, cancel
flags, per-key rate limits, worker heartbeats and leases, and the counters behind /metrics.

Used by the API (app/api.py) and the worker (worker/tasks.py); plain functions over a redis-py client,
no Celery here. Every record is one JSON string under ``trustfid:rec:<id>``; a record carries its
owner (the sha256 of the API key that made it) and the paths of its staged inputs beside the public
record, so the public part is exactly the schema the API returns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated

import redis
from pydantic import BaseModel, ConfigDict, Field

from app.errors import NotFoundError, RateLimitError, UnavailableError
from app.settings import Settings
from trustfid.records import FINAL_STATES, JobRecord, ReferenceRecord

P = "trustfid:"
DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 3600, float("inf"))


class Stored(BaseModel):
    """What Redis holds for one job or reference."""

    model_config = ConfigDict(extra="forbid")

    owner: str
    paths: dict[str, str] = Field(default_factory=dict,
                                  description="staged input paths / stats file; never shown to callers")
    record: Annotated[JobRecord | ReferenceRecord, Field(discriminator="kind")]


def finish(state: str, **changes) -> Callable[[Stored], Stored | None]:
    """An updater for ``Store.update`` that ends a record in ``state`` (succeeded, failed or cancelled)
    with ``finished_at`` now and the given record fields, unless it has already ended (first end wins)."""
    assert state in FINAL_STATES, state

    def update(s: Stored) -> Stored | None:
        if s.record.state in FINAL_STATES:
            return None
        s.record.state = state
        s.record.finished_at = time.time()
        for name, value in changes.items():
            setattr(s.record, name, value)
        return s
    return update


def new_id() -> str:
    return uuid.uuid4().hex


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5,
                                socket_timeout=30, health_check_interval=15)


class Store:
    def __init__(self, client: redis.Redis, settings: Settings):
        self.r = client
        self.ttl = settings.record_ttl_s

    # --- records ------------------------------------------------------------------------------
    @staticmethod
    def _key(id_: str) -> str:
        return f"{P}rec:{id_}"

    def _ttl_for(self, st: Stored) -> int | None:
        # Job records expire; a registered reference stays until deleted.
        return self.ttl if st.record.kind == "score" else None

    def create(self, st: Stored) -> None:
        rec = st.record
        pipe = self.r.pipeline()
        ttl = self._ttl_for(st)
        pipe.set(self._key(rec.id), st.model_dump_json(), ex=ttl)
        indexes = [(f"{P}idx:{rec.kind}:{st.owner}", rec.created_at)]
        indexes += [(f"{P}tag:{st.owner}:{tag}", rec.created_at) for tag in _tags(rec)]
        step = rec.options.step() if rec.kind == "score" else None
        if step is not None:  # the series of each of its tags, ordered by (step, id)
            indexes += [(_series_key(st.owner, tag), step) for tag in _tags(rec)]
        for index, score in indexes:
            pipe.zadd(index, {rec.id: score})
            if ttl:  # an index outlives its newest record by at most the TTL
                pipe.expire(index, ttl)
        pipe.sadd(f"{P}state:{rec.kind}:{rec.state}", rec.id)
        self._exec(pipe)

    def get(self, id_: str) -> Stored | None:
        raw = self._call(self.r.get, self._key(id_))
        return Stored.model_validate_json(raw) if raw else None

    def get_owned(self, id_: str, owner: str, kind: str) -> Stored:
        """The record if it exists, is of this kind and belongs to this owner; else 404 — a caller
        cannot tell another key's record from a missing one."""
        st = self.get(id_) if _plausible_id(id_) else None
        if st is None or st.owner != owner or st.record.kind != kind:
            what = "job" if kind == "score" else "reference"
            raise NotFoundError(f"no {what} {id_!r} for this API key", code="not_found")
        return st

    def update(self, id_: str, fn: Callable[[Stored], Stored | None]) -> Stored | None:
        """Read-modify-write under WATCH. ``fn`` returns the new value, or None to leave it as is.
        Returns the stored value afterwards (None if the record is gone)."""
        key = self._key(id_)
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if not raw:
                        return None
                    old = Stored.model_validate_json(raw)
                    new = fn(old.model_copy(deep=True))
                    if new is None:
                        return old
                    pipe.multi()
                    ttl = self._ttl_for(new)
                    pipe.set(key, new.model_dump_json(), ex=ttl)
                    o, n = old.record.state, new.record.state
                    if o != n:
                        kind = new.record.kind
                        pipe.srem(f"{P}state:{kind}:{o}", id_)
                        if n in FINAL_STATES:
                            pipe.hincrby(f"{P}metrics:finished:{kind}", n, 1)
                        else:
                            pipe.sadd(f"{P}state:{kind}:{n}", id_)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue
                except redis.ConnectionError as e:
                    raise UnavailableError(f"Redis is not reachable: {e}") from e

    def delete(self, st: Stored) -> None:
        rec = st.record
        pipe = self.r.pipeline()
        pipe.delete(self._key(rec.id), f"{P}report:{rec.id}", f"{P}cancel:{rec.id}")
        pipe.zrem(f"{P}idx:{rec.kind}:{st.owner}", rec.id)
        for tag in _tags(rec):
            pipe.zrem(f"{P}tag:{st.owner}:{tag}", rec.id)
            pipe.zrem(_series_key(st.owner, tag), rec.id)
        pipe.srem(f"{P}state:{rec.kind}:{rec.state}", rec.id)
        self._exec(pipe)

    def list(self, owner: str, kind: str, *, tags: list[str] | None = None, limit: int = 50) -> list[Stored]:
        """The owner's records of one kind, newest first; with tags, those carrying all of them.
        Index entries of expired records are dropped on the way."""
        index = f"{P}tag:{owner}:{tags[0]}" if tags else f"{P}idx:{kind}:{owner}"
        out: list[Stored] = []
        start, page = 0, max(limit, 50)
        while len(out) < limit:
            ids = self._call(self.r.zrevrange, index, start, start + page - 1)
            if not ids:
                break
            raws = self._call(self.r.mget, [self._key(i) for i in ids])
            stale = [i for i, raw in zip(ids, raws) if raw is None]
            if stale:
                self._call(self.r.zrem, index, *stale)
            for raw in raws:
                if raw is None:
                    continue
                st = Stored.model_validate_json(raw)
                if st.owner != owner or st.record.kind != kind:
                    continue
                if tags and not set(tags) <= set(st.record.options.tags):
                    continue
                out.append(st)
                if len(out) >= limit:
                    break
            start += page - len(stale)
        return out

    def series(self, owner: str, tag: str, after: tuple[float, str] | None = None,
               chunk: int = 200) -> Iterator[tuple[float, Stored]]:
        """The owner's jobs that carry ``tag`` and a numeric step, as (step, record) in (step, id) order,
        starting after the (step, id) ``after``. Redis orders equal scores by member, so the order is
        total and stable: a page boundary neither repeats nor skips a job, whatever is added meanwhile.
        Index entries of expired records are dropped on the way."""
        index = _series_key(owner, tag)
        low, offset = (after[0], 0) if after else ("-inf", 0)
        while True:
            got = self._call(self.r.zrangebyscore, index, low, "+inf", start=offset, num=chunk, withscores=True)
            if not got:
                return
            offset += len(got)
            if after:
                got = [(i, s) for i, s in got if (s, i) > (after[0], after[1])]
            raws = self._call(self.r.mget, [self._key(i) for i, _ in got]) if got else []
            stale = [i for (i, _), raw in zip(got, raws) if raw is None]
            if stale:
                self._call(self.r.zrem, index, *stale)
                offset -= len(stale)
            for (_, step), raw in zip(got, raws):
                if raw is not None:
                    yield step, Stored.model_validate_json(raw)

    # --- reports and cancel flags -------------------------------------------------------------
    def save_report(self, id_: str, report_json: str) -> None:
        self._call(self.r.set, f"{P}report:{id_}", report_json, ex=self.ttl)

    def get_report(self, id_: str) -> str | None:
        return self._call(self.r.get, f"{P}report:{id_}")

    def get_reports(self, ids: list[str]) -> list[str | None]:
        return self._call(self.r.mget, [f"{P}report:{i}" for i in ids]) if ids else []

    def request_cancel(self, id_: str) -> None:
        self._call(self.r.set, f"{P}cancel:{id_}", "1", ex=self.ttl)

    def cancel_requested(self, id_: str) -> bool:
        return bool(self._call(self.r.exists, f"{P}cancel:{id_}"))

    # --- per-key rate limit (sliding one-minute window) ---------------------------------------
    def hit_rate(self, owner: str, per_minute: int) -> None:
        if per_minute <= 0:
            return
        now = time.time()
        key = f"{P}rate:{owner}"
        pipe = self.r.pipeline()
        pipe.zremrangebyscore(key, 0, now - 60)
        pipe.zcard(key)
        _, count = self._exec(pipe)
        if count >= per_minute:
            oldest = self._call(self.r.zrange, key, 0, 0, withscores=True)
            retry = max(1, int(oldest[0][1] + 60 - now) + 1) if oldest else 60
            raise RateLimitError(f"more than {per_minute} submissions in a minute for this API key; "
                                 f"retry in {retry} s", retry_after=retry)
        pipe = self.r.pipeline()
        pipe.zadd(key, {uuid.uuid4().hex: now})
        pipe.expire(key, 61)
        self._exec(pipe)

    # --- workers: heartbeats and job leases ---------------------------------------------------
    def heartbeat(self, queue: str, worker_id: str, ttl: float) -> None:
        self.r.set(f"{P}worker:{queue}:{worker_id}", str(time.time()), px=int(ttl * 1000))

    def forget_worker(self, queue: str, worker_id: str) -> None:
        self.r.delete(f"{P}worker:{queue}:{worker_id}")

    def workers_alive(self, queue: str) -> list[str]:
        """Workers of this queue whose heartbeat is fresh."""
        prefix = f"{P}worker:{queue}:"
        return [k[len(prefix):] for k in self._call(self.r.scan_iter, match=prefix + "*", count=1000)]

    def acquire_lease(self, job_id: str, worker_id: str, ttl: float) -> str | None:
        """Take the job's lease; returns None on success, else the worker id holding it."""
        key = f"{P}lease:{job_id}"
        if self.r.set(key, worker_id, nx=True, px=int(ttl * 1000)):
            return None
        holder = self.r.get(key)
        if holder == worker_id or holder is None:
            self.r.set(key, worker_id, px=int(ttl * 1000))
            return None
        return holder

    def renew_lease(self, job_id: str, worker_id: str, ttl: float) -> None:
        key = f"{P}lease:{job_id}"
        if self.r.get(key) in (worker_id, None):
            self.r.set(key, worker_id, px=int(ttl * 1000))

    def release_lease(self, job_id: str, worker_id: str) -> None:
        key = f"{P}lease:{job_id}"
        if self.r.get(key) == worker_id:
            self.r.delete(key)

    # --- metrics ------------------------------------------------------------------------------
    def observe_job(self, duration_s: float, images: int) -> None:
        pipe = self.r.pipeline()
        for b in DURATION_BUCKETS:
            if duration_s <= b:
                pipe.hincrby(f"{P}metrics:duration", _le(b), 1)
        pipe.hincrbyfloat(f"{P}metrics:duration", "sum", duration_s)
        pipe.incrby(f"{P}metrics:images", images)
        pipe.execute()

    def metrics_snapshot(self, queue: str) -> dict:
        pipe = self.r.pipeline()
        kinds = ("score", "reference")
        for kind in kinds:
            for state in ("queued", "running"):
                pipe.scard(f"{P}state:{kind}:{state}")
            pipe.hgetall(f"{P}metrics:finished:{kind}")
        pipe.hgetall(f"{P}metrics:duration")
        pipe.get(f"{P}metrics:images")
        pipe.llen(queue)
        res = self._exec(pipe)
        out: dict = {"active": {}, "finished": {}}
        i = 0
        for kind in kinds:
            out["active"][kind] = {"queued": res[i], "running": res[i + 1]}
            out["finished"][kind] = {k: int(v) for k, v in res[i + 2].items()}
            i += 3
        out["duration"] = res[i]
        out["images"] = int(res[i + 1] or 0)
        out["queue_depth"] = res[i + 2]
        return out

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    # --- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _call(fn, *a, **kw):
        try:
            out = fn(*a, **kw)
            return list(out) if fn.__name__ == "scan_iter" else out
        except redis.ConnectionError as e:
            raise UnavailableError(f"Redis is not reachable: {e}") from e

    @staticmethod
    def _exec(pipe):
        try:
            return pipe.execute()
        except redis.ConnectionError as e:
            raise UnavailableError(f"Redis is not reachable: {e}") from e


def _tags(rec) -> list[str]:
    return getattr(rec.options, "tags", []) or []


def _series_key(owner: str, tag: str) -> str:
    return f"{P}series:{owner}:{tag}"


def _le(b: float) -> str:
    return "+Inf" if b == float("inf") else str(b)


def _plausible_id(id_: str) -> bool:
    return 0 < len(id_) <= 64 and id_.isalnum()

