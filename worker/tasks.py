"""Celery tasks, thin shells over ``run_record``: read the record, fetch inputs, call the engine,
write progress and the outcome back to the store (app/store.py).

Every delivery of a task is safe to repeat: a finished record is left alone; a record another live
worker is running (its lease is fresh) is retried later; a record whose worker died is run again from
its staged inputs (same seed ⇒ same report) until ``max_attempts`` deliveries, after which it fails
with code ``worker_lost``. Whatever happens, an accepted job ends succeeded, failed with a reason, or
cancelled. Nothing a user sent can raise out of a task and take the worker down.

A job with ``shard_size`` is planned by the worker that picks it up and run as a Celery chord: one
``score_shard`` task per shard, then ``merge_shards`` (worker/shards.py describes its guarantees).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import httpx
import redis
from celery import signals
from celery.exceptions import SoftTimeLimitExceeded

from app import ingest, staging
from app.callback import CallbackFailed, deliver
from app.errors import StorageError, UnavailableError
from app.queue import TASK_CALLBACK, TASK_MERGE, TASK_REFERENCE, TASK_SCORE, TASK_SHARD, enqueue
from app.settings import Settings, get_settings
from app.store import LeaseHeld, Store, Stored, connect, finish
from trustfid.errors import CancelledError, TrustfidError
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Progress
from worker import shards
from worker.celery_app import app

log = logging.getLogger("trustfid.worker")


SWEEP_HEARTBEATS = 20  # every this many heartbeats a worker looks for staging copies of ended records


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
            # Commands retry through a Redis restart (about a minute) instead of failing the job.
            self.store = Store(connect(self.settings.redis_url, retry_s=60), self.settings)
            self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self.stop = threading.Event()
            t = threading.Thread(target=self._beat, name="trustfid-heartbeat", daemon=True)
            t.start()
            return self

    def _beat(self):
        """Every heartbeat: say this worker is alive, renew the running job's lease, and queue again
        any job whose lease lapsed (its worker died or was stopped mid-job) — so such a job runs again
        within ``lease_s`` + ``heartbeat_s`` of a worker being alive, whatever the broker's visibility
        timeout."""
        s = self.settings
        swept = time.monotonic()
        while not self.stop.is_set():
            try:
                self.store.heartbeat(s.queue, self.worker_id)
                self.store.renew_leases()
                for kind, record_id in self.store.orphans(s.queue):
                    log.warning("%s %s lost its worker; queueing it again", kind, record_id)
                    enqueue(s, TASK_SCORE if kind == "score" else TASK_REFERENCE, record_id)
                if time.monotonic() - swept > SWEEP_HEARTBEATS * s.heartbeat_s:
                    swept = time.monotonic()
                    staging.sweep(s, self._over)
            except Exception as e:  # Redis away for a moment, or a lease lost to a lapse: keep going
                log.warning("heartbeat: %s", e)
            self.stop.wait(min(s.heartbeat_s, s.lease_s / 3))

    def _over(self, record_id: str, mtime: float) -> bool:
        """Whether this worker's staging copy of a record can go: the record ended, or it is gone and the
        copy is older than an hour (never a folder the API of this machine is still filling)."""
        st = self.store.get(record_id)
        return st.record.state in FINAL_STATES if st is not None else time.time() - mtime > 3600

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
    return finish("failed", error=JobError(code=code, message=message))


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
        """Write the engine's progress to the record, at most every 0.5 s — except that a new stage or
        set, and a set's first and last event, always go through: a poll never shows a finished set
        while the next one runs."""
        now = time.monotonic()
        step = (p.stage, p.set)
        edge = p.images_done == 0 or (p.images_total is not None and p.images_done >= p.images_total)
        if step == self._last_stage and not edge and now - self._last_write < 0.5:
            return
        self._last_stage, self._last_write = step, now
        try:
            self._write(p)
        except UnavailableError as e:  # progress is best effort: never fail a job for it
            log.warning("job %s: progress not written (%s)", self.id, e)

    def _write(self, p: Progress) -> None:
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
            with contextlib.suppress(UnavailableError):  # Redis away: ask again next batch
                self._cancel = self.store.cancel_requested(self.id)
        return self._cancel


class _ShardCallbacks(_Callbacks):
    """A shard's hooks: the job's cancel flag; its progress summed over the job's shards (shards.py)."""

    def __init__(self, store: Store, job_id: str, settings: Settings, shard: str):
        super().__init__(store, job_id, settings)
        self.shard = shard

    def _write(self, p: Progress) -> None:
        if p.stage == "extracting":
            shards.record_progress(self.store, self.id, self.shard, p.images_done, p.passes)


