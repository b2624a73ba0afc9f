"""The Redis job store: job and reference records as JSON (trustfid/records.py models), reports, cancel
flags, per-key rate limits, worker heartbeats, job leases (redis-py Locks) and the counters behind
/metrics. Everything concurrent is one atomic Redis operation: a WATCH transaction for records, a Lua
script for the rate limit, SET NX for leases and requeue marks.

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
    queue: str | None = Field(None, description="the Celery queue its task went to: only that queue's "
                                                "workers queue it again (one Redis may serve several services)")
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


def connect(url: str, *, retry_s: float = 0.0) -> redis.Redis:
    """A redis-py client. With ``retry_s`` > 0, commands that meet a dropped connection are retried
    with exponential backoff (redis-py's Retry) for about that long: a worker rides out a Redis
    restart instead of failing the job it is running. The API keeps it short and answers 503."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    retries = 0 if retry_s <= 0 else max(1, int(retry_s / 0.5))
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
                                health_check_interval=15,
                                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
                                retry_on_error=[redis.ConnectionError, redis.TimeoutError])


def connect_async(url: str):
    """A redis.asyncio client for the API's event loop. A command that meets a connection dropped by a
    Redis restart is retried a few times within about a second (a poll right after the restart must
    not fail on a stale pooled connection); past that the API answers 503 with Retry-After."""
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    return redis.asyncio.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
                                        health_check_interval=15,
                                        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                                        retry_on_error=[redis.ConnectionError, redis.TimeoutError])


