"""What a job (or one of its shards) that raised failed with, in words for the caller: a typed error
keeps its code; the service's own faults are named as such; nothing a user sent shows the service's
folders or a traceback."""

from __future__ import annotations

import logging
import os

from celery.exceptions import SoftTimeLimitExceeded

from app.errors import StorageError
from app.staging import Staging
from trustfid.errors import CancelledError, TrustfidError
from trustfid.records import JobError

from .hooks import Hooks

log = logging.getLogger("trustfid.worker")


def job_error(e: Exception, hooks: Hooks, staging: Staging, record_id: str) -> JobError:
    if isinstance(e, CancelledError) and not hooks.timed_out:
        return JobError(code=e.code, message=e.message)
    if isinstance(e, (CancelledError, SoftTimeLimitExceeded)):
        return JobError(code="time_limit", message=f"the job ran longer than {hooks.time_limit_s} s")
    if isinstance(e, StorageError):  # the object store, not the user's input
        return JobError(code="storage_error", message=e.message)
    if isinstance(e, TrustfidError):
        return JobError(code=e.code, message=public(e.message, staging, record_id))
    if isinstance(e, MemoryError):
        return JobError(code="out_of_memory",
                        message="the worker ran out of memory on this job; send fewer or smaller images")
    if isinstance(e, OSError):  # the service's own storage (staging, reference statistics), not the user's input
        log.exception("job %s: storage error", record_id)
        return JobError(code="storage_error", message=f"the service could not read or write its own storage "
                                                      f"({e.strerror or type(e).__name__}); tell the operator")
    log.exception("job %s failed", record_id)
    return JobError(code="internal", message=public(f"worker error ({type(e).__name__}: {e})", staging, record_id))


def public(message: str, staging: Staging, record_id: str) -> str:
    """A message fit for the caller: the service's own folders never appear in it. Staged inputs are
    named by their field (``real/x.png``), anything else under the data folder by its place in it."""
    work = str(staging.local_dir(record_id))
    data = str(staging.data_dir)
    return message.replace(work + os.sep, "").replace(work, "").replace(data + os.sep, "").replace(data, "")