class _MergeCallbacks(_Callbacks):
    """The merge's hooks: its stages keep showing every image done (the sum over the shards)."""

    def __init__(self, store: Store, job_id: str, settings: Settings, images: int):
        super().__init__(store, job_id, settings)
        self.images = images

    def _write(self, p: Progress) -> None:
        super()._write(p.model_copy(update={"images_done": self.images, "images_total": self.images}))


def _input_path(spec: str, record_id: str, side: str, settings: Settings) -> Path:
    """Where the engine reads one input: ``staged:<path>`` in the record's staging folder (pulled from
    the object store first, when there is one), ``reference:<id>`` statistics, or ``uri:`` fetched.
    (Records written before staged inputs were named this way hold absolute paths.)"""
    work = staging.local_dir(settings, record_id)
    if spec.startswith("uri:"):
        return ingest.fetch(spec[4:], work / f"{side}-fetched", settings, side)
    if spec.startswith("staged:"):
        return work / spec[7:]
    if spec.startswith("reference:"):
        return staging.get_reference(settings, spec[10:], work / f"{side}-reference.npz")
    return Path(spec)


def _inputs(st: Stored, settings: Settings, sides: tuple[str, ...]) -> list[Path]:
    if any(st.paths[side].startswith("staged:") for side in sides):
        staging.pull(settings, st.record.id)
    return [_input_path(st.paths[side], st.record.id, side, settings) for side in sides]


def run_record(store: Store, settings: Settings, record_id: str, worker_id: str) -> str:
    """Run one job or reference computation to its end; returns its final (or current) state.
    Raises LeaseHeld when another live worker holds it."""
    st = store.get(record_id)
    if st is None:
        return "gone"  # deleted or expired
    if st.record.state in FINAL_STATES:
        staging.discard(settings, record_id)
        return st.record.state
    with store.lease(record_id, worker_id):
        if st.record.kind == "score" and shards.planned(store, record_id):
            # a sharded job queued again (a shard's or the merge's worker died, or a delivery repeated):
            # send the shards not done yet and the merge; not a new attempt of the job
            log.warning("job %s: sending its shards again", record_id)
            _send_shards(record_id, shards.pending(store, settings, record_id))
            return "running"
        return _run_leased(store, settings, record_id)


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
    try:
        if st.record.kind == "score":
            outcome = _score(store, st, settings, cb)
        else:
            outcome = _reference(st, settings, cb)
    except Exception as e:
        error = _error_of(e, cb, settings, record_id)
        outcome = _fail(error.code, error.message)  # cancelled: a no-op, the API marked it so already
    if outcome is None:
        return "running"  # sharded: its shards and their merge run it now
    return _finish(store, settings, store.update(record_id, outcome))


def _error_of(e: Exception, cb: _Callbacks, settings: Settings, record_id: str) -> JobError:
    """What a job (or one of its shards) that raised ``e`` failed with, in words for the caller."""
    if isinstance(e, CancelledError) and not cb.timed_out:
        return JobError(code=e.code, message=e.message)
    if isinstance(e, (CancelledError, SoftTimeLimitExceeded)):
        return JobError(code="time_limit", message=f"the job ran longer than {settings.soft_time_limit_s} s")
    if isinstance(e, StorageError):  # the object store, not the user's input
        return JobError(code="storage_error", message=e.message)
    if isinstance(e, TrustfidError):
        return JobError(code=e.code, message=_public(e.message, settings, record_id))
    if isinstance(e, MemoryError):
        return JobError(code="out_of_memory",
                        message="the worker ran out of memory on this job; send fewer or smaller images")
    if isinstance(e, OSError):  # the service's own storage (staging, reference statistics), not the user's input
        log.exception("job %s: storage error", record_id)
        return JobError(code="storage_error", message=f"the service could not read or write its own storage "
                                                      f"({e.strerror or type(e).__name__}); tell the operator")
    log.exception("job %s failed", record_id)
    return JobError(code="internal", message=_public(f"worker error ({type(e).__name__}: {e})", settings, record_id))


