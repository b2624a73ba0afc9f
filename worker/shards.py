"""Sharded jobs (option ``shard_size``): plain functions behind the Celery tasks of worker/tasks.py.

The worker that picks up a sharded score job plans it (``plan_job``): each image set is split into
shards of ``shard_size`` candidates; the plan and every shard's state go into one Redis hash
(app/store/leases.py). worker/tasks.py then sends a Celery chord: one ``score_shard`` task per
shard, any worker takes any of them, and the ``merge_shards`` callback. A shard (``run_shard``)
extracts its candidates with ``first_index`` = its start (trustfid/shards.py) and saves its statistics
as a pickle-free .npz in the job's staging folder; the callback (``build_report``) merges them in shard
order and builds the report as the unsharded job would.

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
- Progress: every shard writes its images done into the hash; the job record shows their sum over
  all shards of both sets (never decreasing).
- Cancel: every shard checks the job's cancel flag between batches, as a job does; a shard delivered
  after the job ended does nothing.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from app import staging
from app.settings import Settings
from app.store import LeaseHeld, Store, Stored
from trustfid.records import FINAL_STATES, JobError
from trustfid.schemas import Progress, Report

SETS = ("real", "generated")


def shard_path(settings: Settings, job_id: str, shard: str) -> Path:
    """Where shard "<set>:<k>" keeps its statistics: the job's staging folder."""
    set_name, k = shard.split(":")
    return staging.local_dir(settings, job_id) / "shards" / f"{set_name}-{int(k):05d}.npz"


def plan_job(store: Store, settings: Settings, st: Stored, sources: dict[str, Path]) -> list[str]:
    """Split each image set of a job into shards and record the plan; returns the shards to run. A set
    given as saved statistics (a reference) is not split: the merge reads it."""
    from trustfid.shards import count_candidates, is_image_source, plan

    options = st.record.options.score_options()
    size = st.record.options.shard_size
    work = staging.local_dir(settings, st.record.id)
    layout = {}
    for set_name in SETS:
        source = sources[set_name]
        shards = plan(count_candidates(source, options), size) if is_image_source(source) else []
        layout[set_name] = {"path": str(source), "shards": shards}
        if source.is_relative_to(work):  # where every worker finds it in its own staging folder
            relative = source.relative_to(work)
            layout[set_name]["relative"] = relative.as_posix()
            if not st.paths[set_name].startswith("staged:"):  # fetched or a reference: publish it
                staging.share(settings, st.record.id, work / relative.parts[0])
    todo = [f"{s}:{k}" for s in SETS for k in range(len(layout[s]["shards"]))]
    store.set_shards(st.record.id, {"plan": json.dumps(layout), **{shard: "queued" for shard in todo}})
    return todo


def local_source(settings: Settings, job_id: str, info: dict) -> Path:
    """One set's input on this worker: in its own staging folder (pulled from the object store when the
    planning worker was another machine), or the planner's path where the set is not in a staging
    folder (a record of an older release)."""
    if "relative" not in info:
        return Path(info["path"])
    return staging.pull(settings, job_id) / info["relative"]


def planned(store: Store, job_id: str) -> bool:
    return "plan" in store.shards(job_id)


def pending(store: Store, settings: Settings, job_id: str) -> list[str]:
    """The shards of a planned job whose statistics are not saved yet, to send again; those not running
    under a live lease are marked queued (one that is gets a message too, which leaves it to its worker)."""
    h = store.shards(job_id)
    layout = json.loads(h["plan"])
    todo = [f"{s}:{k}" for s in SETS for k in range(len(layout[s]["shards"]))
            if not staging.shared(settings, job_id, shard_path(settings, job_id, f"{s}:{k}"))]
    lost = [shard for shard in todo if h.get(shard) != "running" or not store.lease_holder(f"{job_id}:{shard}")]
    store.set_shards(job_id, {"merge": "", **{shard: "queued" for shard in lost}})
    return todo


def run_shard(store: Store, settings: Settings, job_id: str, shard: str, worker_id: str, cb) -> str:
    """Compute one shard's statistics (unless done, or running elsewhere, or the job ended). ``cb`` gives
    should_cancel and progress (worker/tasks.py). Errors propagate; the task records them with
    ``shard_failed``."""
    st = store.get(job_id)
    if st is None:
        return "gone"
    if st.record.state in FINAL_STATES:
        return st.record.state
    out = shard_path(settings, job_id, shard)
    if staging.shared(settings, job_id, out):
        return "done"
    try:
        with store.lease(f"{job_id}:{shard}", worker_id):
            return _run_leased(store, settings, st, shard, out, cb)
    except LeaseHeld:
        return "elsewhere"  # another live worker runs it; its chord merges


