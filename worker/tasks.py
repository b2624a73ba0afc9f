"""The Celery tasks and signals of the worker, each a few lines over the plain functions of
worker/jobs.py (a job or reference), worker/shards.py and worker/merge.py (a sharded job) and
app/callback.py; the process's state (the service's parts, built once) is worker/process.py.

A task whose Redis is away is retried by Celery (``autoretry_for``) every few seconds, never dropped;
one whose record another live worker holds is tried again after half a lease.
"""

from __future__ import annotations

import logging

import httpx
import redis
from celery import signals

from app.callback import CallbackFailed
from app.errors import UnavailableError
from app.queue import TASK_CALLBACK, TASK_MERGE, TASK_REFERENCE, TASK_SCORE, TASK_SHARD
from app.settings import get_settings
from app.store import LeaseHeld
from trustfid.errors import TrustfidError
from trustfid.records import FINAL_STATES

from . import jobs, merge, process, shards
from .celery_app import app

log = logging.getLogger("trustfid.worker")

REDIS_AWAY = dict(autoretry_for=(UnavailableError, redis.RedisError), retry_kwargs={"countdown": 5},
                  max_retries=None)


@signals.worker_ready.connect
def _on_ready(sender=None, **_):
    process.current()  # heartbeat: /readyz counts this worker
    pool = getattr(sender, "pool", None)
    if pool is None or "prefork" not in type(pool).__module__:
        process.warm_up()  # solo/threads: jobs run in this process. Prefork children load it themselves
        # (never CUDA in a parent that forks).


@signals.worker_process_init.connect
def _on_child(**_):
    process.warm_up()


@signals.worker_shutdown.connect
def _on_shutdown(**_):
    process.shutdown()


def _record(task, record_id: str) -> str:
    w = process.current()
    try:
        return jobs.run(w, record_id)
    except LeaseHeld:
        raise task.retry(countdown=max(1, int(w.lease_s / 2)), max_retries=None) from None


@app.task(name=TASK_SCORE, bind=True, **REDIS_AWAY)
def score_job(self, job_id: str) -> str:
    return _record(self, job_id)


@app.task(name=TASK_REFERENCE, bind=True, **REDIS_AWAY)
def compute_reference(self, ref_id: str) -> str:
    return _record(self, ref_id)


@app.task(name=TASK_SHARD, bind=True, ignore_result=False, **REDIS_AWAY)
def score_shard(self, job_id: str, shard: str) -> str:
    """One shard of a sharded job (a chord's header task; its result counts for the chord)."""
    return shards.run(process.current(), job_id, shard)


@app.task(name=TASK_MERGE, bind=True, **REDIS_AWAY)
def merge_shards(self, job_id: str) -> str:
    """The chord's callback: merge a sharded job's shards into its report and end the job."""
    return merge.merge(process.current(), job_id)


_SETTINGS = get_settings()


@app.task(name=TASK_CALLBACK, bind=True, autoretry_for=(CallbackFailed, httpx.HTTPError, UnavailableError),
          retry_backoff=True, retry_backoff_max=_SETTINGS.callback_backoff_max_s, retry_jitter=True,
          max_retries=_SETTINGS.callback_attempts - 1)
def deliver_callback(self, record_id: str) -> str:
    """POST the final record to the job's callback_url (app/callback.py), on the callback queue:
    retried with exponential backoff by Celery, never on a scoring worker's time."""
    w = process.current()
    st = w.store.get(record_id)
    if st is None or st.record.state not in FINAL_STATES:
        return "gone"
    url = getattr(st.record.options, "callback_url", None)
    try:
        w.services.callbacks.deliver(url, st.record.model_dump_json().encode(), st.owner)
    except TrustfidError as e:  # the URL is not allowed (any more): retrying cannot help
        log.warning("callback of %s refused: %s", record_id, e.message)
        return "refused"
    except (CallbackFailed, httpx.HTTPError) as e:
        log.warning("callback of %s: attempt %d failed: %s", record_id, self.request.retries + 1, e)
        raise
    return "delivered"
