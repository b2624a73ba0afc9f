"""Celery tasks, thin shells over ``run_record``: read the record, fetch inputs, call the engine,
write progress and the outcome back to the store (app/store.py).

Every delivery of a task is safe to repeat: a finished record is left alone; a record another live
worker is running (its lease is fresh) is retried later; a record whose worker died is run again from
its staged inputs (same seed ⇒ same report) until ``max_attempts`` deliveries, after which it fails
with code ``worker_lost``. Whatever happens, an accepted job ends succeeded, failed with a reason, or
cancelled. Nothing a user sent can raise out of a task and take the worker down.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from app import ingest, jobs
from app.errors import UnavailableError
from app.queue import TASK_REFERENCE, TASK_SCORE
from app.settings import Settings, get_settings
from app.store import Store, Stored, connect
from trustfid.errors import CancelledError, TrustfidError
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Progress
from worker.celery_app import app

log = logging.getLogger("trustfid.worker")


class LeaseHeld(Exception):
    """Another live worker runs this record; try the delivery again later."""


# --- per-process state: store, worker id, heartbeat thread ----------------------------------------

class _Process:
    def __init__(self):
        self.pid = None
        self.lock = threading.Lock()

    def ensure(self) -> _Process:
        with self.lock:
            if self.pid == os.getpid():
                return self
            self.pid = os.getpid()
            self.settings = get_settings()
            self.store = Store(connect(self.settings.redis_url), self.settings)
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self.running: str | None = None
            self.stop = threading.Event()
            t = threading.Thread(target=self._beat, name="trustfid-heartbeat", daemon=True)
            t.start()
            return self

    def _beat(self):
        s = self.settings
        while not self.stop.is_set():
            try:
                self.store.heartbeat(s.queue, self.worker_id, ttl=3 * s.heartbeat_s)
                if self.running:
                    self.store.renew_lease(self.running, self.worker_id, s.lease_s)
            except Exception as e:  # Redis away for a moment: keep trying
                log.warning("heartbeat failed: %s", e)
            self.stop.wait(min(s.heartbeat_s, s.lease_s / 3))

    def shutdown(self):
        if self.pid == os.getpid():
            self.stop.set()
            try:
                self.store.forget_worker(self.settings.queue, self.worker_id)
            except Exception:
                pass


PROC = _Process()


def _warm_up() -> None:
    """Load the network once per worker process, before the first job (the engine caches it)."""
    PROC.ensure()
    try:
        from trustfid.pipeline import network
        from trustfid.schemas import ScoreOptions

        network(ScoreOptions(), PROC.settings)
    except Exception:  # a broken engine shows up as failed jobs with a reason, not as a dead worker
        log.exception("loading the network failed")


@signals.worker_ready.connect
def _on_ready(sender=None, **_):
    PROC.ensure()  # heartbeat: /readyz counts this worker
    pool = getattr(sender, "pool", None)
    if pool is None or "prefork" not in type(pool).__module__:
        _warm_up()  # solo/threads: jobs run in this process. Prefork children load it themselves
        # (never CUDA in a parent that forks).


@signals.worker_process_init.connect
def _on_child(**_):
    _warm_up()


@signals.worker_shutdown.connect
def _on_shutdown(**_):
    PROC.shutdown()


# --- the plain function -----------------------------------------------------------------------


def _fail(code: str, message: str):
    def f(s: Stored):
        if s.record.state in FINAL_STATES:
            return None
        s.record.state = "failed"
        s.record.error = JobError(code=code, message=message)
        s.record.finished_at = time.time()
        return s
    return f


class _Callbacks:
    """The engine's progress and should_cancel hooks, writing to / reading from the store."""

    def __init__(self, store: Store, record_id: str, settings: Settings):
        self.store, self.id = store, record_id
        self.deadline = time.monotonic() + settings.soft_time_limit_s
        self.timed_out = False
        self._last_write = 0.0
        self._last_stage = None
        self._last_check = 0.0
        self._cancel = False
        self.images = 0

    def progress(self, p: Progress) -> None:
        now = time.monotonic()
        if p.stage == self._last_stage and now - self._last_write < 0.5:
            return
        self._last_stage, self._last_write = p.stage, now

        def f(s: Stored):
            if s.record.state != "running":
                return None
            s.record.progress = p
            return s
        self.store.update(self.id, f)

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if now > self.deadline:
            self.timed_out = True
            return True
        if not self._cancel and now - self._last_check >= 0.2:
            self._last_check = now
            self._cancel = self.store.cancel_requested(self.id)
        return self._cancel


def _input_path(spec: str, record_id: str, side: str, settings: Settings) -> Path:
    if spec.startswith("uri:"):
        return ingest.fetch(spec[4:], jobs.staging_dir(settings, record_id) / f"{side}-fetched", settings, side)
    return Path(spec)


def run_record(store: Store, settings: Settings, record_id: str, worker_id: str) -> str:
    """Run one job or reference computation to its end; returns its final (or current) state.
    Raises LeaseHeld when another live worker holds it."""
    st = store.get(record_id)
    if st is None:
        return "gone"  # deleted or expired
    if st.record.state in FINAL_STATES:
        ingest.remove_tree(jobs.staging_dir(settings, record_id))
        return st.record.state
    holder = store.acquire_lease(record_id, worker_id, settings.lease_s)
    if holder is not None:
        raise LeaseHeld(holder)
    PROC.running = record_id
    try:
        return _run_leased(store, settings, record_id)
    finally:
        PROC.running = None
        store.release_lease(record_id, worker_id)


