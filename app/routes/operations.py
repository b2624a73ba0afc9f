"""Health, readiness and Prometheus metrics: what an orchestrator and a dashboard poll. No API key."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from app.http import SettingsD, StoreD
from app.openapi import errors

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    status: Literal["ready", "unavailable"]
    redis: bool
    workers: int


@router.get("/healthz", response_model=Health, summary="The API process is up")
def healthz():
    return Health()


@router.get("/readyz", response_model=Readiness,
            responses={503: {"model": Readiness, "description": "Redis unreachable or no worker alive"}},
            summary="Redis reachable and at least one worker alive")
def readyz(request: Request, settings: SettingsD):
    store = request.app.state.store
    redis_ok = store is not None and store.ping()
    workers = len(store.workers_alive(settings.queue)) if redis_ok else 0
    ready = redis_ok and workers > 0
    body = Readiness(status="ready" if ready else "unavailable", redis=redis_ok, workers=workers)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse, responses=errors(503),
            summary="Prometheus text format: jobs by state, queue depth, job duration, images scored")
def metrics(settings: SettingsD, store: StoreD):
    from app.metrics import render

    return PlainTextResponse(render(store.metrics_snapshot(settings.queue), len(store.workers_alive(settings.queue))),
                             media_type="text/plain; version=0.0.4")