class Store:
    def __init__(self, client: redis.Redis, settings: Settings, async_client=None):
        self.r = client
        self.ar = async_client  # redis.asyncio client of the API's event loop (its hot reads), or None
        self.ttl = settings.record_ttl_s
        self.lease_s = settings.lease_s
        self.worker_ttl = 3 * settings.heartbeat_s
        self.stale_s = settings.effective_visibility_timeout  # a sharded job silent this long: its tasks were lost
        self._reserve = client.register_script(_RESERVE_LUA)

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
        return _owned(self.get(id_) if _plausible_id(id_) else None, id_, owner, kind)

    async def get_owned_async(self, id_: str, owner: str, kind: str) -> Stored:
        """``get_owned`` on the API's event loop (redis.asyncio): the hot read of every poll, without
        a thread-pool hop."""
        raw = None
        if _plausible_id(id_):
            try:
                raw = await self.ar.get(self._key(id_))
            except (redis.ConnectionError, redis.TimeoutError) as e:
                raise UnavailableError(f"Redis is not reachable: {e}") from e
        return _owned(Stored.model_validate_json(raw) if raw else None, id_, owner, kind)

    async def any_worker_alive_async(self, queue: str) -> bool:
        try:
            return bool(await self.ar.zcount(f"{P}workers:{queue}", time.time() - self.worker_ttl, "+inf"))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise UnavailableError(f"Redis is not reachable: {e}") from e

    def update(self, id_: str, fn: Callable[[Stored], Stored | None]) -> Stored | None:
        """Read-modify-write under WATCH (redis-py's ``transaction``: retried when another writer got
        there first). ``fn`` returns the new value, or None to leave it as is. Returns the stored value
        afterwards (None if the record is gone). State changes move the record between the state sets
        and feed the metrics: queue wait when it first starts, duration when it ends."""
        key = self._key(id_)

        def attempt(pipe) -> Stored | None:
            raw = pipe.get(key)
            if not raw:
                return None
            old = Stored.model_validate_json(raw)
            new = fn(old.model_copy(deep=True))
            if new is None:
                return old
            pipe.multi()
            pipe.set(key, new.model_dump_json(), ex=self._ttl_for(new))
            self._on_state_change(pipe, old.record, new.record)
            return new

        return self._call(self.r.transaction, attempt, key, value_from_callable=True)

    def _on_state_change(self, pipe, old, new) -> None:
        o, n, kind = old.state, new.state, new.kind
        if o == n:
            return
        pipe.srem(f"{P}state:{kind}:{o}", new.id)
        if n not in FINAL_STATES:
            pipe.sadd(f"{P}state:{kind}:{n}", new.id)
        if n == "running" and o == "queued" and new.started_at:
            _observe(pipe, f"{P}metrics:queue_wait:{kind}", new.started_at - new.created_at)
        if n in FINAL_STATES:
            pipe.hincrby(f"{P}metrics:finished:{kind}", n, 1)
            if new.started_at and new.finished_at:
                _observe(pipe, f"{P}metrics:duration:{kind}:{n}", new.finished_at - new.started_at)
            if n == "succeeded" and new.progress and new.progress.images_total:
                pipe.incrby(f"{P}metrics:images:{kind}", new.progress.images_total)

    def delete(self, st: Stored) -> None:
        rec = st.record
        pipe = self.r.pipeline()
        pipe.delete(self._key(rec.id), f"{P}report:{rec.id}", f"{P}cancel:{rec.id}", self.shards_key(rec.id))
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

    # --- per-key rate limit: a sliding one-minute window, one atomic script --------------------
    def reserve_submission(self, owner: str, per_minute: int, *, take: bool = True) -> str | None:
        """Take one of the key's submissions of the last minute, or raise RateLimitError. Check and
        take are one Lua script (atomic: a concurrent burst cannot slip past). Called when a submission
        is accepted, so refused ones never count; ``take=False`` only checks (the API does that before
        reading a body, to refuse early). Returns a token for ``refund_submission``, for a submission
        that fails after all (e.g. the queue is unreachable)."""
        if per_minute <= 0:
            return None
        token = uuid.uuid4().hex if take else ""
        ok, oldest_ms, now_ms = self._call(self._reserve, keys=[f"{P}rate:{owner}"], args=[60_000, per_minute, token])
        if not ok:
            retry = max(1, int((int(oldest_ms) + 60_000 - int(now_ms)) / 1000) + 1)
            raise RateLimitError(f"more than {per_minute} submissions in a minute for this API key; "
                                 f"retry in {retry} s", retry_after=retry)
        return token

    def refund_submission(self, owner: str, token: str | None) -> None:
        if token:
            self._call(self.r.zrem, f"{P}rate:{owner}", token)

    # --- workers: heartbeats --------------------------------------------------------------------
    def heartbeat(self, queue: str, worker_id: str) -> None:
        """Mark a worker alive now; workers silent for 3 heartbeats count as gone."""
        now = time.time()
        pipe = self.r.pipeline()
        pipe.zadd(f"{P}workers:{queue}", {worker_id: now})
        pipe.zremrangebyscore(f"{P}workers:{queue}", "-inf", now - 10 * self.worker_ttl)
        self._exec(pipe)

    def forget_worker(self, queue: str, worker_id: str) -> None:
        self._call(self.r.zrem, f"{P}workers:{queue}", worker_id)

    def workers_alive(self, queue: str) -> list[str]:
        """Workers of this queue whose heartbeat is fresh (one sorted-set read, not a key scan)."""
        return self._call(self.r.zrangebyscore, f"{P}workers:{queue}", time.time() - self.worker_ttl, "+inf")

    # --- job leases: redis-py's Lock ------------------------------------------------------------
    def lease(self, job_id: str) -> redis.lock.Lock:
        """The lease of a running job: a redis-py Lock (token = the worker's id, expires after
        ``lease_s`` unless renewed with ``reacquire``). Take it with ``acquire(token=worker_id)``."""
        return self.r.lock(f"{P}lease:{job_id}", timeout=self.lease_s, blocking=False, thread_local=False)

    def lease_holder(self, job_id: str) -> str | None:
        return self._call(self.r.get, f"{P}lease:{job_id}")

    def orphans(self, queue: str) -> list[tuple[str, str]]:
        """(kind, id) of this queue's records marked running whose lease has lapsed: their worker died
        (or was stopped) and nobody runs them. A sharded job holds no lease of its own while its shards
        run: it is orphaned when a shard's or its merge's lease lapsed (``shards_lost``). Records of
        another queue (another service on the same Redis, with other workers and data folders) are that
        service's to queue again. Each is returned once per ``lease_s`` across all workers, so that many
        workers looking at the same time do not queue it many times."""
        out = []
        for kind in ("score", "reference"):
            for id_ in self._call(self.r.smembers, f"{P}state:{kind}:running"):
                if self._call(self.r.exists, f"{P}lease:{id_}"):
                    continue
                st = self.get(id_)
                if st is None or st.queue not in (None, queue):
                    continue
                if self._call(self.r.exists, self.shards_key(id_)) and not self.shards_lost(id_):
                    continue
                if self._call(self.r.set, f"{P}requeued:{id_}", "1", nx=True, px=int(self.lease_s * 1000)):
                    out.append((kind, id_))
        return out

    # --- sharded jobs: one hash per job (worker/shards.py) -----------------------------------------
    # fields: plan (JSON: per set its path and shards), touched (time of the last change), merge
    # ("started" while a merge runs), and per shard "<set>:<k>": state (queued, running, done,
    # cancelled, failed), "<set>:<k>:done": images done, "<set>:<k>:attempts", "<set>:<k>:error" (JSON)
    @staticmethod
    def shards_key(job_id: str) -> str:
        return f"{P}shards:{job_id}"

    def shard_lease(self, job_id: str, shard: str) -> redis.lock.Lock:
        """The lease of one running shard (``shard`` = "<set>:<k>"), like a job's."""
        return self.lease(f"{job_id}:{shard}")

    def shards(self, job_id: str) -> dict[str, str]:
        return self._call(self.r.hgetall, self.shards_key(job_id))

    def set_shards(self, job_id: str, fields: dict[str, str | int | float]) -> None:
        pipe = self.r.pipeline()
        pipe.hset(self.shards_key(job_id), mapping={**fields, "touched": time.time()})
        pipe.expire(self.shards_key(job_id), self.ttl)
        self._exec(pipe)

    def count_shard_attempt(self, job_id: str, shard: str) -> int:
        return int(self._call(self.r.hincrby, self.shards_key(job_id), f"{shard}:attempts", 1))

    def forget_shards(self, job_id: str) -> None:
        self._call(self.r.delete, self.shards_key(job_id))

    def shards_lost(self, job_id: str) -> bool:
        """Whether a sharded job needs its tasks sent again: a shard marked running, or its merge, lost its
        lease (the worker died), or nothing happened for the broker's visibility timeout (its messages
        are gone)."""
        h = self.shards(job_id)
        if not h:
            return False
        if time.time() - float(h.get("touched", 0)) > self.stale_s:
            return True
        if h.get("merge") == "started":  # the merge holds the job's own lease, found absent above
            return True
        running = [k for k, v in h.items() if v == "running" and k.count(":") == 1]
        return any(not self._call(self.r.exists, f"{P}lease:{job_id}:{k}") for k in running)

    # --- metrics --------------------------------------------------------------------------------
    def metrics_snapshot(self, queue: str) -> dict:
        """Everything /metrics shows, read in one round trip (app/metrics.py formats it)."""
        kinds, finals = ("score", "reference"), sorted(FINAL_STATES)
        pipe = self.r.pipeline()
        for kind in kinds:
            for state in ("queued", "running"):
                pipe.scard(f"{P}state:{kind}:{state}")
            pipe.hgetall(f"{P}metrics:finished:{kind}")
            for state in finals:
                pipe.hgetall(f"{P}metrics:duration:{kind}:{state}")
            pipe.hgetall(f"{P}metrics:queue_wait:{kind}")
            pipe.get(f"{P}metrics:images:{kind}")
        pipe.llen(queue)
        pipe.zcount(f"{P}workers:{queue}", time.time() - self.worker_ttl, "+inf")
        res = iter(self._exec(pipe))
        out: dict = {"active": {}, "finished": {}, "duration": {}, "queue_wait": {}, "images": {}}
        for kind in kinds:
            out["active"][kind] = {"queued": next(res), "running": next(res)}
            out["finished"][kind] = {k: int(v) for k, v in next(res).items()}
            out["duration"][kind] = {state: next(res) for state in finals}
            out["queue_wait"][kind] = next(res)
            out["images"][kind] = int(next(res) or 0)
        out["queue_depth"] = next(res)
        out["workers"] = next(res)
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
            return fn(*a, **kw)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            raise UnavailableError(f"Redis is not reachable: {e}") from e

    @classmethod
    def _exec(cls, pipe):
        return cls._call(pipe.execute)