def _run_leased(store: Store, settings: Settings, record_id: str) -> str:
    def start(s: Stored):
        if s.record.state in FINAL_STATES:
            return None
        s.record.state = "running"
        s.record.attempts += 1
        s.record.started_at = s.record.started_at or time.time()
        s.record.progress = Progress(stage="loading")
        return s

    st = store.update(record_id, start)
    if st is None or st.record.state in FINAL_STATES:
        return st.record.state if st else "gone"
    if st.record.attempts > settings.max_attempts:
        st = store.update(record_id, _fail(
            "worker_lost", f"the job was started {st.record.attempts - 1} times and its worker died each time"))
        return _finish(store, settings, st)

    cb = _Callbacks(store, record_id, settings)
    t0 = time.monotonic()
    try:
        if st.record.kind == "score":
            outcome = _score(store, st, settings, cb)
        else:
            outcome = _reference(st, settings, cb)
    except CancelledError as e:
        if cb.timed_out:
            outcome = _fail("time_limit", f"the job ran longer than {settings.soft_time_limit_s} s")
        else:
            outcome = _fail(e.code, e.message)  # a no-op when the API already marked it cancelled
    except SoftTimeLimitExceeded:
        outcome = _fail("time_limit", f"the job ran longer than {settings.soft_time_limit_s} s")
    except TrustfidError as e:
        outcome = _fail(e.code, e.message)
    except MemoryError:
        outcome = _fail("out_of_memory", "the worker ran out of memory on this job; send fewer or smaller images")
    except Exception as e:
        log.exception("job %s failed", record_id)
        outcome = _fail("internal", f"worker error ({type(e).__name__}: {e})")
    st = store.update(record_id, outcome)
    if st is not None and st.record.state == "succeeded" and st.record.kind == "score":
        store.observe_job(time.monotonic() - t0, cb.images)
    return _finish(store, settings, st)


def _score(store: Store, st: Stored, settings: Settings, cb: _Callbacks):
    from trustfid import score

    rec = st.record
    real = _input_path(st.paths["real"], rec.id, "real", settings)
    gen = _input_path(st.paths["generated"], rec.id, "generated", settings)
    report = score(real, gen, rec.options.score_options(), progress=cb.progress, should_cancel=cb.should_cancel)
    store.save_report(rec.id, report.model_dump_json())
    cb.images = report.counts.real.used + report.counts.generated.used

    def done(s: Stored):
        if s.record.state in FINAL_STATES:
            return None
        s.record.state = "succeeded"
        s.record.finished_at = time.time()
        s.record.progress = Progress(stage="done", images_done=cb.images, images_total=cb.images,
                                     passes=report.fid_mc.passes)
        s.record.fid = report.fid
        s.record.fid_mc_std = report.fid_mc.std
        s.record.trust_level = report.trust.level
        s.record.headline = report.headline
        return s
    return done


def _reference(st: Stored, settings: Settings, cb: _Callbacks):
    from trustfid import compute_stats

    rec = st.record
    source = _input_path(st.paths["source"], rec.id, "source", settings)
    stats = compute_stats(source, rec.options, progress=cb.progress, should_cancel=cb.should_cancel)
    out = Path(st.paths["stats"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    stats.save(tmp)
    os.replace(tmp, out)
    fingerprint = hashlib.sha256(out.read_bytes()).hexdigest()
    images = getattr(stats, "n", None)

    def done(s: Stored):
        if s.record.state in FINAL_STATES:
            return None
        s.record.state = "succeeded"
        s.record.finished_at = time.time()
        s.record.progress = Progress(stage="done", images_done=int(images or 0), images_total=int(images or 0))
        s.record.fingerprint = fingerprint
        s.record.images = int(images) if images is not None else None
        return s
    return done


def _finish(store: Store, settings: Settings, st: Stored | None) -> str:
    """After the final state: drop staged inputs, send the callback."""
    if st is None:
        return "gone"
    ingest.remove_tree(jobs.staging_dir(settings, st.record.id))
    if st.record.kind == "reference" and st.record.state != "succeeded" and st.paths.get("stats"):
        Path(st.paths["stats"]).unlink(missing_ok=True)
    url = getattr(st.record.options, "callback_url", None)
    if url and st.record.state in FINAL_STATES:
        from app.callback import deliver

        deliver(settings, url, st.record.model_dump_json().encode(), st.owner)
    return st.record.state


# --- the tasks ----------------------------------------------------------------------------------


def _task(task, record_id: str) -> str:
    proc = PROC.ensure()
    try:
        return run_record(proc.store, proc.settings, record_id, proc.worker_id)
    except LeaseHeld:
        raise task.retry(countdown=max(1, int(proc.settings.lease_s / 2)), max_retries=None) from None
    except (UnavailableError, redis.RedisError) as e:  # the store is away: try again, never drop the job
        log.warning("job %s: Redis unavailable (%s); retrying", record_id, e)
        raise task.retry(countdown=5, max_retries=None) from None


@app.task(name=TASK_SCORE, bind=True)
def score_job(self, job_id: str) -> str:
    return _task(self, job_id)


@app.task(name=TASK_REFERENCE, bind=True)
def compute_reference(self, ref_id: str) -> str:
    return _task(self, ref_id)