def _public(message: str, settings: Settings, record_id: str) -> str:
    """A message fit for the caller: the service's own folders never appear in it. Staged inputs are
    named by their field (``real/x.png``), anything else under the data folder by its place in it."""
    work = str(staging.local_dir(settings, record_id))
    data = str(Path(settings.data_dir).resolve())
    return message.replace(work + os.sep, "").replace(work, "").replace(data + os.sep, "").replace(data, "")


def _score(store: Store, st: Stored, settings: Settings, cb: _Callbacks):
    from trustfid import score

    rec = st.record
    real, gen = _inputs(st, settings, ("real", "generated"))
    if rec.options.shard_size:
        _send_shards(rec.id, shards.plan_job(store, settings, st, {"real": real, "generated": gen}))
        return None
    report = score(real, gen, rec.options.score_options(), progress=cb.progress, should_cancel=cb.should_cancel)
    return _succeeded(store, rec.id, report)


def _succeeded(store: Store, job_id: str, report):
    """Save a job's report; the updater that ends its record succeeded (sharded or not)."""
    store.save_report(job_id, report.model_dump_json())
    images = report.counts.real.used + report.counts.generated.used
    return finish("succeeded", fid=report.fid, fid_mc_std=report.fid_mc.std, trust_level=report.trust.level,
                  headline=report.headline,
                  progress=Progress(stage="done", images_done=images, images_total=images,
                                    passes=report.fid_mc.passes))


def _reference(st: Stored, settings: Settings, cb: _Callbacks):
    from trustfid import compute_stats

    rec = st.record
    (source,) = _inputs(st, settings, ("source",))
    stats = compute_stats(source, rec.options, progress=cb.progress, should_cancel=cb.should_cancel)
    out = staging.local_reference(settings, rec.id)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    stats.save(tmp)
    os.replace(tmp, out)
    fingerprint = hashlib.sha256(out.read_bytes()).hexdigest()
    staging.put_reference(settings, rec.id, out)  # to the object store, when there is one
    return finish("succeeded", fingerprint=fingerprint, images=stats.n,
                  progress=Progress(stage="done", images_done=stats.n, images_total=stats.n))


def _finish(store: Store, settings: Settings, st: Stored | None) -> str:
    """After the final state: drop staged inputs, send the callback."""
    if st is None:
        return "gone"
    staging.discard(settings, st.record.id)
    with contextlib.suppress(UnavailableError):
        store.forget_shards(st.record.id)
    if st.record.kind == "reference" and st.record.state != "succeeded":
        staging.remove_reference(settings, st.record.id)
    if getattr(st.record.options, "callback_url", None) and st.record.state in FINAL_STATES:
        try:
            enqueue(settings, TASK_CALLBACK, st.record.id)
        except UnavailableError as e:
            log.warning("callback of %s not queued: %s", st.record.id, e)
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


# --- sharded jobs (worker/shards.py has the plan, the shards' bookkeeping and the merge) ----------


def run_shard_record(store: Store, settings: Settings, job_id: str, shard: str, worker_id: str) -> str:
    """Run one shard (shards.run_shard) to its end. An error is recorded for the merge, which fails
    the job with it, never raised: the chord must see every shard return. Redis errors propagate (the
    task retries)."""
    cb = _ShardCallbacks(store, job_id, settings, shard)
    try:
        state = shards.run_shard(store, settings, job_id, shard, worker_id, cb)
    except (UnavailableError, redis.RedisError):
        raise
    except Exception as e:
        error = _error_of(e, cb, settings, job_id)
        with contextlib.suppress(UnavailableError, redis.RedisError):
            shards.shard_failed(store, job_id, shard, None if error.code == "cancelled" else error)
        state = "stopped" if error.code == "cancelled" else "failed"  # stopped part-way by a cancel
    log.info("job %s: shard %s %s on worker %s", job_id, shard, state, worker_id)
    return state


