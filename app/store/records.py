"""Job and reference records, their indexes (per owner, per tag, per tag by step), progress, reports and
cancel flags. Every record is one JSON string (``keys.record``) holding its owner (the sha256 of the API
key that made it) and the paths of its staged inputs beside the public record, so the public part is
exactly the schema the API returns. Changes are WATCH transactions.

A running record's progress lives in a key of its own (``keys.progress``), written by one small Lua
script (``write_progress``, every half second while a job runs) without reading or rewriting the record,
whatever its size. Every read merges it into the record (``_merged``); every record write folds it in, and
the write that ends a record deletes it, so an ended record holds its final progress and nothing else."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

import app.store.keys as keys
from app.errors import NotFoundError
from trustfid.records import FINAL_STATES, JobRecord, ReferenceRecord
from trustfid.schemas import Progress

from .base import call, call_async, execute
from .counters import record_state_change

# A running record's progress, written in O(1) (``Records.write_progress``). KEYS: the progress key, the
# running set of its kind, and, when fenced, the record's lease. ARGV: the Progress JSON, its TTL (s), the
# record id, the lease holder ('' for no fence), the lease's life (ms), '1' to never lower the images done
# while extracting (a sharded job's sum over its shards), and the images done. Returns {status, holder}:
# 'lost' (another worker holds the lease: nothing written), 'ended' (not running any more: nothing
# written), 'kept' (the floor: a larger count is shown already), 'ok'. A lease that lapsed and that nobody
# took is taken back, as ``Records.update``'s fence does.
PROGRESS_LUA = """
if ARGV[4] ~= '' then
  local holder = redis.call('GET', KEYS[3])
  if holder and holder ~= ARGV[4] then
    return {'lost', holder}
  end
  if redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 then
    return {'ended', ''}
  end
  if not holder then
    redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
  end
elseif redis.call('SISMEMBER', KEYS[2], ARGV[3]) == 0 then
  return {'ended', ''}
