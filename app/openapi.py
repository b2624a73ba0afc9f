"""The OpenAPI document (/openapi.json, rendered at /docs and /redoc). FastAPI infers most of it from the
routes; what it cannot see is declared here, once, and used by the routes:

- ``errors(...)``: the error responses, all in the one shape the API answers (``ErrorResponse``), for
  every status a route can return;
- ``submit_body(...)``: the request bodies of POST /v1/jobs and /v1/references, which the routes read
  as a stream (app/http.py) so FastAPI never parses them: JSON and multipart/form-data;
- ``BEARER``: the API-key scheme, a dependency of every route that needs a key;
- ``job_callbacks``: what a job's ``callback_url`` receives, with its signature headers;
- ``install(app)``: puts the models these name into ``components.schemas``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, FastAPI, Header
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from trustfid.records import ErrorResponse, JobRecord, JobSubmit, ReferenceSubmit

REF = "#/components/schemas/{model}"

BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer",
    description="`Authorization: Bearer <API key>`, one of TRUSTFID_API_KEYS. A server without keys accepts "
    "only clients on its loopback interface, without this header.")

WHEN = {
    401: "No API key, or one the service does not know (`unauthorized`); a keyless server called from "
         "another machine.",
    404: "No such job or reference for this API key (`not_found`); other keys' records are invisible.",
    408: "The request body stalled or took too long to arrive (`request_timeout`); send it again.",
    409: "Conflict with the state of a job or reference.",
    413: "Over a size limit: the body, an image, the number of images, an archive's expansion "
         "(`upload_too_large`, `too_large`, `archive_bomb`, `too_many_members`, `too_many_files`).",
    415: "A body that is neither multipart/form-data nor JSON, or a file that is not an image, archive or "
         "array (`unsupported_type`).",
    422: "A malformed or invalid request; the message names the field (`invalid_request`, `bad_options`, ...).",
    429: "Too many submissions in a minute for this API key (`rate_limited`); `Retry-After` says when to retry.",
    503: "Redis or the queue cannot be reached (`unavailable`), or the staging store cannot be written "
         "(`storage_unavailable`); `Retry-After` says when to retry.",
    500: "A bug (`internal`); never caused by what the caller sent.",
}
HEADERS = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
}


def errors(*statuses: int, **when: str) -> dict:
    """``responses=`` for a route: ``ErrorResponse`` for each of ``statuses`` and for 500. A keyword
    ``s409="..."`` replaces the generic description of that status."""
    out = {}
    for status in (*statuses, 500):
        out[status] = {"description": when.get(f"s{status}", WHEN[status]),  # JSON whatever the route answers
                       "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
        if status in HEADERS:
            out[status]["headers"] = HEADERS[status]
    return out


def deletion(model, what: str) -> dict:
    """The responses of a DELETE of a job or reference: 202 with the cancelled record while it runs,
    204 once a finished one is deleted with ``what``."""
    return {202: {"model": model, "description": "cancelled; the record"},
            204: {"description": f"deleted with {what}"}, **errors(401, 404, 422, 503)}


def submit_body(json_model: type[BaseModel], set_fields: tuple[str, ...], text_fields: dict[str, dict]) -> dict:
    """``openapi_extra`` of a POST that app/http.py ``submit`` reads itself: JSON ``json_model``, or
    multipart with one part per file in each of ``set_fields`` (or that field as a JSON reference/URI
    text) and the text fields ``text_fields`` (name -> schema)."""
    sets = {
        name: {
            "description": f"the {name} set: image files, or one archive (.zip/.tar/.tar.gz) or array "
                           "(.npy/.npz); or instead a text part holding JSON {\"reference_id\": ...} or "
                           "{\"uri\": ...}",
            "anyOf": [{"type": "array", "items": {"type": "string", "format": "binary"}},
                      {"type": "string", "contentMediaType": "application/json",
                       "contentSchema": {"$ref": REF.format(model="InputRef")}}],
        } for name in set_fields
    }
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": REF.format(model=json_model.__name__)}},
        "multipart/form-data": {"schema": {"type": "object", "required": list(set_fields),
                                           "properties": {**sets, **text_fields}}},
    }}}


def json_text(model: type[BaseModel], description: str) -> dict:
    """A multipart text field that holds a JSON object of ``model``."""
    return {"type": "string", "description": description, "contentMediaType": "application/json",
            "contentSchema": {"$ref": REF.format(model=model.__name__)}}


# --- the callback -----------------------------------------------------------------------------------

job_callbacks = APIRouter()


@job_callbacks.post(
    "{$request.body#/options/callback_url}", status_code=200, operation_id="job_finished",
    summary="The final job record, POSTed to options.callback_url when the job ends",
    description="Sent once the job is succeeded, failed or cancelled; an answer other than 2xx is retried with "
    "backoff, up to TRUSTFID_CALLBACK_ATTEMPTS tries, and a failed callback never fails the job. Verify it: "
    "recompute `sha256=` + hex HMAC-SHA256(secret, `<timestamp>.` + raw "
    "body) and compare in constant time (`app.callback.verify`). The secret is TRUSTFID_CALLBACK_SECRET, "
    "else the sha256 hex digest of the API key that submitted the job. (A multipart submission carries "
    "callback_url inside its `options` text field.)",
    responses={"default": {"description": "anything but 2xx: sent again later (TRUSTFID_CALLBACK_ATTEMPTS tries)"}})
def job_finished(
    body: JobRecord,
    x_trustfid_timestamp: Annotated[str, Header(description="unix seconds when it was signed")],
    x_trustfid_signature: Annotated[str, Header(description="`sha256=<hex HMAC-SHA256(secret, "
                                                "\"<timestamp>.\" + raw body)>`")],
) -> None:
    """Describes the receiver; never called."""


# --- the document -----------------------------------------------------------------------------------

HAND_DECLARED = (JobSubmit, ReferenceSubmit, ErrorResponse)


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` also carry the models the hand-declared bodies and errors name."""
    infer = app.openapi

    def openapi() -> dict:
        doc = infer()
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        _, defs = models_json_schema([(m, "validation") for m in HAND_DECLARED], ref_template=REF)
        for name, schema in defs["$defs"].items():
            schemas.setdefault(name, schema)  # one FastAPI lists already (e.g. JobOptions) stays as it is
        return doc

    app.openapi = openapi
