"""What the routes share: the error shape, the request dependencies (the service's parts, the caller)
and the one submit path for jobs and references (JSON, or multipart uploads streamed to the staging
store). The routes themselves (app/routes/) only translate HTTP to app/jobs.py."""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from app.auth import authenticate
from app.errors import RateLimitError, RequestTimeoutError, UnavailableError
from app.ingest import InputPolicy
from app.ingest.multipart import MultipartStager
from app.jobs import Jobs
from app.openapi import BEARER
from app.queue import Queue
from app.services import Services
from app.store import Store, new_id
from trustfid.errors import InputError, TooLargeError, TrustfidError, UnsupportedTypeError
from trustfid.schemas import validation_message

log = logging.getLogger("trustfid.api")
MAX_JSON_BYTES = 1 << 20
NO_WORKER = ("no worker is running: the job is queued and kept, and it will run when a worker starts "
             "(GET /readyz shows the workers)")


def error_response(exc: TrustfidError, headers: dict | None = None) -> JSONResponse:
    headers = dict(headers or {})
    if isinstance(exc, RateLimitError):
        headers["Retry-After"] = str(exc.retry_after)
    elif exc.status == 503:
        headers["Retry-After"] = "1"  # a server-side fault; Redis restarts within seconds under `trustfid serve`
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(exc.to_dict(), status_code=exc.status, headers=headers)


# --- dependencies ---------------------------------------------------------------------------------

# Dependencies are async: they do no I/O, and a sync one would cost a thread-pool hop per request.
async def services_dep(request: Request) -> Services:
    return request.app.state.services


async def store_dep(request: Request) -> Store:
    st = request.app.state.services.store
    if st is None:
        raise UnavailableError("no Redis configured (TRUSTFID_REDIS_URL)")
    return st


async def jobs_dep(request: Request, _: Annotated[Store, Depends(store_dep)]) -> Jobs:
    return request.app.state.jobs


async def queue_dep(request: Request) -> Queue:
    return request.app.state.services.queue


async def owner_dep(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> str:
    # BEARER only declares the scheme in the OpenAPI document; authenticate reads the header itself.
    return authenticate(request.app.state.settings, request.headers.get("authorization"),
                        request.client.host if request.client else None)


StoreD = Annotated[Store, Depends(store_dep)]
JobsD = Annotated[Jobs, Depends(jobs_dep)]
QueueD = Annotated[Queue, Depends(queue_dep)]
Owner = Annotated[str, Depends(owner_dep)]


# --- submitting -----------------------------------------------------------------------------------

def record_response(record, status: int = 200, location: str | None = None) -> Response:
    """A record as JSON, serialised once by pydantic (returning the model would have FastAPI validate
    and serialise it again through the response model)."""
    return Response(record.model_dump_json(), status_code=status, media_type="application/json",
                    headers={"Location": location} if location else None)


async def body_chunks(request: Request, inputs: InputPolicy):
    """The request body, chunk by chunk, cut off (408) when the client sends nothing for
    ``upload_idle_timeout_s`` or the whole body takes longer than ``upload_timeout_s``: a stalled
    upload must not hold a staging folder and an open file forever."""
    idle, whole = inputs.upload_idle_timeout_s, inputs.upload_timeout_s
    deadline = time.monotonic() + whole
    chunks = request.stream().__aiter__()
    while True:
        wait = min(idle, deadline - time.monotonic())
        try:
            if wait <= 0:
                raise TimeoutError
            chunk = await asyncio.wait_for(chunks.__anext__(), wait)
        except StopAsyncIteration:
            return
        except TimeoutError:
            why = f"stalled: nothing arrived for {idle:g} s" if wait >= idle else f"took longer than {whole:g} s"
            raise RequestTimeoutError(f"the request body {why}; send it again (a large set is better sent as one "
                                      "archive, or registered once as a reference)") from None
        yield chunk


async def read_json(request: Request, inputs: InputPolicy, model):
    body = bytearray()
    async for chunk in body_chunks(request, inputs):
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise TooLargeError(f"JSON body larger than {MAX_JSON_BYTES} bytes")
    try:
        return model.model_validate_json(bytes(body))
    except ValidationError as e:
        raise InputError(validation_message(e), code="invalid_request") from None


async def stage(request: Request, inputs: InputPolicy, dest, set_fields, text_fields) -> MultipartStager:
    """A multipart body streamed into ``dest`` (the record's staging folder), removed on any failure."""
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > inputs.max_upload_bytes:
        raise TooLargeError(f"upload larger than {inputs.max_upload_bytes} bytes", code="upload_too_large")
    stager = MultipartStager(request.headers.get("content-type", ""), dest, max_bytes=inputs.max_upload_bytes,
                             max_files=inputs.max_files_per_set, set_fields=set_fields, text_fields=text_fields)
    try:
        async for chunk in body_chunks(request, inputs):
            stager.write(chunk)
        stager.finish()
    except BaseException:
        stager.abort()
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return stager


def content_kind(request: Request) -> str:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        return "json"
    if ctype == "multipart/form-data":
        return "multipart"
    raise UnsupportedTypeError("send multipart/form-data (uploads) or application/json (URIs, references)")


async def submit(request: Request, jobs: Jobs, owner: str, *, body_model, from_json, from_upload,
                 set_fields: tuple, text_fields: tuple, collection: str) -> Response:
    """POST a job or a reference: JSON (URIs / reference ids) or multipart uploads staged first;
    ``from_json(owner, body)`` and ``from_upload(owner, record_id, stager)`` accept it (app/jobs.py)."""
    kind = content_kind(request)
    await run_in_threadpool(jobs.check_rate, owner)
    if kind == "json":
        body = await read_json(request, jobs.inputs, body_model)
        rec = await run_in_threadpool(from_json, owner, body)
    else:
        record_id = new_id()
        dest = jobs.staging.local_dir(record_id)
        stager = await stage(request, jobs.inputs, dest, set_fields, text_fields)
        try:
            rec = await run_in_threadpool(from_upload, owner, record_id, stager)
        except BaseException:
            # The local copy; jobs.py removes what reached the object store before a later step failed.
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return record_response(with_notice(rec, jobs.store, jobs.queue.name), 202, f"/v1/{collection}/{rec.id}")


def with_notice(record, store: Store, queue: str):
    """The record as a response: while it waits and no worker is alive, it says so."""
    if record.state == "queued" and not store.workers_alive(queue):
        record = record.model_copy(update={"notice": NO_WORKER})
    return record


async def owned_response(store: Store, queue: str, record_id: str, owner: str, kind: str) -> Response:
    """GET of a job or reference: the caller's record (404 for anyone else's), with its notice."""
    record = (await store.get_owned_async(record_id, owner, kind)).record
    if record.state == "queued" and not await store.any_worker_alive_async(queue):
        record = record.model_copy(update={"notice": NO_WORKER})
    return record_response(record)


def cancel_or_delete(jobs: Jobs, owner: str, record_id: str, kind: str) -> Response:
    """DELETE of a job or a reference: 202 with the cancelled record, or 204 once deleted."""
    st = jobs.cancel_or_delete(owner, record_id, kind)
    return Response(status_code=204) if st is None else record_response(st.record, 202)
