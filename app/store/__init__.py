"""The Redis job store, used by the API (app/api.py) and the workers (worker/); plain methods over a
redis-py client, no Celery here. Everything concurrent is one atomic Redis operation: a WATCH
transaction for records, Lua scripts for progress and the rate limit, SET NX for leases and requeue marks.

One ``Store`` per process, built once (app/services.py), in parts by concern:

- records.py: job and reference records (trustfid/records.py models), their indexes, progress, reports
  and cancel flags;
- leases.py: worker heartbeats, leases of running records and shards, lost records, sharded jobs' hashes;
- ratelimit.py: per-key submissions per minute;
- counters.py: the counters and histograms behind /metrics;
- keys.py: every key name; base.py: the clients and their errors.
"""

from __future__ import annotations

import redis

from app.settings import Settings

from .base import connect, connect_async
from .counters import Counters
from .leases import HeldLeases, LeaseHeld, Leases
from .ratelimit import RESERVE_LUA, RateLimit
from .records import PROGRESS_LUA, Finish, LeaseLost, Records, Stored, new_id

__all__ = ["Store", "Stored", "LeaseHeld", "LeaseLost", "connect", "connect_async", "Finish", "new_id"]


class Store(Records, Leases, RateLimit, Counters):
    """One Redis client (and, on the API, its async twin) and the settings each part keeps."""

    def __init__(self, client: redis.Redis, settings: Settings, async_client=None):
        self.r = client
        self.ar = async_client  # redis.asyncio client of the API's event loop (its hot reads), or None
        self.ttl = settings.record_ttl_s
        self.lease_s = settings.lease_s
        self.worker_ttl = 3 * settings.heartbeat_s
        self.stale_s = settings.effective_visibility_timeout  # a sharded job silent this long: its tasks were lost
        self.reserve = client.register_script(RESERVE_LUA)
        self.write_progress_lua = client.register_script(PROGRESS_LUA)
        self.held = HeldLeases()

    def ping(self) -> bool:
        try:
            return bool(self.r.ping())
        except redis.RedisError:
            return False

    def close(self) -> None:
        self.r.close()

    async def aclose(self) -> None:
        self.r.close()
        if self.ar is not None:
            await self.ar.aclose()
