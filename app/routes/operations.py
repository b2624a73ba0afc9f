"""Health, readiness and Prometheus metrics: what an orchestrator and a dashboard poll. No API key."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel

from app.http import NO_WORKER, QueueD, StoreD
from app.openapi import errors

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    redis: bool
    workers: int
    message: str | None = None  # only when unavailable: why


@router.get("/healthz", response_model=Health, summary="The API process is up")
async def healthz():
    return Health()


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness,
                             "description": "Redis unreachable or no worker alive; message says which"}},
            summary="Redis reachable and at least one worker alive (503 with the reason otherwise)")
def readyz(request: Request, queue: QueueD):
    store = request.app.state.services.store
    redis_ok = store is not None and store.ping()
    workers = len(store.workers_alive(queue.name)) if redis_ok else 0
    ready = redis_ok and workers > 0
    message = None
    if not redis_ok:
        message = "Redis is not reachable: submissions are refused (503) until it is back"
    elif not workers:
        message = NO_WORKER
    body = Readiness(status="ready" if ready else "unavailable", redis=redis_ok, workers=workers, message=message)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=errors(503),
            summary="Prometheus text format: jobs by state, durations (succeeded and failed), queue wait and depth, "
                    "workers, images scored, build info")
def metrics(store: StoreD, queue: QueueD):
    from prometheus_client import CONTENT_TYPE_LATEST

    from app.metrics import render

    return Response(render(store, queue.name), media_type=CONTENT_TYPE_LATEST)
