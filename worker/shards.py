"""Sharded jobs (option ``shard_size``): the plan, the shards and their bookkeeping, behind the Celery
tasks of worker/tasks.py; the merge is worker/merge.py.

The worker that picks up a sharded score job plans it (``plan_job``): each image set is split into
shards of ``shard_size`` candidates; the plan (worker/shard_plan.py) and every shard's state go into
one Redis hash (app/store/leases.py). ``send_shards`` then sends a Celery chord: one ``score_shard``
task per shard, any worker takes any of them, and the ``merge_shards`` callback. A shard (``run``)
extracts its candidates with ``first_index`` = its start (trustfid/shards.py) and saves its statistics
as a pickle-free .npz in the job's staging folder; the merge fetches them, merges them in shard order
and builds the report as the unsharded job would. With frd:auto, a merge that finds the reference outside
the FID network's domain sends a second chord instead (``plan_radiomics``): the radiomics of each set, sharded
over the same ranges, whose merge then ends the job; they never run inside a merge.

Workers on different machines (object-store staging, app/staging.py): the plan names each set by its
place in the job's staging folder; a shard's worker pulls the staged inputs into its own folder (the
planner publishes fetched inputs and a reference's statistics there too), publishes its statistics to
the store, and the merge reads them from there. Without a store the workers share that folder.

Guarantees, as for a job:
- Idempotent: a shard whose .npz exists is not computed again; one whose lease another live worker
  holds is left to it; the merge runs under the job's lease, so two merges never race, and a merge
  that finds a shard missing leaves the job to the chord that runs it.
- Worker deaths: a shard holds its own lease while it runs (renewed by the heartbeat). When it lapses
  (or the merge's does, or nothing happened for the broker's visibility timeout) the reaper
  (Store.orphans) queues the job again and its delivery sends a chord over the shards not done
  (``pending``); the job's own attempts do not count that. A shard started more than
  ``max_attempts`` times fails the job with code ``worker_lost``.
- Hosts cut off: a worker cut off from Redis past a shard's lease, whose shard was given to another
  worker meanwhile, drops its statistics on its return (``Store.holds``): the shard is merged once.
- Progress: every shard writes its images done into the hash; the job's progress (its own key beside
  the record) shows their sum over all shards of both sets (never decreasing).
- Cancel: every shard checks the job's cancel flag between batches, as a job does; a shard delivered
  after the job ended does nothing.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import redis
from celery import chord

from app.errors import UnavailableError
from app.queue import TASK_MERGE, TASK_SHARD
from app.staging import atomic_path
from app.store import LeaseHeld, Stored
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Progress

from .celery_app import app
from .errors import job_error
from .hooks import Hooks
from .process import Worker
from .shard_plan import RADIOMICS_PASS, SETS, SetPlan, ShardId, ShardPlan

log = logging.getLogger("trustfid.worker")


def shard_path(w: Worker, job_id: str, shard: ShardId) -> Path:
    """Where a shard keeps its statistics: the job's staging folder."""
    suffix = f"-{shard.work}" if shard.work else ""
    return w.staging.local_dir(job_id) / "shards" / f"{shard.set_name}-{shard.k:05d}{suffix}.npz"


def plan_of(w: Worker, job_id: str) -> ShardPlan | None:
    raw = w.store.shards(job_id).get("plan")
    return ShardPlan.model_validate_json(raw) if raw else None


def plan_job(w: Worker, st: Stored, sources: dict[str, Path]) -> list[ShardId]:
    """Split each image set of a job into shards and record the plan; returns the shards to run. A set
    given as saved statistics (a reference) is not split: the merge reads it."""
    from trustfid.pipeline import is_image_source
    from trustfid.shards import count_candidates, plan

    options = st.record.options.score_options()
    size = st.record.options.shard_size
    work = w.staging.local_dir(st.record.id)
    sets = {}
    for set_name in SETS:
        source = sources[set_name]
        sets[set_name] = SetPlan(path=str(source), shards=plan(count_candidates(source, set_name, options), size)
                                 if is_image_source(source) else [])
        if source.is_relative_to(work):  # where every worker finds it in its own staging folder
            relative = source.relative_to(work)
            sets[set_name].relative = relative.as_posix()
            if not st.paths[set_name].startswith("staged:"):  # fetched or a reference: publish it
                w.staging.share(st.record.id, work / relative.parts[0])
    layout = ShardPlan(**sets)
    todo = layout.shard_ids()
    w.store.set_shards(st.record.id, {"plan": layout.dump(), **{str(shard): "queued" for shard in todo}})
    return todo


