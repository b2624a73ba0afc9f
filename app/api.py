"""The HTTP front end: thin routes over app/jobs.py and app/store.py. Run it with
``uvicorn --factory app.api:create_app`` (or `trustfid serve`). OpenAPI at /docs.

Every error is ``{"error": {"code", "message"}}`` with a fitting status; user input never gives 500.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import ingest, jobs
from app.auth import authenticate
from app.errors import ConflictError, RateLimitError, UnavailableError
from app.settings import Settings, get_settings
from app.store import Store, connect, new_id
from trustfid.errors import (
    InputError,
    TooLargeError,
    TrustfidError,
    UnsupportedTypeError,
)
from trustfid.records import (
    JobList,
    JobRecord,
    JobSubmit,
    ReferenceList,
    ReferenceRecord,
    ReferenceSubmit,
)
from trustfid.schemas import Report

log = logging.getLogger("trustfid.api")
MAX_JSON_BYTES = 1 << 20


def error_response(exc: TrustfidError) -> JSONResponse:
    headers = {}
    if isinstance(exc, RateLimitError):
        headers["Retry-After"] = str(exc.retry_after)
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


def store_dep(request: Request) -> Store:
    st = request.app.state.store
    if st is None:
        raise UnavailableError("no Redis configured (TRUSTFID_REDIS_URL)")
    return st


def owner_dep(request: Request) -> str:
    return authenticate(request.app.state.settings, request.headers.get("authorization"),
                        request.client.host if request.client else None)


StoreD = Annotated[Store, Depends(store_dep)]
Owner = Annotated[str, Depends(owner_dep)]


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.store = Store(connect(settings.redis_url), settings) if settings.redis_url else None
        yield
        if app.state.store is not None:
            app.state.store.r.close()

    app = FastAPI(title="trustfid", version="1", lifespan=lifespan,
                  description="FID with Monte-Carlo-dropout uncertainty, as a service. Errors are "
                  '`{"error": {"code", "message"}}`.')
    app.state.settings = settings
    app.state.store = None

    # --- errors -------------------------------------------------------------------------------
    @app.exception_handler(TrustfidError)
    async def _trustfid_error(request: Request, exc: TrustfidError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        msg = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e['msg']}" for e in exc.errors())
        return error_response(InputError(msg or "invalid request", code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(TrustfidError(str(exc.detail), code=codes.get(exc.status_code, "http_error"),
                                            status=exc.status_code))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(TrustfidError("internal error; see the server log", code="internal", status=500))

    def accepted(record, path: str) -> JSONResponse:
        return JSONResponse(record.model_dump(mode="json"), status_code=202, headers={"Location": path})

    async def read_json(request: Request, model):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_JSON_BYTES:
                raise TooLargeError(f"JSON body larger than {MAX_JSON_BYTES} bytes")
        try:
            return model.model_validate_json(bytes(body))
        except ValidationError as e:
            raise InputError(jobs.validation_message(e), code="invalid_request") from None

    async def stage(request: Request, record_id: str, set_fields, text_fields) -> ingest.MultipartStager:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload_bytes:
            raise TooLargeError(f"upload larger than {settings.max_upload_bytes} bytes", code="upload_too_large")
        dest = jobs.staging_dir(settings, record_id)
        stager = ingest.MultipartStager(request.headers.get("content-type", ""), dest, settings,
                                        set_fields=set_fields, text_fields=text_fields)
        try:
            async for chunk in request.stream():
                stager.write(chunk)
            stager.finish()
        except BaseException:
            stager.abort()
            ingest.remove_tree(dest)
            raise
        return stager

    def content_kind(request: Request) -> str:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            return "json"
        if ctype == "multipart/form-data":
            return "multipart"
        raise UnsupportedTypeError("send multipart/form-data (uploads) or application/json (URIs, references)")

    # --- jobs ---------------------------------------------------------------------------------
    async def submit(request: Request, store: Store, owner: str, body_model, from_json, from_upload,
                     set_fields: tuple, text_fields: tuple, collection: str):
        """POST a job or a reference: JSON (URIs / reference ids) or multipart uploads staged first."""
        kind = content_kind(request)
        await run_in_threadpool(store.hit_rate, owner, settings.rate_limit_per_minute)
        if kind == "json":
            body = await read_json(request, body_model)
            rec = await run_in_threadpool(from_json, store, settings, owner, body)
        else:
            record_id = new_id()
            stager = await stage(request, record_id, set_fields, text_fields)
            try:
                rec = await run_in_threadpool(from_upload, store, settings, owner, record_id, stager)
            except BaseException:
                ingest.remove_tree(jobs.staging_dir(settings, record_id))
                raise
        return accepted(rec, f"/v1/{collection}/{rec.id}")

    @app.post("/v1/jobs", status_code=202, response_model=JobRecord, tags=["jobs"],
              summary="Submit a scoring job (multipart uploads or JSON with URIs / reference ids)")
    async def submit_job(request: Request, store: StoreD, owner: Owner):
        return await submit(request, store, owner, JobSubmit, jobs.submit_job_json, jobs.submit_job_upload,
                            ("real", "generated"), ("options",), "jobs")

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"], summary="The caller's jobs, newest first")
    def list_jobs(store: StoreD, owner: Owner, tag: Annotated[list[str], Query()] = [],
                  limit: Annotated[int, Query(ge=1, le=1000)] = 50):
        return JobList(jobs=[s.record for s in store.list(owner, "score", tags=tag or None, limit=limit)])

    @app.get("/v1/jobs/{job_id}", response_model=JobRecord, tags=["jobs"], summary="State and progress of a job")
    def get_job(job_id: str, store: StoreD, owner: Owner):
        return store.get_owned(job_id, owner, "score").record

    @app.get("/v1/jobs/{job_id}/report", response_model=Report, tags=["jobs"],
             summary="The report (409 until the job succeeded); ?format=html for a page a person reads",
             responses={200: {"content": {"text/html": {}}}})
    def get_report(job_id: str, store: StoreD, owner: Owner,
                   format: Annotated[str, Query(pattern="^(json|html)$")] = "json"):
        st = store.get_owned(job_id, owner, "score")
        rec = st.record
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
        return Response(raw, media_type="application/json")

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], status_code=204,
                summary="Cancel a queued/running job (202 with the record) or delete a finished one (204)",
                responses={202: {"model": JobRecord}})
    def delete_job(job_id: str, store: StoreD, owner: Owner):
        st = jobs.cancel_or_delete(store, settings, owner, job_id, "score")
        if st is None:
            return Response(status_code=204)
        return JSONResponse(st.record.model_dump(mode="json"), status_code=202)

    # --- references ---------------------------------------------------------------------------
    @app.post("/v1/references", status_code=202, response_model=ReferenceRecord, tags=["references"],
              summary="Register a real set: its statistics are computed once, then used by id")
    async def submit_reference(request: Request, store: StoreD, owner: Owner):
        return await submit(request, store, owner, ReferenceSubmit, jobs.submit_reference_json,
                            jobs.submit_reference_upload, ("source",), ("options", "name"), "references")

    @app.get("/v1/references", response_model=ReferenceList, tags=["references"])
    def list_references(store: StoreD, owner: Owner, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
        return ReferenceList(references=[s.record for s in store.list(owner, "reference", limit=limit)])

    @app.get("/v1/references/{ref_id}", response_model=ReferenceRecord, tags=["references"])
    def get_reference(ref_id: str, store: StoreD, owner: Owner):
        return store.get_owned(ref_id, owner, "reference").record

    @app.delete("/v1/references/{ref_id}", tags=["references"], status_code=204,
                responses={202: {"model": ReferenceRecord}})
    def delete_reference(ref_id: str, store: StoreD, owner: Owner):
        st = jobs.cancel_or_delete(store, settings, owner, ref_id, "reference")
        if st is None:
            return Response(status_code=204)
        return JSONResponse(st.record.model_dump(mode="json"), status_code=202)

    # --- operations ---------------------------------------------------------------------------
    @app.get("/healthz", tags=["operations"], summary="The API process is up")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Redis reachable and at least one worker alive")
    def readyz(request: Request):
        store = request.app.state.store
        redis_ok = store is not None and store.ping()
        workers = len(store.workers_alive(settings.queue)) if redis_ok else 0
        ready = redis_ok and workers > 0
        body = {"status": "ready" if ready else "unavailable", "redis": redis_ok, "workers": workers}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse,
             summary="Prometheus text format: jobs by state, queue depth, job duration, images scored")
    def metrics(store: StoreD):
        from app.metrics import render

        return PlainTextResponse(render(store.metrics_snapshot(settings.queue), len(store.workers_alive(settings.queue))),
                                 media_type="text/plain; version=0.0.4")

    return app
