"""Celery configuration shared by the API (which enqueues by task name, never importing the worker)
and the worker (worker/celery_app.py builds its app from the same function).

Delivery guarantees: tasks are acknowledged late (after they finish), a task whose worker process
dies is rejected back to the queue (prefork), and with Redis as broker a message that was delivered
but never acknowledged — its worker was killed with SIGKILL, or its machine died — becomes visible
again after ``visibility_timeout`` seconds and goes to another worker. Workers look for such messages
when they start and then every ``unacked_restore_interval`` seconds. The visibility timeout must be
longer than the longest job (the default is the hard time limit plus five minutes), or a job still
running would be handed out twice; a worker also holds a lease per running job (app/store/leases.py)
so that a second delivery waits instead of running in parallel.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from celery import Celery

from app.errors import UnavailableError
from app.settings import Settings

TASK_SCORE = "trustfid.score_job"
TASK_REFERENCE = "trustfid.compute_reference"
TASK_CALLBACK = "trustfid.deliver_callback"
TASK_SHARD = "trustfid.score_shard"  # one shard of a sharded job (worker/shards.py), a chord's header task
TASK_MERGE = "trustfid.merge_shards"  # the chord's callback: merge the shards, build the report


def routes(queue: str, callback_queue: str) -> dict[str, str]:
    """Task name -> queue. Callbacks have their own queue so that a slow receiver never holds a GPU
    worker: any worker may consume it (`trustfid worker --queues`), by default every worker does."""
    return {TASK_SCORE: queue, TASK_REFERENCE: queue, TASK_SHARD: queue, TASK_MERGE: queue,
            TASK_CALLBACK: callback_queue}


def celery_config(settings: Settings) -> dict:
    if not settings.redis_url:
        raise UnavailableError("TRUSTFID_REDIS_URL is not set (`trustfid serve` sets it for its own processes)")
    transport = {
        "visibility_timeout": settings.effective_visibility_timeout,
        "unacked_restore_interval": settings.unacked_restore_interval_s,
        "unacked_restore_throttle": 1,
    }
    return dict(
        broker_url=settings.redis_url,
        result_backend=settings.redis_url,
        broker_transport_options=transport,
        result_backend_transport_options={"visibility_timeout": settings.effective_visibility_timeout},
        broker_connection_retry_on_startup=True,
        task_default_queue=settings.queue,
        task_routes={name: {"queue": q} for name, q in routes(settings.queue, settings.callback_queue).items()},
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # The job records in app/store/ are the results; only a sharded job's shard tasks store theirs
        # (ignore_result=False on the task), which the chord's counter in this backend needs.
        task_ignore_result=True,
        result_expires=settings.record_ttl_s,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit_s,
        task_time_limit=settings.time_limit_s,
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )


def make_celery(settings: Settings, main: str = "trustfid") -> Celery:
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


class Queue:
    """Sends tasks by name (the API never imports the worker's code) through a Celery client app made
    on first use by ``make`` (no broker is needed before a task is sent). ``name`` is the scoring
    queue: its workers queue a lost record again, and /readyz counts them."""

    def __init__(self, make: Callable[[], Celery], name: str, routes: dict[str, str]):
        self._make, self.name, self.routes = make, name, routes
        self._app: Celery | None = None
        self._lock = threading.Lock()

    def send(self, task_name: str, record_id: str) -> None:
        with self._lock:
            if self._app is None:
                self._app = self._make()
        try:
            self._app.send_task(task_name, args=[record_id], queue=self.routes[task_name])
        except Exception as e:  # kombu's OperationalError and friends
            raise UnavailableError(f"cannot enqueue the job: {e}") from e