def plan_radiomics(w: Worker, job_id: str, layout: ShardPlan, sets: list[str]) -> None:
    """frd:auto's second pass (the merge found the reference outside the FID network's domain): the radiomics
    of ``sets`` as shards over the same ranges, recorded in the plan; the merge sends them as a chord whose
    merge ends the job (a worker lost before that leaves them to the reaper, as any shard: ``pending``)."""
    layout = layout.model_copy(update={"radiomics": [s for s in SETS if s in sets]})
    w.store.set_shards(job_id, {"plan": layout.dump(), "merge": "",
                                **{str(s): "queued" for s in layout.shard_ids() if s.work == RADIOMICS_PASS}})


def local_source(w: Worker, job_id: str, info: SetPlan) -> Path:
    """One set's input on this worker: in its own staging folder (pulled from the object store when the
    planning worker was another machine), or the planner's path where the set is not in a staging
    folder."""
    if info.relative is None:
        return Path(info.path)
    return w.staging.pull(job_id) / info.relative


def planned(w: Worker, job_id: str) -> bool:
    return "plan" in w.store.shards(job_id)


def pending(w: Worker, job_id: str) -> list[ShardId]:
    """The shards of a planned job whose statistics are not saved yet, to send again; those not running
    under a live lease are marked queued (one that is gets a message too, which leaves it to its worker)."""
    h = w.store.shards(job_id)
    layout = ShardPlan.model_validate_json(h["plan"])
    todo = [s for s in layout.shard_ids() if not w.staging.shared(job_id, shard_path(w, job_id, s))]
    lost = [s for s in todo if h.get(str(s)) != "running" or not w.store.lease_holder(f"{job_id}:{s}")]
    w.store.set_shards(job_id, {"merge": "", **{str(s): "queued" for s in lost}})
    return todo


def send_shards(job_id: str, todo: list[ShardId]) -> None:
    """A Celery chord: the shards as a group, the merge as its callback (the shards store their results
    in the result backend, which counts them for the chord). With no shard to run, the merge alone."""
    merge = app.signature(TASK_MERGE, args=(job_id,), immutable=True)
    if todo:
        chord([app.signature(TASK_SHARD, args=(job_id, str(s)), immutable=True) for s in todo], merge).apply_async()
    else:
        merge.apply_async()


def run(w: Worker, job_id: str, name: str) -> str:
    """Run one shard to its end. An error is recorded for the merge, which fails the job with it, never
    raised: the chord must see every shard return. Redis errors propagate (the task retries)."""
    shard = ShardId.parse(name)
    hooks = Hooks(w.store, job_id, w.limits, write=lambda p: record_progress(w, job_id, shard, p))
    try:
        state = _run(w, job_id, shard, hooks)
    except (UnavailableError, redis.RedisError):
        raise
    except Exception as e:
        error = job_error(e, hooks, w.staging, job_id)
        with contextlib.suppress(UnavailableError, redis.RedisError):
            shard_failed(w, job_id, shard, None if error.code == "cancelled" else error)
        state = "stopped" if error.code == "cancelled" else "failed"  # stopped part-way by a cancel
    log.info("job %s: shard %s %s on worker %s", job_id, shard, state, w.id)
    return state


