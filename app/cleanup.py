"""Nothing a record staged outlives it: its staged inputs (in the data folder and, with
TRUSTFID_STAGING_URL, in the object store) and, for a reference that is deleted or did not succeed, its
statistics.

Whoever ends or deletes a record first *marks* it (one Redis sorted set per queue, ``keys.cleanup``),
then writes the record, then removes what it left (``clean``), and unmarks it once everything is gone.
A removal that cannot happen now — the object store is away, or the process dies between the record's
last write and the removal — leaves the mark, and every worker's sweep (worker/process.py) tries the
marked records again, every heartbeat, until the store answers. The mark is written *before* the record
ends, so no moment exists at which a record is over and nobody knows its copies are left.

A record that is marked but has not ended yet (the process that marked it died before the record's last
write; the job runs again) is left alone until it ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from app.staging import Staging
from app.store import Store
from trustfid.records import FINAL_STATES

T = TypeVar("T")


class Cleanup:
    """The store, the staging and the queue whose marks this process handles."""

    def __init__(self, store: Store, staging: Staging, queue: str):
        self.store, self.staging, self.queue = store, staging, queue

    def mark(self, kind: str, record_id: str) -> None:
        """Before a record ends or is deleted: its copies are to be removed."""
        self.store.mark_cleanup(self.queue, kind, record_id)

    def clean(self, kind: str, record_id: str) -> bool:
        """Remove what an ended (or deleted) record left: unmarked once all of it is gone, marked (for the
        sweep) while some is left; returns whether all is gone. A record still queued or running keeps
        its copies (it runs again)."""
        st = self.store.get(record_id)
        if st is not None and st.record.state not in FINAL_STATES:
            return False
        done = self.staging.discard(record_id)
        if kind == "reference" and (st is None or st.record.state != "succeeded"):
            done = self.staging.remove_reference(record_id) and done
        if done:
            self.store.unmark_cleanup(self.queue, kind, record_id)
        else:
            self.mark(kind, record_id)
        return done

    def ending(self, kind: str, record_id: str, write: Callable[[], T]) -> T:
        """Mark the record, ``write()`` (what ends or deletes it), then remove its copies; returns what
        ``write`` returned."""
        self.mark(kind, record_id)
        out = write()
        self.clean(kind, record_id)
        return out

    def retry(self) -> int:
        """Every marked record once more (a worker's sweep), but those still worked on: a cancelled job
        that has not stopped yet cleans up after itself (``busy``). Returns how many stay marked; a
        removal that fails is logged by Staging."""
        left = 0
        for kind, record_id in self.store.marked_cleanup(self.queue):
            if self.busy(record_id) or not self.clean(kind, record_id):
                left += 1
        return left

    def busy(self, record_id: str) -> bool:
        """Whether a live worker still works on the record: it holds the record's lease, or the record is a
        sharded job whose shards or merge have not all ended and none of them was lost."""
        if self.store.lease_holder(record_id):
            return True
        return bool(self.store.shards(record_id)) and not self.store.shards_lost(record_id)
