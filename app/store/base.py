"""The Redis clients of the store, and the one way every store command meets a Redis that is away:
UnavailableError (503 on the API; the worker's tasks retry)."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from app.errors import UnavailableError

RETRY_ON = [redis.ConnectionError, redis.TimeoutError]


def connect(url: str, *, retry_s: float = 0.0) -> redis.Redis:
    """A redis-py client. With ``retry_s`` > 0, commands that meet a dropped connection are retried
    with exponential backoff (redis-py's Retry) for about that long: a worker rides out a Redis
    restart instead of failing the job it is running. The API keeps it short and answers 503."""
    retries = 0 if retry_s <= 0 else max(1, int(retry_s / 0.5))
    return redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
                                health_check_interval=15, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries),
                                retry_on_error=RETRY_ON)


def connect_async(url: str):
    """A redis.asyncio client for the API's event loop. A command that meets a connection dropped by a
    Redis restart is retried a few times within about a second (a poll right after the restart must
    not fail on a stale pooled connection); past that the API answers 503 with Retry-After."""
    import redis.asyncio
    from redis.asyncio.retry import Retry as AsyncRetry

    return redis.asyncio.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=30,
                                        health_check_interval=15,
                                        retry=AsyncRetry(ExponentialBackoff(cap=0.5, base=0.05), 3),
                                        retry_on_error=RETRY_ON)


def unavailable(e: Exception) -> UnavailableError:
    return UnavailableError(f"Redis is not reachable: {e}")


def call(fn, *a, **kw):
    """``fn(*a, **kw)``, a Redis command; a connection that cannot be had raises UnavailableError."""
    try:
        return fn(*a, **kw)
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise unavailable(e) from e


def execute(pipe):
    return call(pipe.execute)


async def call_async(coro):
    """``await coro``, a command of the async client, with the same errors as ``call``."""
    try:
        return await coro
    except (redis.ConnectionError, redis.TimeoutError) as e:
        raise unavailable(e) from e
