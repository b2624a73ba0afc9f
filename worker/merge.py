"""The end of a sharded job (worker/shards.py): under the job's lease, once every shard is done,
fetch the shards' statistics, merge them in shard order (trustfid/shards.py) and build the report as
every report is built (pipeline.report_from_stats); a failed shard fails the job with its error. With
frd:auto and a reference outside the FID network's domain, the first merge sends the radiomics as a second
round of shards (shards.plan_radiomics) and the job ends at that round's merge."""

from __future__ import annotations

import logging
import time

from app.store import Finish, LeaseHeld, LeaseLost, Stored
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Report

from .errors import job_error
from .hooks import Hooks
from .jobs import end, succeeded
from .process import Worker
from .shard_plan import RADIOMICS_PASS
from .shards import local_source, plan_of, plan_radiomics, planned, send_shards, shard_path

log = logging.getLogger("trustfid.worker")
SECOND_PASS = "radiomics"  # what a merge returns once it has planned frd:auto's radiomics shards


def merge(w: Worker, job_id: str) -> str:
    """Merge a sharded job's shards into its report and end it, under the job's lease; a job ended
    already (cancelled) is cleaned up; one with a shard still to come is left to that shard's chord."""
    try:
        with w.store.lease(job_id, w.id):
            state = _merge(w, job_id)
    except LeaseHeld:
        return "elsewhere"  # another merge (of another chord of this job) runs
    except LeaseLost as e:  # cut off past the lease: the merge sent again by the reaper ends the job
        log.warning("job %s: the merge's lease passed to worker %s; this merge writes nothing", job_id, e.args[0])
        return "lost"
    if state == SECOND_PASS:  # sent once the lease is free, which the second round's merge takes
        send_shards(job_id, [s for s in plan_of(w, job_id).shard_ids() if s.work == RADIOMICS_PASS])
    return state


def _merge(w: Worker, job_id: str) -> str:
    st = w.store.get(job_id)
    if st is None:
        return "gone"
    if not planned(w, job_id):
        return st.record.state  # ended and cleaned up by another merge
    if st.record.state in FINAL_STATES:  # cancelled while its shards ran: clean up after it
        return end(w, st, lambda _: None)
    w.store.set_shards(job_id, {"merge": "started"})
    ready, error = outcome(w, job_id)
    if ready == "waiting":  # a shard runs under another chord, whose merge follows it
        w.store.set_shards(job_id, {"merge": ""})
        return "waiting"
    if error is not None:
        ending = Finish("failed", error=error)
    else:
        images = (st.record.progress.images_total if st.record.progress else None) or 0

        def every_image_done(p):  # the merge's stages keep showing the sum over the shards
            hooks.write_record(p.model_copy(update={"images_done": images, "images_total": images}))

        hooks = Hooks(w.store, job_id, w.limits, write=every_image_done, holder=w.id)
        try:
            result = report(w, st, hooks)
            if result is None:  # frd:auto's radiomics run as shards: their chord's merge ends the job
                return SECOND_PASS
            ending = succeeded(w, job_id, result)
        except Exception as e:
            ending = Finish("failed", error=job_error(e, hooks, w.staging, job_id))
    state = end(w, st, ending)
    log.info("job %s: its shards merged on worker %s; the job %s", job_id, w.id, state)
    return state


def outcome(w: Worker, job_id: str) -> tuple[str, JobError | None]:
    """Whether the shards are all done ("ready"), one failed ("failed", its error, the first in shard
    order), or some are still to come ("waiting")."""
    h = w.store.shards(job_id)
    shards = plan_of(w, job_id).shard_ids()
    for shard in shards:
        if h.get(str(shard)) == "failed" and f"{shard}:error" in h:
            return "failed", JobError.model_validate_json(h[f"{shard}:error"])
    if all(w.staging.shared(job_id, shard_path(w, job_id, shard)) for shard in shards):
        return "ready", None
    return "waiting", None


def report(w: Worker, st: Stored, hooks: Hooks) -> Report | None:
    """The job's report from its shards' statistics, fetched here and merged in shard order; None when
    frd:auto's radiomics are still to compute (planned here as a second round of shards)."""
    from trustfid.timing import recording

    with recording() as clock:  # the report's timing: the merge's own stages (the shards' ran elsewhere)
        return _report(w, st, hooks, clock)


def _report(w: Worker, st: Stored, hooks: Hooks, clock) -> Report | None:
    from trustfid.job import open_job
    from trustfid.pipeline import extract, frd_auto_sets, report_from_stats
    from trustfid.plugins import RADIOMICS
    from trustfid.shards import merge_set

    t0 = time.perf_counter()
    with clock.stage("network_load_s"):
        job = open_job(st.record.options.score_options())
    load_s = time.perf_counter() - t0
    layout = plan_of(w, st.record.id)
    sides, sources = {}, {}
    for set_name in ("real", "generated"):
        info = layout.set(set_name)
        source = sources[set_name] = local_source(w, st.record.id, info)
        if not info.shards:  # saved statistics: read as the unsharded job reads them
            sides[set_name] = extract(source, set_name, job)
            continue
        sides[set_name] = merge_set(source, set_name, job, info.shards, _parts(w, st.record.id, layout, set_name),
                                    should_cancel=hooks.should_cancel)
    # frd:auto learns only now whether the FRD is wanted: its radiomics run in a second round of shards
    second = frd_auto_sets(sides, sources, job)
    if second and not layout.radiomics:
        plan_radiomics(w, st.record.id, layout, second)
        return None
    for set_name in second:
        sides[set_name].radiomics = merge_set(sources[set_name], set_name, job, layout.set(set_name).shards,
                                              _parts(w, st.record.id, layout, set_name, RADIOMICS_PASS),
                                              work={RADIOMICS}, should_cancel=hooks.should_cancel).radiomics
    extract_s = max(time.time() - (st.record.started_at or time.time()) - load_s, 1e-9)
    clock.sets.clear()  # the sets were extracted in their shards: what the merge re-extracted is no set's timing
    return report_from_stats(sides["real"], sides["generated"], job, load_s=load_s, extract_s=extract_s,
                             progress=hooks.progress)


def _parts(w: Worker, job_id: str, layout, set_name: str, work: str = ""):
    """One set's shard statistics of one pass, fetched and read one at a time, in shard order."""
    from trustfid.stats import load_stats

    for shard in layout.shard_ids():
        if shard.set_name == set_name and shard.work == work:
            yield load_stats(w.staging.fetch(job_id, shard_path(w, job_id, shard)))
