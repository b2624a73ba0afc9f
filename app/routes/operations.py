"""Health, readiness and Prometheus metrics: what an orchestrator and a dashboard poll."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from app.http import SettingsD, StoreD

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The API process is up")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Redis reachable and at least one worker alive")
def readyz(request: Request, settings: SettingsD):
    store = request.app.state.store
    redis_ok = store is not None and store.ping()
    workers = len(store.workers_alive(settings.queue)) if redis_ok else 0
    ready = redis_ok and workers > 0
    body = {"status": "ready" if ready else "unavailable", "redis": redis_ok, "workers": workers}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            summary="Prometheus text format: jobs by state, queue depth, job duration, images scored")
def metrics(settings: SettingsD, store: StoreD):
    from app.metrics import render

    return PlainTextResponse(render(store.metrics_snapshot(settings.queue), len(store.workers_alive(settings.queue))),
                             media_type="text/plain; version=0.0.4")