def merge_record(store: Store, settings: Settings, job_id: str, worker_id: str) -> str:
    """Merge a sharded job's shards into its report and end it, under the job's lease; a job ended
    already (cancelled) is cleaned up; one with a shard still to come is left to that shard's chord."""
    try:
        with store.lease(job_id, worker_id):
            return _merge_leased(store, settings, job_id)
    except LeaseHeld:
        return "elsewhere"  # another merge (of another chord of this job) runs


def _merge_leased(store: Store, settings: Settings, job_id: str) -> str:
    st = store.get(job_id)
    if st is None:
        return "gone"
    if not shards.planned(store, job_id):
        return st.record.state  # ended and cleaned up by another merge
    if st.record.state in FINAL_STATES:  # cancelled while its shards ran
        return _finish(store, settings, st)
    store.set_shards(job_id, {"merge": "started"})
    ready, error = shards.outcome(store, settings, job_id)
    if ready == "waiting":  # a shard runs under another chord, whose merge follows it
        store.set_shards(job_id, {"merge": ""})
        return "waiting"
    if error is not None:
        outcome = _fail(error.code, error.message)
    else:
        total = st.record.progress.images_total if st.record.progress else None
        cb = _MergeCallbacks(store, job_id, settings, total or 0)
        try:
            outcome = _succeeded(store, job_id, shards.build_report(store, settings, st, cb))
        except Exception as e:
            error = _error_of(e, cb, settings, job_id)
            outcome = _fail(error.code, error.message)
    return _finish(store, settings, store.update(job_id, outcome))


def _send_shards(job_id: str, todo: list[str]) -> None:
    """A Celery chord: the shards as a group, the merge as its callback (the shards store their results
    in the result backend, which counts them for the chord). With no shard to run, the merge alone."""
    from celery import chord

    if todo:
        chord([score_shard.si(job_id, shard) for shard in todo], merge_shards.si(job_id)).apply_async()
    else:
        merge_shards.si(job_id).apply_async()


@app.task(name=TASK_SHARD, bind=True, ignore_result=False)
def score_shard(self, job_id: str, shard: str) -> str:
    """One shard of a sharded job (a chord's header task; its result counts for the chord)."""
    proc = PROC.ensure()
    try:
        return run_shard_record(proc.store, proc.settings, job_id, shard, proc.worker_id)
    except (UnavailableError, redis.RedisError) as e:
        log.warning("job %s shard %s: Redis unavailable (%s); retrying", job_id, shard, e)
        raise self.retry(countdown=5, max_retries=None) from None


@app.task(name=TASK_MERGE, bind=True)
def merge_shards(self, job_id: str) -> str:
    """The chord's callback: merge a sharded job's shards into its report and end the job."""
    proc = PROC.ensure()
    try:
        return merge_record(proc.store, proc.settings, job_id, proc.worker_id)
    except (UnavailableError, redis.RedisError) as e:
        log.warning("job %s: merge: Redis unavailable (%s); retrying", job_id, e)
        raise self.retry(countdown=5, max_retries=None) from None


_SETTINGS = get_settings()


@app.task(name=TASK_CALLBACK, bind=True, autoretry_for=(CallbackFailed, httpx.HTTPError, UnavailableError),
          retry_backoff=True, retry_backoff_max=_SETTINGS.callback_backoff_max_s, retry_jitter=True,
          max_retries=_SETTINGS.callback_attempts - 1)
def deliver_callback(self, record_id: str) -> str:
    """POST the final record to the job's callback_url (app/callback.py), on the callback queue:
    retried with exponential backoff by Celery, never on a scoring worker's time."""
    proc = PROC.ensure()
    st = proc.store.get(record_id)
    if st is None or st.record.state not in FINAL_STATES:
        return "gone"
    url = getattr(st.record.options, "callback_url", None)
    try:
        deliver(proc.settings, url, st.record.model_dump_json().encode(), st.owner)
    except TrustfidError as e:  # the URL is no longer allowed: retrying cannot help
        log.warning("callback of %s refused: %s", record_id, e.message)
        return "refused"
    except (CallbackFailed, httpx.HTTPError) as e:
        log.warning("callback of %s: attempt %d failed: %s", record_id, self.request.retries + 1, e)
        raise
    return "delivered"