def _run_leased(store: Store, settings: Settings, st: Stored, shard: str, out: Path, cb) -> str:
    from trustfid.pipeline import load_extractor
    from trustfid.shards import extract_shard

    job_id = st.record.id
    if store.count_shard_attempt(job_id, shard) > settings.max_attempts:
        shard_failed(store, job_id, shard, JobError(
            code="worker_lost", message=f"a shard of the job was started more than {settings.max_attempts} "
                                        "times and its worker died each time"))
        return "failed"
    store.set_shards(job_id, {shard: "running"})
    set_name, k = shard.split(":")
    layout = json.loads(store.shards(job_id)["plan"])[set_name]
    start, stop = layout["shards"][int(k)]
    ex, options, _ = load_extractor(st.record.options.score_options())
    stats = extract_shard(local_source(settings, job_id, layout), set_name, options, start, stop, extractor=ex, progress=cb.progress,
                          should_cancel=cb.should_cancel)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    stats.save(tmp, thumbnails=True)
    os.replace(tmp, out)  # a shard's statistics appear whole or not at all
    staging.share(settings, job_id, out)  # for a merge on another machine
    now = store.get(job_id)
    if now is None or now.record.state in FINAL_STATES:
        # A shard sent twice finished after the job ended (its merge removed the job's objects before
        # this share, or will not run again): remove what it left.
        staging.discard(settings, job_id)
        return "late"
    store.set_shards(job_id, {shard: "done", f"{shard}:done": stop - start})
    return "done"


def shard_failed(store: Store, job_id: str, shard: str, error: JobError | None) -> None:
    """Record a shard's end other than done: ``error`` None when it stopped for a cancel."""
    fields = {shard: "cancelled"} if error is None else {shard: "failed", f"{shard}:error": error.model_dump_json()}
    store.set_shards(job_id, fields)


def record_progress(store: Store, job_id: str, shard: str, images_done: int, passes: int) -> None:
    """One shard's images done into the hash, and the sum over every shard into the job record (never
    lower than what the record showed: a shard delivered again starts from zero)."""
    h = store.shards(job_id)
    if "plan" not in h:
        return  # the job ended and was cleaned up meanwhile
    store.set_shards(job_id, {f"{shard}:done": images_done})
    h[f"{shard}:done"] = str(images_done)
    layout = json.loads(h["plan"])
    total = sum(b - a for s in SETS for a, b in layout[s]["shards"])
    done = sum(int(v) for k, v in h.items() if k.endswith(":done"))

    def f(s: Stored):
        if s.record.state != "running":
            return None
        old = s.record.progress
        before = old.images_done if old is not None and old.stage == "extracting" else 0
        s.record.progress = Progress(stage="extracting", images_done=max(done, before), images_total=total,
                                     passes=passes)
        return s
    store.update(job_id, f)


def outcome(store: Store, settings: Settings, job_id: str) -> tuple[str, JobError | None]:
    """Whether the shards are all done ("ready"), one failed ("failed", its error, the first in shard
    order), or some are still to come ("waiting")."""
    h = store.shards(job_id)
    layout = json.loads(h["plan"])
    shards = [f"{s}:{k}" for s in SETS for k in range(len(layout[s]["shards"]))]
    for shard in shards:
        if h.get(shard) == "failed" and f"{shard}:error" in h:
            return "failed", JobError.model_validate_json(h[f"{shard}:error"])
    if all(staging.shared(settings, job_id, shard_path(settings, job_id, shard)) for shard in shards):
        return "ready", None
    return "waiting", None


def build_report(store: Store, settings: Settings, st: Stored, cb) -> Report:
    """The job's report from its shards' statistics, fetched here and merged in shard order
    (trustfid/shards.py), then built as every report is (pipeline.report_from_stats)."""
    from trustfid.pipeline import extract, load_extractor, report_from_stats
    from trustfid.shards import merge_set
    from trustfid.stats import load_stats

    t0 = time.perf_counter()
    ex, options, device = load_extractor(st.record.options.score_options())
    load_s = time.perf_counter() - t0
    layout = json.loads(store.shards(st.record.id)["plan"])
    sides = {}
    for set_name in SETS:
        info = layout[set_name]
        source = local_source(settings, st.record.id, info)
        if not info["shards"]:  # saved statistics: read as the unsharded job reads them
            sides[set_name] = extract(source, set_name, options, extractor=ex)
            continue
        files = [staging.fetch(settings, st.record.id, shard_path(settings, st.record.id, f"{set_name}:{k}"))
                 for k in range(len(info["shards"]))]
        sides[set_name] = merge_set(source, set_name, options, [tuple(s) for s in info["shards"]],
                                    (load_stats(f) for f in files), extractor=ex, should_cancel=cb.should_cancel)
    extract_s = max(time.time() - (st.record.started_at or time.time()) - load_s, 1e-9)
    return report_from_stats(sides["real"], sides["generated"], options, ex, device, load_s=load_s,
                             extract_s=extract_s, progress=cb.progress)
