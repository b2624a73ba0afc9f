"""Per-key rate limit: a sliding one-minute window of accepted submissions, checked and taken by one
Lua script (atomic: a concurrent burst cannot slip past)."""

from __future__ import annotations

import uuid

import app.store.keys as keys
from app.errors import RateLimitError

from .base import call

# A sliding window as a sorted set of submission tokens scored by the Redis server's clock (one clock
# for every API replica). Returns {1, 0, now} when there was room (and the token, if any, was added),
# {0, oldest, now} when full.
RESERVE_LUA = """
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


class RateLimit:
    """The rate-limit part of the Store (app/store/__init__.py): ``reserve`` is the registered script."""

    def reserve_submission(self, owner: str, per_minute: int, *, take: bool = True) -> str | None:
        """Take one of the key's submissions of the last minute, or raise RateLimitError. Called when a
        submission is accepted, so refused ones never count; ``take=False`` only checks (the API does
        that before reading a body, to refuse early). Returns a token for ``refund_submission``, for a
        submission that fails after all (e.g. the queue is unreachable)."""
        if per_minute <= 0:
            return None
        token = uuid.uuid4().hex if take else ""
        ok, oldest_ms, now_ms = call(self.reserve, keys=[keys.rate(owner)], args=[60_000, per_minute, token])
        if not ok:
            retry = max(1, int((int(oldest_ms) + 60_000 - int(now_ms)) / 1000) + 1)
            raise RateLimitError(f"more than {per_minute} submissions in a minute for this API key; "
                                 f"retry in {retry} s", retry_after=retry)
        return token

    def refund_submission(self, owner: str, token: str | None) -> None:
        if token:
            call(self.r.zrem, keys.rate(owner), token)
