"""/v1/references: register a real set once (its statistics are computed by a worker), then score jobs
against it by id."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.http import JobsD, Owner, QueueD, StoreD, cancel_or_delete, owned_response, submit
from app.openapi import deletion, errors, json_text, submit_body
from trustfid.records import ReferenceList, ReferenceRecord, ReferenceSubmit
from trustfid.schemas import ScoreOptions

router = APIRouter(prefix="/v1/references", tags=["references"])
SETS = ("source",)
TEXTS = {"options": json_text(ScoreOptions, "JSON: the score options the statistics are computed with"),
         "name": {"type": "string", "maxLength": 200, "description": "a label for people"}}


@router.post("", status_code=202, response_model=ReferenceRecord,
             summary="Register a real set: its statistics are computed once, then used by id",
             openapi_extra=submit_body(ReferenceSubmit, SETS, TEXTS),
             responses=errors(401, 408, 413, 415, 422, 429, 503))
async def submit_reference(request: Request, jobs: JobsD, owner: Owner):
    return await submit(request, jobs, owner, body_model=ReferenceSubmit,
                        from_json=jobs.submit_reference_json, from_upload=jobs.submit_reference_upload,
                        set_fields=SETS, text_fields=tuple(TEXTS), collection="references")


@router.get("", response_model=ReferenceList, summary="The caller's references, newest first",
            responses=errors(401, 422, 503))
def list_references(store: StoreD, owner: Owner, limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    return ReferenceList(references=[s.record for s in store.list(owner, "reference", limit=limit)])


@router.get("/{ref_id}", response_model=ReferenceRecord, summary="State of a reference",
            responses=errors(401, 404, 422, 503))
async def get_reference(ref_id: str, store: StoreD, queue: QueueD, owner: Owner):
    return await owned_response(store, queue.name, ref_id, owner, "reference")


@router.delete("/{ref_id}", status_code=204, responses=deletion(ReferenceRecord, "its statistics"),
               summary="Cancel a reference being computed (202) or delete a finished one (204)")
def delete_reference(ref_id: str, jobs: JobsD, owner: Owner):
    return cancel_or_delete(jobs, owner, ref_id, "reference")