def _run(w: Worker, job_id: str, shard: ShardId, hooks: Hooks) -> str:
    """Compute one shard's statistics, unless done, running elsewhere, or the job ended."""
    st = w.store.get(job_id)
    if st is None:
        return "gone"
    if st.record.state in FINAL_STATES:
        return st.record.state
    out = shard_path(w, job_id, shard)
    if w.staging.shared(job_id, out):
        return "done"
    try:
        with w.store.lease(f"{job_id}:{shard}", w.id):
            return _extract(w, st, shard, out, hooks)
    except LeaseHeld:
        return "elsewhere"  # another live worker runs it; its chord merges


def _extract(w: Worker, st: Stored, shard: ShardId, out: Path, hooks: Hooks) -> str:
    from trustfid.job import open_job
    from trustfid.plugins import RADIOMICS
    from trustfid.shards import extract_shard

    job_id = st.record.id
    if w.store.count_shard_attempt(job_id, str(shard)) > w.limits.max_attempts:
        shard_failed(w, job_id, shard, JobError(
            code="worker_lost", message=f"a shard of the job was started more than {w.limits.max_attempts} "
                                        "times and its worker died each time"))
        return "failed"
    w.store.set_shards(job_id, {str(shard): "running"})
    info = plan_of(w, job_id).set(shard.set_name)
    start, stop = info.shards[shard.k]
    stats = extract_shard(local_source(w, job_id, info), shard.set_name, open_job(st.record.options.score_options()),
                          start, stop, work={RADIOMICS} if shard.work == RADIOMICS_PASS else None,
                          progress=hooks.progress, should_cancel=hooks.should_cancel)
    now = w.store.get(job_id)
    if now is None or now.record.state in FINAL_STATES:  # cancelled, or merged while this worker was cut off
        w.cleanup.clean("score", job_id)  # this worker's copy of its inputs
        return "late"
    if w.staging.shared(job_id, out):
        return "done"  # redone and saved by another worker while this one was cut off
    if not w.store.holds(f"{job_id}:{shard}", w.id):
        # This worker was cut off past the shard's lease, and the shard was given to another worker: that
        # one's statistics count, these are dropped (the same numbers: one seed per shard).
        log.warning("job %s: shard %s passed to worker %s while this worker was cut off; its statistics are "
                    "dropped", job_id, shard, w.store.lease_holder(f"{job_id}:{shard}"))
        return "lost"
    with atomic_path(out) as tmp:  # a shard's statistics appear whole or not at all
        stats.save(tmp, thumbnails=True)
    w.staging.share(job_id, out)  # for a merge on another machine
    now = w.store.get(job_id)
    if now is None or now.record.state in FINAL_STATES:
        # A shard sent twice finished after the job ended (its merge removed the job's objects before
        # this share, or will not run again): remove what it left (a store away now: the sweep does).
        w.cleanup.clean("score", job_id)
        return "late"
    w.store.set_shards(job_id, {str(shard): "done", f"{shard}:done": stop - start})
    return "done"


def shard_failed(w: Worker, job_id: str, shard: ShardId, error: JobError | None) -> None:
    """Record a shard's end other than done: ``error`` None when it stopped for a cancel."""
    fields = ({str(shard): "cancelled"} if error is None else
              {str(shard): "failed", f"{shard}:error": error.model_dump_json()})
    w.store.set_shards(job_id, fields)


def record_progress(w: Worker, job_id: str, shard: ShardId, p: Progress) -> None:
    """One shard's images done into the hash, and the sum over every shard as the job's progress (its own
    key: the record is not read; never lower than what was shown: a shard delivered again starts from
    zero). No lease fence: each shard holds a lease of its own, and the job's is the merge's."""
    if p.stage != "extracting":
        return
    h = w.store.shards(job_id)
    if "plan" not in h or not w.store.set_shards(job_id, {f"{shard}:done": p.images_done}):
        return  # the job ended and was cleaned up meanwhile
    h[f"{shard}:done"] = str(p.images_done)
    total = ShardPlan.model_validate_json(h["plan"]).images()
    done = sum(int(v) for k, v in h.items() if k.endswith(":done"))
    w.store.write_progress(job_id, "score", Progress(stage="extracting", images_done=done, images_total=total,
                                                     passes=p.passes,
                                                     fraction_done=min(1.0, done / total) if total else None),
                           floor=True)
