"""The engine's progress and should_cancel hooks of one record: progress written beside its record in the
store (its own key, O(1): throttled, best effort), the cancel flag read from it, the job's time limit
enforced."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from app.errors import UnavailableError
from app.store import Store
from trustfid.records import FINAL_STATES
from trustfid.schemas import Progress

log = logging.getLogger("trustfid.worker")


class Hooks:
    """``limits.soft_time_limit_s`` bounds the run (worker/process.py JobLimits, or the settings);
    ``write(progress)`` replaces the default write of the record's progress (a shard's and a merge's
    progress, worker/shards.py); ``holder``, the worker holding the record's lease, fences the default
    write: once the lease has passed to another worker, the write raises LeaseLost, which stops the job
    here (worker/jobs.py). ``kind``: the record's (score or reference)."""

    def __init__(self, store: Store, record_id: str, limits, write: Callable[[Progress], None] | None = None,
                 holder: str | None = None, kind: str = "score"):
        self.store, self.id, self.holder, self.kind = store, record_id, holder, kind
        self.time_limit_s = limits.soft_time_limit_s
        self.deadline = time.monotonic() + self.time_limit_s
        self.timed_out = False
        self.write = write or self.write_record
        self._last_write = 0.0
        self._last_stage = None
        self._last_check = 0.0
        self._cancel = False
        self.ended: str | None = None  # the record's state, when it ended while this worker ran it

    def progress(self, p: Progress) -> None:
        """Write the engine's progress, at most every 0.5 s — except that a new stage or set, and a set's
        first and last event, always go through: a poll never shows a finished set while the next one
        runs."""
        now = time.monotonic()
        step = (p.stage, p.set)
        edge = p.images_done == 0 or (p.images_total is not None and p.images_done >= p.images_total)
        if step == self._last_stage and not edge and now - self._last_write < 0.5:
            return
        self._last_stage, self._last_write = step, now
        try:
            self.write(p)
        except UnavailableError as e:  # progress is best effort: never fail a job for it
            log.warning("job %s: progress not written (%s)", self.id, e)

    def write_record(self, p: Progress) -> None:
        """The record's progress, into its own key (``Store.write_progress``: the record is neither read nor
        rewritten). Once the record has ended, nothing is written and ``ended`` is set."""
        fence = (self.id, self.holder) if self.holder else None
        if self.store.write_progress(self.id, self.kind, p, fence=fence) != "ended":
            return
        st = self.store.get(self.id)
        if st is not None and st.record.state in FINAL_STATES:
            self.ended = st.record.state  # cancelled, or ended by a worker that took it over: stop here

    def should_cancel(self) -> bool:
        if self.ended:
            return True
        now = time.monotonic()
        if now > self.deadline:
            self.timed_out = True
            return True
        if not self._cancel and now - self._last_check >= 0.2:
            self._last_check = now
            with contextlib.suppress(UnavailableError):  # Redis away: ask again next batch
                self._cancel = self.store.cancel_requested(self.id)
        return self._cancel
