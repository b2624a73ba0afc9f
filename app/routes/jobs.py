"""/v1/jobs: submit a scoring job, list the caller's jobs, poll one, read its report, cancel or delete it."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response

from app.errors import ConflictError
from app.http import JobsD, Owner, QueueD, StoreD, cancel_or_delete, owned_response, submit
from app.openapi import deletion, errors, job_callbacks, json_text, submit_body
from trustfid.records import JobList, JobOptions, JobRecord, JobSubmit
from trustfid.schemas import Report

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
SETS = ("real", "generated")
TEXTS = {"options": json_text(JobOptions, "JSON: any score option, plus tags and callback_url")}
FHIR_DOC = ("a FHIR R4 transaction Bundle (application/fhir+json): a Device (trustfid's version, the feature "
            "extractor, its weights' sha256) and one Observation per distance (FID, KID, FRD) with its value, 95% "
            "interval, image counts and trust level with reasons (docs/API.md, \"The report as FHIR\")")


@router.post("", status_code=202, response_model=JobRecord, callbacks=job_callbacks.routes,
             summary="Submit a scoring job (multipart uploads or JSON with URIs / reference ids)",
             openapi_extra=submit_body(JobSubmit, SETS, TEXTS),
             responses=errors(401, 408, 409, 413, 415, 422, 429, 503, s409=(
                 "A set names a reference that is not ready (`reference_not_ready`), or options that differ from "
                 "those its statistics were computed with (`incompatible_options`).")))
async def submit_job(request: Request, jobs: JobsD, owner: Owner):
    return await submit(request, jobs, owner, body_model=JobSubmit, from_json=jobs.submit_job_json,
                        from_upload=jobs.submit_job_upload, set_fields=SETS, text_fields=tuple(TEXTS),
                        collection="jobs")


@router.get("", response_model=JobList, summary="The caller's jobs, newest first",
            responses=errors(401, 422, 503))
def list_jobs(store: StoreD, owner: Owner, tag: Annotated[list[str], Query()] = [],  # noqa: B006 (FastAPI copies it)
              limit: Annotated[int, Query(ge=1, le=1000)] = 50):
    return JobList(jobs=[s.record for s in store.list(owner, "score", tags=tag or None, limit=limit)])


@router.get("/{job_id}", response_model=JobRecord, summary="State and progress of a job",
            responses=errors(401, 404, 422, 503))
async def get_job(job_id: str, store: StoreD, queue: QueueD, owner: Owner):
    return await owned_response(store, queue.name, job_id, owner, "score")


@router.get("/{job_id}/report", response_model=Report,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}},
                                         "application/fhir+json": {"schema": {
                                             "type": "object", "description": FHIR_DOC}}}},
                       **errors(401, 404, 409, 422, 503, s409=(
                           "The job has not succeeded (`not_ready`, `job_failed`, `job_cancelled`) or its report "
                           "has expired (`report_expired`)."))},
            summary="The report (409 until the job succeeded); ?format=html for a page a person reads, "
                    "?format=fhir for FHIR R4")
def get_report(job_id: str, store: StoreD, owner: Owner,
               format: Annotated[Literal["json", "html", "fhir"], Query(
                   description="json: the Report; html: one self-contained page; fhir: " + FHIR_DOC)] = "json"):
    rec = store.get_owned(job_id, owner, "score").record
    if rec.state != "succeeded":
        detail = f" ({rec.error.code}: {rec.error.message})" if rec.error else ""
        raise ConflictError(f"job {job_id} is {rec.state}; the report exists once it succeeded{detail}",
                            code="not_ready" if rec.state in ("queued", "running") else f"job_{rec.state}")
    raw = store.get_report(job_id)
    if raw is None:
        raise ConflictError(f"the report of job {job_id} has expired", code="report_expired")
    if format == "html":
        from app.report_html import render

        return HTMLResponse(render(rec, Report.model_validate_json(raw)))
    if format == "fhir":
        from trustfid.fhir import to_json

        return Response(to_json(Report.model_validate_json(raw), job_id), media_type="application/fhir+json")
    return Response(raw, media_type="application/json")


@router.delete("/{job_id}", status_code=204, responses=deletion(JobRecord, "its report and files"),
               summary="Cancel a queued/running job (202 with the record) or delete a finished one (204)")
def delete_job(job_id: str, jobs: JobsD, owner: Owner):
    return cancel_or_delete(jobs, owner, job_id, "score")
