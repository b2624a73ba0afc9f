"""The end of a sharded job (worker/shards.py): under the job's lease, once every shard is done,
fetch the shards' statistics, merge them in shard order (trustfid/shards.py) and build the report as
every report is built (pipeline.report_from_stats); a failed shard fails the job with its error."""

from __future__ import annotations

import time

from app.store import LeaseHeld, Stored, finish
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Report

from .errors import job_error
from .hooks import Hooks
from .jobs import end, succeeded
from .process import Worker
from .shards import local_source, plan_of, planned, shard_path


def merge(w: Worker, job_id: str) -> str:
    """Merge a sharded job's shards into its report and end it, under the job's lease; a job ended
    already (cancelled) is cleaned up; one with a shard still to come is left to that shard's chord."""
    try:
        with w.store.lease(job_id, w.id):
            return _merge(w, job_id)
    except LeaseHeld:
        return "elsewhere"  # another merge (of another chord of this job) runs


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
        ending = finish("failed", error=error)
    else:
        images = (st.record.progress.images_total if st.record.progress else None) or 0

        def every_image_done(p):  # the merge's stages keep showing the sum over the shards
            hooks.write_record(p.model_copy(update={"images_done": images, "images_total": images}))

        hooks = Hooks(w.store, job_id, w.limits, write=every_image_done)
        try:
            ending = succeeded(w, job_id, report(w, st, hooks))
        except Exception as e:
            ending = finish("failed", error=job_error(e, hooks, w.staging, job_id))
    return end(w, st, ending)


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


def report(w: Worker, st: Stored, hooks: Hooks) -> Report:
    """The job's report from its shards' statistics, fetched here and merged in shard order."""
    from trustfid.pipeline import extract, frd_auto, job_extractor, report_from_stats
    from trustfid.shards import merge_set
    from trustfid.stats import load_stats

    t0 = time.perf_counter()
    ex, options, device = job_extractor(st.record.options.score_options())
    load_s = time.perf_counter() - t0
    layout = plan_of(w, st.record.id)
    sides, sources = {}, {}
    for set_name in ("real", "generated"):
        info = layout.set(set_name)
        source = sources[set_name] = local_source(w, st.record.id, info)
        if not info.shards:  # saved statistics: read as the unsharded job reads them
            sides[set_name] = extract(source, set_name, options, extractor=ex)
            continue
        files = [w.staging.fetch(st.record.id, shard_path(w, st.record.id, shard))
                 for shard in layout.shard_ids() if shard.set_name == set_name]
        sides[set_name] = merge_set(source, set_name, options, info.shards, (load_stats(f) for f in files),
                                    extractor=ex, should_cancel=hooks.should_cancel)
    # frd:auto learns only now whether the FRD is wanted: its radiomics run here, over each whole set
    frd_auto(sides, sources, options, ex, progress=hooks.progress, should_cancel=hooks.should_cancel)
    extract_s = max(time.time() - (st.record.started_at or time.time()) - load_s, 1e-9)
    return report_from_stats(sides["real"], sides["generated"], options, ex, device, load_s=load_s,
                             extract_s=extract_s, progress=hooks.progress)
