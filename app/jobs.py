"""What the API does, over the service's parts (the routes in app/routes/ only translate HTTP): accept
a job or a reference from staged uploads or JSON, cancel or delete one; and the series of a tag.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from pydantic import ValidationError

from app.errors import ConflictError, NotFoundError, UnavailableError
from app.ingest.multipart import MultipartStager, parse_json_field
from app.ingest.screening import StagedSet, check_set
from app.queue import TASK_REFERENCE, TASK_SCORE
from app.services import Services
from app.store import Finish, Store, Stored, new_id
from trustfid.errors import InputError
from trustfid.records import (
    FINAL_STATES,
    InputInfo,
    InputRef,
    JobOptions,
    JobRecord,
    JobSubmit,
    ReferenceRecord,
    ReferenceSubmit,
    Series,
    SeriesPoint,
)
from trustfid.schemas import ScoreOptions, validation_message
from trustfid.stats import merge_options


def parse_options(raw: dict, model=JobOptions):
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise InputError(f"options: {validation_message(e)}", code="bad_options") from None


def _job_options(sent: JobOptions | None, infos: dict, ref_options: dict) -> JobOptions:
    """A job on registered references scores with their settings: the options the caller sent (only
    those it named) completed with each reference's; a number-changing option that differs from a
    reference's statistics is refused now (409 incompatible_options), not after the job ran. Tags,
    callback_url and the options that do not touch the statistics may be set freely."""
    chosen = sent.model_dump(include=sent.model_fields_set) if sent is not None else {}
    for side, options in ref_options.items():
        chosen = merge_options(chosen, options.model_dump(), f"reference {infos[side].reference_id} ({side})")
    return JobOptions(**chosen)


class Jobs:
    """Submissions, cancels and deletes of jobs and references: the store, staging, queue and input
    policy of the service core, and the per-key limit on submissions per minute."""

    def __init__(self, services: Services, rate_limit_per_minute: int):
        self.store: Store = services.store
        self.staging = services.staging
        self.queue = services.queue
        self.cleanup = services.cleanup
        self.inputs = services.inputs
        self.rate_limit_per_minute = rate_limit_per_minute

    def check_rate(self, owner: str) -> None:
        """Refuse early when the key is already over its limit; the slot itself is taken atomically when
        the submission is accepted, so refused submissions never use up the quota."""
        self.store.reserve_submission(owner, self.rate_limit_per_minute, take=False)

    # --- inputs -------------------------------------------------------------------------------------
    def _resolve_ref(self, owner: str, side: str, ref: InputRef):
        """(InputInfo, path or URI for the worker, reference options or None) for one JSON input."""
        if ref.reference_id is not None:
            try:
                st = self.store.get_owned(ref.reference_id, owner, "reference")
            except NotFoundError:
                raise InputError(f"{side}: no reference {ref.reference_id!r} for this API key",
                                 code="unknown_reference") from None
            if st.record.state != "succeeded":
                raise ConflictError(f"{side}: reference {ref.reference_id!r} is {st.record.state}, not ready",
                                    code="reference_not_ready")
            info = InputInfo(kind="reference", reference_id=ref.reference_id, files=st.record.images)
            return info, "reference:" + ref.reference_id, st.record.options
        files = self.inputs.uris.check_input(ref.uri, side)
        return InputInfo(kind="uri", uri=ref.uri, files=files), "uri:" + ref.uri, None

    def _uploaded(self, staged: StagedSet, side: str, root):
        """A checked upload, and its place for the worker: ``staged:`` + its path in the record's staging
        folder, which the worker finds in its own data_dir (pulled from the object store when there is one)."""
        path = check_set(staged, self.inputs.limits, side)
        rel = path.relative_to(root).as_posix()
        return InputInfo(kind="upload", files=len(staged.files), bytes=staged.bytes), "staged:" + rel

    def _form_side(self, owner: str, stager: MultipartStager, side: str):
        """One set of a multipart form: uploaded files, or a text field with JSON {"reference_id"} / {"uri"}."""
        text, staged = stager.texts.get(side), stager.sets.get(side)
        if text is not None and staged is not None:
            raise InputError(f"{side}: send files or a reference, not both", code="bad_field")
        if staged is not None:
            return (*self._uploaded(staged, side, stager.dest), None)
        if text is None:
            raise InputError(f"the form has no field {side!r}", code="missing_field")
        try:
            ref = InputRef.model_validate(parse_json_field(text, side, code="bad_field"))
        except InputError:
            raise InputError(f"{side}: expected uploaded files (file parts with a file name, e.g. curl -F "
                             f"{side}=@photo.png) or a JSON object {{\"reference_id\": ...}} or {{\"uri\": ...}}; got "
                             "a text field that is neither (a file sent without a file name arrives as text)",
                             code="bad_field") from None
        except ValidationError as e:
            raise InputError(f"{side}: {validation_message(e)}", code="invalid_request") from None
        return self._resolve_ref(owner, side, ref)

    # --- accepting ----------------------------------------------------------------------------------
    def _store_and_enqueue(self, st: Stored, task: str):
        """Accept a submission: take its rate-limit slot, write the record, then queue its task. A record
        whose task could not be queued is removed and its slot given back, so an accepted (202) record
        always has a task that will end it, and only accepted submissions count against the limit.
        Staged uploads go to the object store (when there is one) before the record exists: a store that
        cannot take them refuses the submission (503) with nothing accepted."""
        token = self.store.reserve_submission(st.owner, self.rate_limit_per_minute)
        st.queue = self.queue.name  # whose workers queue it again if its worker dies (Store.orphans)
        created = False
        try:
            self.staging.push(st.record.id)
            self.store.create(st)
            created = True
            self.queue.send(task, st.record.id)
        except Exception:
            try:
                self.cleanup.ending(st.record.kind, st.record.id, lambda: created and self.store.delete(st))
                self.store.refund_submission(st.owner, token)
            except UnavailableError:  # Redis away: nothing can be marked; remove what can be removed now
                self.staging.discard(st.record.id)
            raise
        return st.record

    def _check_metrics(self, options: ScoreOptions) -> None:
        """An FRD the live workers cannot compute is refused now (422), not failed later. With no live
        worker the job is queued: the worker that takes it fails it with the same error if it lacks FRD."""
        if "frd" not in options.metrics and "frd:auto" not in options.metrics:
            return
        alive = self.store.workers_alive(self.queue.name)
        if alive and not self.store.workers_alive(self.queue.name, "frd"):
            raise InputError(f"metrics {options.metrics} ask for the FRD, but none of the {len(alive)} live workers "
                             "can compute it (pyradiomics is not installed there): install the medical extra on the "
                             "workers (scripts/setup.sh engine,embedded,medical; the Dockerfile's worker image has "
                             "it) or leave frd out of metrics", code="frd_unavailable")

    def _create_job(self, owner: str, job_id: str, infos: dict, paths: dict, options: JobOptions) -> JobRecord:
        self._check_metrics(options.score_options())
        if options.callback_url:
            self.inputs.uris.check_callback_url(options.callback_url)
        rec = JobRecord(id=job_id, created_at=time.time(), real=infos["real"], generated=infos["generated"],
                        options=options)
        return self._store_and_enqueue(Stored(owner=owner, paths=paths, record=rec), TASK_SCORE)

    def submit_job_json(self, owner: str, body: JobSubmit) -> JobRecord:
        infos, paths, ref_options = {}, {}, {}
        for side in ("real", "generated"):
            infos[side], paths[side], opts = self._resolve_ref(owner, side, getattr(body, side))
            if opts is not None:
                ref_options[side] = opts
        options = _job_options(body.options, infos, ref_options)
        return self._create_job(owner, new_id(), infos, paths, options)

    def submit_job_upload(self, owner: str, job_id: str, stager: MultipartStager) -> JobRecord:
        raw_options = stager.texts.get("options")  # checked first: it is cheap, screening an archive is not
        sent = None if raw_options is None else parse_options(parse_json_field(raw_options, "options"))
        infos, paths, ref_options = {}, {}, {}
        for side in ("real", "generated"):
            infos[side], paths[side], opts = self._form_side(owner, stager, side)
            if opts is not None:
                ref_options[side] = opts
        options = _job_options(sent, infos, ref_options)
        return self._create_job(owner, job_id, infos, paths, options)

    def _create_reference(self, owner: str, ref_id: str, info: InputInfo, path: str, name: str | None,
                          options: ScoreOptions) -> ReferenceRecord:
        self._check_metrics(options)
        rec = ReferenceRecord(id=ref_id, created_at=time.time(), name=name, source=info, options=options)
        return self._store_and_enqueue(Stored(owner=owner, paths={"source": path}, record=rec), TASK_REFERENCE)

    def submit_reference_json(self, owner: str, body: ReferenceSubmit) -> ReferenceRecord:
        if body.source.reference_id is not None:
            raise InputError("source: a reference is made from a uri or an upload", code="bad_source")
        info, path, _ = self._resolve_ref(owner, "source", body.source)
        return self._create_reference(owner, new_id(), info, path, body.name, body.options or ScoreOptions())

    def submit_reference_upload(self, owner: str, ref_id: str, stager: MultipartStager) -> ReferenceRecord:
        options = parse_options(parse_json_field(stager.texts.get("options"), "options"), ScoreOptions)
        info, path, _ = self._form_side(owner, stager, "source")
        if info.kind == "reference":
            raise InputError("source: a reference is made from a uri or an upload", code="bad_source")
        name = stager.texts.get("name") or None
        return self._create_reference(owner, ref_id, info, path, name, options)

    # --- ending -------------------------------------------------------------------------------------
    def cancel_or_delete(self, owner: str, record_id: str, kind: str) -> Stored | None:
        """Cancel a queued/running job or reference (returns the cancelled record), or delete a
        finished one with its report and files (returns None)."""
        st = self.store.get_owned(record_id, owner, kind)
        if st.record.state == "running":  # its worker stops at its next check and cleans up after it
            self.store.request_cancel(record_id)
            self.cleanup.mark(kind, record_id)  # should that worker die first, a sweep does
            return self.store.update(record_id, Finish("cancelled", error=None))
        if st.record.state not in FINAL_STATES:  # queued: nothing reads its inputs yet
            self.store.request_cancel(record_id)
            return self.cleanup.ending(kind, record_id,
                                       lambda: self.store.update(record_id, Finish("cancelled", error=None)))
        self.cleanup.ending(kind, record_id, lambda: self.store.delete(st))
        return None


# --- series -------------------------------------------------------------------------------------


def encode_cursor(step: float, job_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([step, job_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        step, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if isinstance(step, (int, float)) and not isinstance(step, bool) and isinstance(job_id, str):
            return float(step), job_id
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        pass
    raise InputError("cursor: not a cursor this API returned; pass next_cursor from the previous page unchanged",
                     code="bad_cursor")


def _point(rec: JobRecord, report_json: str | None) -> SeriesPoint:
    if "fid_ci95" in rec.model_fields_set:
        ci95 = rec.fid_ci95
    else:  # a job that ended before records carried the interval: its report's
        ci95 = (json.loads(report_json).get("fid_bootstrap") or {}).get("ci95") if report_json else None
    h = rec.headline
    frd_ci95 = h.frd_ci95 if h is not None else None
    return SeriesPoint(step=rec.options.step(), fid=rec.fid, fid_ci95_low=ci95[0] if ci95 else None,
                       fid_ci95_high=ci95[1] if ci95 else None, fid_mc_std=rec.fid_mc_std,
                       trust_level=rec.trust_level, frd=h.frd if h is not None else None,
                       frd_ci95_low=frd_ci95[0] if frd_ci95 else None, frd_ci95_high=frd_ci95[1] if frd_ci95 else None,
                       **({k: getattr(h, k) for k in ("precision", "recall", "density", "coverage")} if h else {}),
                       job_id=rec.id, created_at=rec.created_at, finished_at=rec.finished_at)


def series(store: Store, owner: str, tag: str, *, cursor: str | None = None, since: float | None = None,
           limit: int = 100) -> Series:
    """The caller's succeeded jobs carrying ``tag`` and a numeric ``step=`` tag, ordered by (step, job id),
    ``limit`` per page; with ``since``, only jobs that finished at or after that time (unix seconds). Every
    number of a point is in its record: no report is read, except that of a job that ended before records
    carried ``fid_ci95`` (they expire with the record TTL)."""
    after = decode_cursor(cursor) if cursor else None
    found: list[tuple[float, JobRecord]] = []
    for step, st in store.series(owner, tag, after):
        rec = st.record
        no_result = rec.fid is None and (rec.headline is None or rec.headline.frd is None)
        if rec.state != "succeeded" or no_result or (since is not None and rec.finished_at < since):
            continue
        found.append((step, rec))
        if len(found) > limit:  # one more than a page: there is a next page
            break
    page = found[:limit]
    older = [rec.id for _, rec in page if "fid_ci95" not in rec.model_fields_set]
    reports = dict(zip(older, store.get_reports(older)))
    points = [_point(rec, reports.get(rec.id)) for _, rec in page]
    next_cursor = None
    if len(found) > limit:
        step, rec = page[-1]
        next_cursor = encode_cursor(step, rec.id)
    return Series(tag=tag, points=points, next_cursor=next_cursor)