end
if ARGV[6] == '1' then
  local shown = redis.call('GET', KEYS[1])
  if shown then
    local ok, p = pcall(cjson.decode, shown)
    if ok and p['stage'] == 'extracting' and (tonumber(p['images_done']) or 0) > tonumber(ARGV[7]) then
      return {'kept', ''}
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return {'ok', ''}
"""


class LeaseLost(Exception):
    """This worker's lease lapsed while it was cut off, and another worker holds it now (``args[0]``): what
    this one computed is not written (``Records.update``'s fence)."""


class Stored(BaseModel):
    """What Redis holds for one job or reference."""

    model_config = ConfigDict(extra="forbid")

    owner: str
    paths: dict[str, str] = Field(default_factory=dict,
                                  description="staged input paths / stats file; never shown to callers")
    queue: str | None = Field(None, description="the Celery queue its task went to: only that queue's "
                                                "workers queue it again (one Redis may serve several services)")
    record: Annotated[JobRecord | ReferenceRecord, Field(discriminator="kind")]


class Finish:
    """An updater for ``Store.update`` that ends a record in ``state`` (succeeded, failed or cancelled)
    with ``finished_at`` now and the given record fields, unless it has already ended (first end wins).
    ``report`` (a job's report, JSON) is written in the same transaction, only when this update ends the
    record: a second end writes neither."""

    def __init__(self, state: str, report: str | None = None, **changes):
        assert state in FINAL_STATES, state
        self.state, self.report, self.changes = state, report, changes

    def __call__(self, s: Stored) -> Stored | None:
        if s.record.state in FINAL_STATES:
            return None
        s.record.state = self.state
        s.record.finished_at = time.time()
        for name, value in self.changes.items():
            setattr(s.record, name, value)
        return s



def new_id() -> str:
    return uuid.uuid4().hex


class Records:
    """The records part of the Store (app/store/__init__.py): ``r`` the client, ``ar`` the async one,
    ``ttl`` how long job records live."""

    def _ttl_for(self, st: Stored) -> int | None:
        # Job records expire; a registered reference stays until deleted.
        return self.ttl if st.record.kind == "score" else None

    def create(self, st: Stored) -> None:
        rec = st.record
        pipe = self.r.pipeline()
        ttl = self._ttl_for(st)
        pipe.set(keys.record(rec.id), st.model_dump_json(), ex=ttl)
        indexes = [(keys.index(rec.kind, st.owner), rec.created_at)]
        indexes += [(keys.tag(st.owner, tag), rec.created_at) for tag in _tags(rec)]
        step = rec.options.step() if rec.kind == "score" else None
        if step is not None:  # the series of each of its tags, ordered by (step, id)
            indexes += [(keys.series(st.owner, tag), step) for tag in _tags(rec)]
        for index, score in indexes:
            pipe.zadd(index, {rec.id: score})
            if ttl:  # an index outlives its newest record by at most the TTL
                pipe.expire(index, ttl)
        pipe.sadd(keys.state(rec.kind, rec.state), rec.id)
        execute(pipe)

    def get(self, id_: str) -> Stored | None:
        """The record with its progress (one round trip), or None."""
        return _merged(*call(self.r.mget, keys.record(id_), keys.progress(id_)))

    def get_owned(self, id_: str, owner: str, kind: str) -> Stored:
        """The record if it exists, is of this kind and belongs to this owner; else 404 — a caller
        cannot tell another key's record from a missing one."""
        return _owned(self.get(id_) if _plausible_id(id_) else None, id_, owner, kind)

    async def get_owned_async(self, id_: str, owner: str, kind: str) -> Stored:
        """``get_owned`` on the API's event loop (redis.asyncio): the hot read of every poll, without
        a thread-pool hop."""
        if not _plausible_id(id_):
            return _owned(None, id_, owner, kind)
        raw, shown = await call_async(self.ar.mget(keys.record(id_), keys.progress(id_)))
        return _owned(_merged(raw, shown), id_, owner, kind)

    def update(self, id_: str, fn: Callable[[Stored], Stored | None], *,
               fence: tuple[str, str] | None = None) -> Stored | None:
        """Read-modify-write under WATCH (redis-py's ``transaction``: retried when another writer got
        there first). ``fn`` returns the new value, or None to leave it as is. Returns the stored value
        afterwards (None if the record is gone). State changes move the record between the state sets
        and feed the metrics: queue wait when it first starts, duration when it ends. A ``Finish``'s
        report is written with the record.

        ``fn`` sees the record with its progress merged (the progress key is watched too). A running
        record's progress key is written with the record's progress; a record that ends keeps its final
        progress in the record, and its progress key is deleted in the same transaction.

        ``fence`` (lease name, holder): write only while that worker holds the lease. If it lapsed and
        nobody took it, the write takes it back; if another worker holds it (this one was cut off, and the
        record was given to that one), nothing is written and ``LeaseLost`` is raised. The lease is
        watched with the record, so no other worker can take it between the check and the write."""
        key, shown_key = keys.record(id_), keys.progress(id_)
        lease = keys.lease(fence[0]) if fence else None

        def attempt(pipe) -> Stored | None:
            old = _merged(*pipe.mget(key, shown_key))
            if old is None:
                return None
            holder = pipe.get(lease) if fence else None
            if fence and holder not in (None, fence[1]):
                raise LeaseLost(holder)
            new = fn(old.model_copy(deep=True))
            if new is None:
                return old
            pipe.multi()
            if fence and holder is None:
                pipe.set(lease, fence[1], px=int(self.lease_s * 1000))
            pipe.set(key, new.model_dump_json(), ex=self._ttl_for(new))
            if new.record.state in FINAL_STATES:
                pipe.delete(shown_key)
            elif new.record.state == "running" and new.record.progress is not None:
                pipe.set(shown_key, new.record.progress.model_dump_json(), ex=self.ttl)
            if isinstance(fn, Finish) and fn.report is not None:
                pipe.set(keys.report(id_), fn.report, ex=self.ttl)
            record_state_change(pipe, old.record, new.record)
            return new

        return call(self.r.transaction, attempt, key, shown_key, *([lease] if fence else []),
                    value_from_callable=True)

    def write_progress(self, id_: str, kind: str, p: Progress, *, fence: tuple[str, str] | None = None,
                       floor: bool = False) -> str:
        """Write a running record's progress into its own key, in O(1) whatever the record's size (one Lua
        script: ``PROGRESS_LUA``); every read merges it into the record. Returns "ok"; "ended" when the
        record is no longer running (nothing written); "kept" when ``floor`` (never lower the images done
        while extracting) kept a larger count. ``fence`` as ``update``'s: LeaseLost when another worker
        holds the lease; a lease that lapsed and that nobody took is taken back."""
        args = [p.model_dump_json(), self.ttl, id_, fence[1] if fence else "", int(self.lease_s * 1000),
                "1" if floor else "0", p.images_done]
        status, holder = call(self.write_progress_lua, keys=[keys.progress(id_), keys.state(kind, "running"),
                                                             *([keys.lease(fence[0])] if fence else [])], args=args)
        if status == "lost":
            raise LeaseLost(holder)
        return status

    def delete(self, st: Stored) -> None:
        rec = st.record
        pipe = self.r.pipeline()
        pipe.delete(keys.record(rec.id), keys.progress(rec.id), keys.report(rec.id), keys.cancel(rec.id),
                    keys.shards(rec.id))
        pipe.zrem(keys.index(rec.kind, st.owner), rec.id)
        for tag in _tags(rec):
            pipe.zrem(keys.tag(st.owner, tag), rec.id)
            pipe.zrem(keys.series(st.owner, tag), rec.id)
        pipe.srem(keys.state(rec.kind, rec.state), rec.id)
        execute(pipe)

    # --- records whose staged copies are still to be removed (app/cleanup.py) ------------------------
    def mark_cleanup(self, queue: str, kind: str, id_: str) -> None:
        call(self.r.zadd, keys.cleanup(queue), {f"{kind}:{id_}": time.time()}, nx=True)

    def unmark_cleanup(self, queue: str, kind: str, id_: str) -> None:
        call(self.r.zrem, keys.cleanup(queue), f"{kind}:{id_}")

    def marked_cleanup(self, queue: str, limit: int = 1000) -> list[tuple[str, str]]:
        """(kind, id) of the queue's marked records, the longest marked first."""
        return [tuple(m.split(":", 1)) for m in call(self.r.zrange, keys.cleanup(queue), 0, limit - 1)]

    def list(self, owner: str, kind: str, *, tags: list[str] | None = None, limit: int = 50) -> list[Stored]:
        """The owner's records of one kind, newest first, with their progress; with tags, those carrying
        all of them. Index entries of expired records are dropped on the way."""
        index = keys.tag(owner, tags[0]) if tags else keys.index(kind, owner)
        out: list[Stored] = []
        start, page = 0, max(limit, 50)
        while len(out) < limit:
            ids = call(self.r.zrevrange, index, start, start + page - 1)
            if not ids:
                break
            got = call(self.r.mget, [keys.record(i) for i in ids] + [keys.progress(i) for i in ids])
            raws, shown = got[:len(ids)], got[len(ids):]
            stale = [i for i, raw in zip(ids, raws) if raw is None]
            if stale:
                call(self.r.zrem, index, *stale)
            for raw, progress in zip(raws, shown):
                st = _merged(raw, progress)
                if st is None:
                    continue
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
        Index entries of expired records are dropped on the way. The records are read without their
        progress: a series shows ended jobs only."""
        index = keys.series(owner, tag)
        low, offset = (after[0], 0) if after else ("-inf", 0)
        while True:
            got = call(self.r.zrangebyscore, index, low, "+inf", start=offset, num=chunk, withscores=True)
            if not got:
                return
            offset += len(got)
            if after:
                got = [(i, s) for i, s in got if (s, i) > (after[0], after[1])]
            raws = call(self.r.mget, [keys.record(i) for i, _ in got]) if got else []
            stale = [i for (i, _), raw in zip(got, raws) if raw is None]
            if stale:
                call(self.r.zrem, index, *stale)
                offset -= len(stale)
            for (_, step), raw in zip(got, raws):
                if raw is not None:
                    yield step, Stored.model_validate_json(raw)

    # --- reports and cancel flags -------------------------------------------------------------
    def get_report(self, id_: str) -> str | None:
        return call(self.r.get, keys.report(id_))

    def get_reports(self, ids: list[str]) -> list[str | None]:
        return call(self.r.mget, [keys.report(i) for i in ids]) if ids else []

    def request_cancel(self, id_: str) -> None:
        call(self.r.set, keys.cancel(id_), "1", ex=self.ttl)

    def cancel_requested(self, id_: str) -> bool:
        return bool(call(self.r.exists, keys.cancel(id_)))


def _tags(rec) -> list[str]:
    return getattr(rec.options, "tags", []) or []


def _merged(raw: str | None, shown: str | None) -> Stored | None:
    """The stored record (None if missing) with its progress key's value (``shown``) as its progress while
    it runs. An ended record holds its final progress; a progress key left beside it is ignored."""
    if not raw:
        return None
    st = Stored.model_validate_json(raw)
    if shown and st.record.state == "running":
        st.record.progress = Progress.model_validate_json(shown)
    return st


def _owned(st: Stored | None, id_: str, owner: str, kind: str) -> Stored:
    if st is None or st.owner != owner or st.record.kind != kind:
        what = "job" if kind == "score" else "reference"
        raise NotFoundError(f"no {what} {id_!r} for this API key", code="not_found")
    return st


def _plausible_id(id_: str) -> bool:
    return 0 < len(id_) <= 64 and id_.isalnum()
