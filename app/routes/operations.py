"""Health, readiness and Prometheus metrics: what an orchestrator and a dashboard poll."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.http import NO_WORKER, SettingsD, StoreD

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The API process is up")
async def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Redis reachable and at least one worker alive (503 with the reason otherwise)")
def readyz(request: Request, settings: SettingsD):
    store = request.app.state.store
    redis_ok = store is not None and store.ping()
    workers = len(store.workers_alive(settings.queue)) if redis_ok else 0
    ready = redis_ok and workers > 0
    body = {"status": "ready" if ready else "unavailable", "redis": redis_ok, "workers": workers}
    if not redis_ok:
        body["message"] = "Redis is not reachable: submissions are refused (503) until it is back"
    elif not workers:
        body["message"] = NO_WORKER
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            summary="Prometheus text format: jobs by state, durations (succeeded and failed), queue wait and depth, "
                    "workers, images scored, build info")
def metrics(settings: SettingsD, store: StoreD):
    from prometheus_client import CONTENT_TYPE_LATEST

    from app.metrics import render

    return Response(render(store, settings.queue), media_type=CONTENT_TYPE_LATEST)
