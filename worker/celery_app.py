"""The Celery app of the workers: ``celery -A worker.celery_app worker -Q gpu --pool solo`` (or
`trustfid worker`). Its configuration is app/queue.py's, shared with the API that enqueues."""

from __future__ import annotations

from app.queue import make_celery
from app.settings import get_settings

app = make_celery(get_settings(), main="trustfid-worker")
app.conf.include = ["worker.tasks"]
celery_app = app
