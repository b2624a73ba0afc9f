"""Every Redis key the service writes, in one place. All start with ``trustfid:``; ids are the
service's own (hex), owners the sha256 of an API key."""

from __future__ import annotations

P = "trustfid:"


def record(record_id: str) -> str:
    """A job or reference record (JSON)."""
    return f"{P}rec:{record_id}"


def progress(record_id: str) -> str:
    """A running record's progress (JSON), apart from its record so that a progress write is O(1): merged
    into the record by every read (records.py), folded into it and deleted when the record ends."""
    return f"{P}progress:{record_id}"


def report(job_id: str) -> str:
    return f"{P}report:{job_id}"


def cancel(record_id: str) -> str:
    return f"{P}cancel:{record_id}"


def index(kind: str, owner: str) -> str:
    """The owner's records of one kind, scored by creation time."""
    return f"{P}idx:{kind}:{owner}"


def tag(owner: str, tag: str) -> str:
    """The owner's records that carry a tag, scored by creation time."""
    return f"{P}tag:{owner}:{tag}"


def series(owner: str, tag: str) -> str:
    """The owner's jobs that carry a tag and a numeric step, scored by the step."""
    return f"{P}series:{owner}:{tag}"


def state(kind: str, state: str) -> str:
    """The set of records of one kind in one (queued or running) state."""
    return f"{P}state:{kind}:{state}"


def rate(owner: str) -> str:
    """The owner's submissions of the last minute."""
    return f"{P}rate:{owner}"


def workers(queue: str) -> str:
    """The workers of a queue, scored by their last heartbeat."""
    return f"{P}workers:{queue}"


def workers_with(queue: str, capability: str) -> str:
    """The workers of a queue that can compute an optional metric (``frd``), scored as ``workers``."""
    return f"{P}workers:{queue}:{capability}"


def lease(name: str) -> str:
    """The lease of a running record (``name`` = its id) or shard (``<job id>:<set>:<k>``)."""
    return f"{P}lease:{name}"


def requeued(record_id: str) -> str:
    """Set for ``lease_s`` when a lost record is queued again, so that it is queued once."""
    return f"{P}requeued:{record_id}"


def shards(job_id: str) -> str:
    """A sharded job's hash: its plan and every shard's state (app/store/leases.py)."""
    return f"{P}shards:{job_id}"


def cleanup(queue: str) -> str:
    """Records of a queue whose staged copies are still to be removed ("<kind>:<id>"), scored by the time
    they were marked (app/cleanup.py)."""
    return f"{P}cleanup:{queue}"


def finished(kind: str) -> str:
    return f"{P}metrics:finished:{kind}"


def duration(kind: str, state: str) -> str:
    return f"{P}metrics:duration:{kind}:{state}"


def queue_wait(kind: str) -> str:
    return f"{P}metrics:queue_wait:{kind}"


def images(kind: str) -> str:
    return f"{P}metrics:images:{kind}"
