"""/v1/series: FID over training steps, for dashboards (docs/grafana-dashboard.json charts it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app import jobs
from app.http import Owner, StoreD
from app.openapi import errors
from trustfid.records import Series

router = APIRouter(prefix="/v1/series", tags=["series"])


@router.get("", response_model=Series, responses=errors(401, 422, 503),
            summary="The caller's succeeded jobs with a tag, as points ordered by their step= tag")
def get_series(store: StoreD, owner: Owner,
               tag: Annotated[str, Query(min_length=1, max_length=128, description="e.g. run=abc")],
               cursor: Annotated[str | None, Query(max_length=256,
                                                   description="next_cursor of the previous page")] = None,
               since: Annotated[float | None,
                                Query(ge=0, description="only jobs finished at or after this unix time")] = None,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100):
    return jobs.series(store, owner, tag, cursor=cursor, since=since, limit=limit)
