"""Running a job or a reference computation to its end: read the record, fetch its inputs, call the
engine, write progress and the outcome back to the store (app/store/), then clean up and queue its
callback.

Every delivery is safe to repeat: a finished record is left alone; a record another live worker is
running (its lease is fresh) raises LeaseHeld, and the task tries again later; a record whose worker
died is run again from its staged inputs (same seed ⇒ same report) until ``max_attempts`` deliveries,
after which it fails with code ``worker_lost``. A worker cut off from Redis past its lease, whose record
was given to another worker meanwhile, writes nothing on its return: its writes are fenced by the lease
(``Store.update``), so it stops at its next progress write, and neither its report nor its end reach the
record. Whatever happens, an accepted job ends succeeded,
failed with a reason, or cancelled; nothing a user sent raises out of here.

A job with ``shard_size`` is planned here and run as a Celery chord of its shards and their merge
(worker/shards.py, worker/merge.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

from app.errors import UnavailableError
from app.queue import TASK_CALLBACK
from app.staging import atomic_path
from app.store import Finish, LeaseLost, Stored
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Progress

from . import shards
from .errors import job_error
from .hooks import Hooks
from .process import Worker

log = logging.getLogger("trustfid.worker")


def run(w: Worker, record_id: str) -> str:
    """Run one job or reference computation to its end; returns its final (or current) state. Raises
    LeaseHeld when another live worker holds it."""
    st = w.store.get(record_id)
    if st is None:
        return "gone"  # deleted or expired
    if st.record.state in FINAL_STATES:
        w.cleanup.clean(st.record.kind, record_id)  # a delivery after its end: anything it left (or the sweep)
        return st.record.state
    with w.store.lease(record_id, w.id):
        if st.record.kind == "score" and shards.planned(w, record_id):
            # a sharded job queued again (a shard's or the merge's worker died, or a delivery repeated):
            # send the shards not done yet and the merge; not a new attempt of the job
            log.warning("job %s: sending its shards again", record_id)
            shards.send_shards(record_id, shards.pending(w, record_id))
            return "running"
        try:
            return _run_leased(w, record_id)
        except LeaseLost as e:
            log.warning("%s %s: its lease passed to worker %s while this worker was cut off; what this worker "
                        "computed is not written", st.record.kind, record_id, e.args[0])
            return "lost"


def _start(s: Stored):
    if s.record.state in FINAL_STATES:
        return None
    s.record.state = "running"
    s.record.attempts += 1
    s.record.started_at = s.record.started_at or time.time()
    s.record.progress = Progress(stage="loading")
    return s


def _run_leased(w: Worker, record_id: str) -> str:
    st = w.store.update(record_id, _start)
    if st is None or st.record.state in FINAL_STATES:
        return st.record.state if st else "gone"
    if st.record.attempts > w.limits.max_attempts:
        return end(w, st, Finish("failed", error=JobError(
            code="worker_lost",
            message=f"the job was started {st.record.attempts - 1} times and its worker died each time")))
    hooks = Hooks(w.store, record_id, w.limits, holder=w.id, kind=st.record.kind)
    try:
        outcome = _score(w, st, hooks) if st.record.kind == "score" else _reference(w, st, hooks)
    except LeaseLost:
        raise
    except Exception as e:
        outcome = Finish("failed", error=job_error(e, hooks, w.staging, record_id))  # cancelled: a no-op
    if outcome is None:
        return "running"  # sharded: its shards and their merge run it now
    if hooks.ended:
        log.warning("%s %s ended (%s) while this worker ran it: it stopped and writes nothing", st.record.kind,
                    record_id, hooks.ended)
    return end(w, st, outcome)


def _inputs(w: Worker, st: Stored, sides: tuple[str, ...]) -> list[Path]:
    """Where the engine reads each input: ``staged:<path>`` in the record's staging folder (pulled from
    the object store first, when there is one), ``reference:<id>`` statistics, or ``uri:`` fetched."""
    rec_id = st.record.id
    if any(st.paths[side].startswith("staged:") for side in sides):
        w.staging.pull(rec_id)
    work = w.staging.local_dir(rec_id)
    out = []
    for side in sides:
        spec = st.paths[side]
        if spec.startswith("uri:"):
            out.append(w.services.inputs.uris.fetch(spec[4:], work / f"{side}-fetched", side))
        elif spec.startswith("staged:"):
            out.append(work / spec[7:])
        elif spec.startswith("reference:"):
            out.append(w.staging.get_reference(spec[10:], work / f"{side}-reference.npz"))
        else:
            out.append(Path(spec))
    return out


def _score(w: Worker, st: Stored, hooks: Hooks):
    from trustfid import score

    rec = st.record
    real, gen = _inputs(w, st, ("real", "generated"))
    if rec.options.shard_size:
        shards.send_shards(rec.id, shards.plan_job(w, st, {"real": real, "generated": gen}))
        return None
    report = score(real, gen, rec.options.score_options(), progress=hooks.progress, should_cancel=hooks.should_cancel)
    return succeeded(w, rec.id, report)


def succeeded(w: Worker, job_id: str, report):
    """The updater that ends a job's record succeeded with its report (sharded or not). The record gets the
    numbers GET /v1/series shows, so that the series never reads a report."""
    images = report.counts.real.used + report.counts.generated.used
    mc, boot = report.fid_mc, report.fid_bootstrap
    return Finish("succeeded", report=report.model_dump_json(), fid=report.fid, fid_mc_std=mc.std if mc else None,
                  fid_ci95=boot.ci95 if boot else None,
                  trust_level=report.trust.level if report.trust else None, headline=report.headline,
                  progress=Progress(stage="done", images_done=images, images_total=images, fraction_done=1.0,
                                    passes=mc.passes if mc else 0))


def _reference(w: Worker, st: Stored, hooks: Hooks):
    from trustfid import compute_stats

    rec = st.record
    (source,) = _inputs(w, st, ("source",))
    stats = compute_stats(source, rec.options, progress=hooks.progress, should_cancel=hooks.should_cancel)
    out = w.staging.local_reference(rec.id)
    with atomic_path(out) as tmp:
        stats.save(tmp)
    fingerprint = hashlib.sha256(out.read_bytes()).hexdigest()
    w.staging.put_reference(rec.id, out)  # to the object store, when there is one
    return Finish("succeeded", fingerprint=fingerprint, images=stats.n,
                  progress=Progress(stage="done", images_done=stats.n, images_total=stats.n, fraction_done=1.0))


def end(w: Worker, st: Stored, outcome: Callable[[Stored], Stored | None]) -> str:
    """End a record with ``outcome`` (an updater: ``Finish(...)``, a no-op once it has ended), then clean
    up after it: its staged copies (marked for removal before the record is written, so that neither a
    store that is away at that moment nor this worker dying leaves them behind: app/cleanup.py), its
    shards' hash, and its callback. Returns the final state. The write is fenced by the record's lease,
    which the caller holds: LeaseLost when it passed to another worker (nothing is written or removed)."""
    record_id = st.record.id
    st = w.cleanup.ending(st.record.kind, record_id,
                          lambda: w.store.update(record_id, outcome, fence=(record_id, w.id)))
    if st is None:
        return "gone"
    with contextlib.suppress(UnavailableError):
        w.store.forget_shards(st.record.id)
    if getattr(st.record.options, "callback_url", None) and st.record.state in FINAL_STATES:
        try:
            w.queue.send(TASK_CALLBACK, st.record.id)
        except UnavailableError as e:
            log.warning("callback of %s not queued: %s", st.record.id, e)
    return st.record.state
