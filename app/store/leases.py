"""What the workers keep in Redis to find each other's work: heartbeats, leases on running records
and shards (redis-py Locks, renewed by the holder's heartbeat), the records whose worker died, and a
sharded job's hash (its plan and every shard's state, worker/shards.py)."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import redis

import app.store.keys as keys

from .base import call, call_async, execute

log = logging.getLogger("trustfid.worker")


class LeaseHeld(Exception):
    """Another live worker holds the lease; its holder (a worker id) is ``args[0]``."""


class HeldLeases:
    """The leases one process holds, shared by its task threads and its heartbeat thread."""

    def __init__(self):
        self._locks: set[redis.lock.Lock] = set()
        self._mutex = threading.Lock()

    def add(self, lock: redis.lock.Lock) -> None:
        with self._mutex:
            self._locks.add(lock)

    def discard(self, lock: redis.lock.Lock) -> None:
        with self._mutex:
            self._locks.discard(lock)

    def all(self) -> list[redis.lock.Lock]:
        with self._mutex:
            return list(self._locks)


class Leases:
    """The workers' part of the Store (app/store/__init__.py): ``lease_s`` a lease's life unless renewed,
    ``worker_ttl`` how long a heartbeat counts, ``stale_s`` how long a sharded job may stay silent,
    ``held`` the leases this process holds (a ``HeldLeases``)."""

    # --- heartbeats ---------------------------------------------------------------------------
    def heartbeat(self, queue: str, worker_id: str, capabilities: tuple[str, ...] = ()) -> None:
        """Mark a worker alive now, with the optional metrics it can compute (``frd``); workers silent for
        3 heartbeats count as gone."""
        now = time.time()
        pipe = self.r.pipeline()
        for key in (keys.workers(queue), *(keys.workers_with(queue, c) for c in capabilities)):
            pipe.zadd(key, {worker_id: now})
            pipe.zremrangebyscore(key, "-inf", now - 10 * self.worker_ttl)
        execute(pipe)

    def forget_worker(self, queue: str, worker_id: str, capabilities: tuple[str, ...] = ()) -> None:
        for key in (keys.workers(queue), *(keys.workers_with(queue, c) for c in capabilities)):
            call(self.r.zrem, key, worker_id)

    def workers_alive(self, queue: str, capability: str | None = None) -> list[str]:
        """Workers of this queue whose heartbeat is fresh (one sorted-set read, not a key scan); with a
        ``capability``, those that can compute that optional metric."""
        key = keys.workers(queue) if capability is None else keys.workers_with(queue, capability)
        return call(self.r.zrangebyscore, key, time.time() - self.worker_ttl, "+inf")

    async def any_worker_alive_async(self, queue: str) -> bool:
        return bool(await call_async(self.ar.zcount(keys.workers(queue), time.time() - self.worker_ttl, "+inf")))

    # --- leases: redis-py's Lock ----------------------------------------------------------------
    @contextlib.contextmanager
    def lease(self, name: str, worker_id: str) -> Iterator[None]:
        """Hold the lease on ``name`` (a record id, or "<job id>:<set>:<k>" for a shard) for the block,
        or raise LeaseHeld when another live worker holds it. It expires after ``lease_s`` unless
        renewed: ``renew_leases`` (this process's heartbeat) renews every lease held; it is released
        after the block."""
        lock = self.r.lock(keys.lease(name), timeout=self.lease_s, blocking=False, thread_local=False)
        if not lock.acquire(token=worker_id):
            raise LeaseHeld(self.lease_holder(name))
        self.held.add(lock)
        try:
            yield
        finally:
            self.held.discard(lock)
            with contextlib.suppress(redis.exceptions.LockError, redis.RedisError):
                lock.release()

    def renew_leases(self) -> None:
        """Renew every lease this process holds (its heartbeat calls this). A lease that lapsed while this
        worker was cut off from Redis is taken back if nobody took it; one that another worker holds now
        is dropped here, and this worker's writes under it are refused (``Records.update``'s fence)."""
        for lock in self.held.all():
            try:
                lock.reacquire()
            except redis.exceptions.LockNotOwnedError:
                if not lock.acquire(token=lock.local.token):
                    self.held.discard(lock)
                    log.warning("lease %s lapsed and passed to %s", lock.name, call(self.r.get, lock.name))

    def holds(self, name: str, worker_id: str) -> bool:
        """Whether ``worker_id`` holds the lease on ``name``, taking it back if it lapsed and nobody took it
        (a shard's last check before its statistics are shared)."""
        got = call(self.r.set, keys.lease(name), worker_id, nx=True, px=int(self.lease_s * 1000))
        return bool(got) or call(self.r.get, keys.lease(name)) == worker_id

    def lease_holder(self, name: str) -> str | None:
        return call(self.r.get, keys.lease(name))

    def orphans(self, queue: str) -> list[tuple[str, str]]:
        """(kind, id) of this queue's records marked running whose lease has lapsed: their worker died
        (or was stopped) and nobody runs them. A sharded job holds no lease of its own while its shards
        run: it is orphaned when a shard's or its merge's lease lapsed (``shards_lost``). Records of
        another queue (another service on the same Redis, with other workers and data folders) are that
        service's to queue again. Each is returned once per ``lease_s`` across all workers, so that many
        workers looking at the same time do not queue it many times."""
        out = []
        for kind in ("score", "reference"):
            for id_ in call(self.r.smembers, keys.state(kind, "running")):
                if call(self.r.exists, keys.lease(id_)):
                    continue
                st = self.get(id_)
                if st is None or st.queue not in (None, queue):
                    continue
                if call(self.r.exists, keys.shards(id_)) and not self.shards_lost(id_):
                    continue
                if call(self.r.set, keys.requeued(id_), "1", nx=True, px=int(self.lease_s * 1000)):
                    out.append((kind, id_))
        return out

    # --- sharded jobs: one hash per job (worker/shards.py) -----------------------------------------
    # fields: plan (JSON: per set its path and shards), touched (time of the last change), merge
    # ("started" while a merge runs), and per shard "<set>:<k>": state (queued, running, done,
    # cancelled, failed), "<set>:<k>:done": images done, "<set>:<k>:attempts", "<set>:<k>:error" (JSON)
    def shards(self, job_id: str) -> dict[str, str]:
        return call(self.r.hgetall, keys.shards(job_id))

    def set_shards(self, job_id: str, fields: dict[str, str | int | float]) -> bool:
        """Write ``fields`` into a sharded job's hash. Only a plan creates the hash: any other write finds it
        gone when the job ended and was cleaned up while a shard ran (on a worker cut off meanwhile, say),
        and writes nothing. Returns whether it wrote."""
        key = keys.shards(job_id)

        def attempt(pipe) -> bool:
            if "plan" not in fields and not pipe.exists(key):
                return False
            pipe.multi()
            pipe.hset(key, mapping={**fields, "touched": time.time()})
            pipe.expire(key, self.ttl)
            return True

        return call(self.r.transaction, attempt, key, value_from_callable=True)

    def count_shard_attempt(self, job_id: str, shard: str) -> int:
        return int(call(self.r.hincrby, keys.shards(job_id), f"{shard}:attempts", 1))

    def forget_shards(self, job_id: str) -> None:
        call(self.r.delete, keys.shards(job_id))

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
        return any(not call(self.r.exists, keys.lease(f"{job_id}:{k}")) for k in running)
