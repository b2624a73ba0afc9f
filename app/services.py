"""The service core: the parts the API and the workers share, each built once from Settings — in the
API's lifespan (app/api.py) and at a worker process's start (worker/process.py) — and keeping only
what it needs. Routes get them through FastAPI dependencies (app/http.py); tasks from the worker's
process state.

- ``store``: the Redis job store (app/store/);
- ``staging``: where staged inputs and reference statistics live (app/staging.py);
- ``queue``: sends tasks by name (app/queue.py);
- ``inputs``: the input policy, limits and URI rules (app/ingest/);
- ``callbacks``: signed delivery of a finished job to its callback_url (app/callback.py);
- ``cleanup``: what ended or deleted records staged is removed, and tried again until it is (app/cleanup.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from app.callback import Callbacks
from app.cleanup import Cleanup
from app.ingest import InputPolicy
from app.ingest.uris import UriPolicy
from app.queue import Queue, make_celery, routes
from app.settings import Settings
from app.staging import S3, Staging
from app.store import Store, connect, connect_async
from trustfid.inputs.dicomweb import Pacs

# A worker's Redis commands are retried through a Redis restart for about this long, not failed.
WORKER_REDIS_RETRY_S = 60


@dataclass(frozen=True)
class Services:
    store: Store | None  # None: no Redis configured (the API then answers 503 where it needs one)
    staging: Staging
    queue: Queue
    inputs: InputPolicy
    callbacks: Callbacks
    cleanup: Cleanup | None  # None without a store


def build(settings: Settings, *, worker: bool = False) -> Services:
    """The parts, for the API (its Redis client gives up at once and answers 503, beside an async one
    for the event loop) or for a worker process (``worker``: commands ride out a Redis restart)."""
    secret = settings.s3_secret_access_key
    s3 = S3(endpoint_url=settings.s3_endpoint_url, key=settings.s3_access_key_id,
            secret=secret.get_secret_value() if secret else None, region=settings.s3_region)
    staging = Staging(settings.data_dir, settings.staging_url, s3, retry_s=settings.storage_retry_s)
    uris = UriPolicy(limits=settings.limits, max_bytes=settings.max_upload_bytes,
                     file_roots=tuple(settings.file_roots), url_hosts=tuple(settings.url_hosts),
                     allow_private_urls=settings.allow_private_urls, s3_enabled=settings.s3_enabled, s3=s3,
                     staging_bucket=staging.bucket, fetch_timeout_s=settings.fetch_timeout_s,
                     callback_hosts=tuple(settings.callback_hosts),
                     pacs=Pacs.of(settings, max_bytes=settings.max_upload_bytes,
                                  bytes_setting="TRUSTFID_MAX_UPLOAD_BYTES"))
    inputs = InputPolicy(limits=settings.limits, max_upload_bytes=settings.max_upload_bytes,
                         max_files_per_set=settings.max_files_per_set,
                         upload_idle_timeout_s=settings.upload_idle_timeout_s,
                         upload_timeout_s=settings.upload_timeout_s, uris=uris)
    store = None
    if settings.redis_url:
        store = (Store(connect(settings.redis_url, retry_s=WORKER_REDIS_RETRY_S), settings) if worker else
                 Store(connect(settings.redis_url), settings, connect_async(settings.redis_url)))
    queue = Queue(functools.partial(make_celery, settings, main="trustfid-api"), settings.queue,
                  routes(settings.queue, settings.callback_queue))
    callbacks = Callbacks(uris, secret=settings.callback_secret, timeout_s=settings.callback_timeout_s)
    cleanup = Cleanup(store, staging, settings.queue) if store is not None else None
    return Services(store=store, staging=staging, queue=queue, inputs=inputs, callbacks=callbacks, cleanup=cleanup)