# A sliding window as a sorted set of submission tokens scored by the Redis server's clock (one clock
# for every API replica). Returns {1, 0, now} when there was room (and the token, if any, was added),
# {0, oldest, now} when full.
_RESERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, oldest[2], tostring(now)}
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window + 1000)
end
return {1, '0', tostring(now)}
"""


def _observe(pipe, key: str, seconds: float) -> None:
    """One observation into a histogram kept as a Redis hash: cumulative bucket counts, sum, count."""
    seconds = max(0.0, float(seconds))
    for b in DURATION_BUCKETS:
        if seconds <= b:
            pipe.hincrby(key, _le(b), 1)
    pipe.hincrbyfloat(key, "sum", seconds)
    pipe.hincrby(key, "count", 1)


def _tags(rec) -> list[str]:
    return getattr(rec.options, "tags", []) or []


def _series_key(owner: str, tag: str) -> str:
    return f"{P}series:{owner}:{tag}"


def _le(b: float) -> str:
    return "+Inf" if b == float("inf") else str(b)


def _owned(st: Stored | None, id_: str, owner: str, kind: str) -> Stored:
    if st is None or st.owner != owner or st.record.kind != kind:
        what = "job" if kind == "score" else "reference"
        raise NotFoundError(f"no {what} {id_!r} for this API key", code="not_found")
    return st


def _plausible_id(id_: str) -> bool:
    return 0 < len(id_) <= 64 and id_.isalnum()
