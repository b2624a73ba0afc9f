"""The HTTP front end: ``create_app`` wires the routers (app/routes/), the error handlers and the
service's parts (app/services.py, built once in its lifespan). Run it with `trustfid api` (uvicorn,
with malformed HTTP answered in our error shape) or `trustfid serve`. OpenAPI at /openapi.json,
rendered offline at /docs and /redoc (app/openapi.py completes what FastAPI infers).

Every error is ``{"error": {"code", "message"}}`` with a fitting status; user input never gives 500.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from app import openapi
from app.http import error_response, log
from app.jobs import Jobs
from app.routes import jobs, operations, references, series
from app.services import build
from app.settings import Settings, get_settings
from trustfid import __version__
from trustfid.errors import InputError, TrustfidError
from trustfid.schemas import validation_message

DESCRIPTION = """FID with Monte-Carlo-dropout uncertainty, as a service: submit a job (uploads, URIs or
registered references), poll it, read its report; chart a training run with /v1/series.

Every error is `{"error": {"code", "message"}}` (`ErrorResponse`); the message says what to do.
Send the API key as `Authorization: Bearer <key>`."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # The service's parts, built once for this process; the routes get them as dependencies (app/http.py).
        app.state.services = services = build(settings)
        app.state.jobs = Jobs(services, settings.rate_limit_per_minute) if services.store else None
        yield
        if services.store is not None:
            await services.store.aclose()

    # FastAPIOffline: /docs (Swagger UI) and /redoc load their scripts and styles from the
    # fastapi-offline package, served by this app, so the pages work on a network without internet.
    app = FastAPIOffline(title="trustfid", version=__version__, lifespan=lifespan,
                         static_url="/docs-assets", description=DESCRIPTION,
                         generate_unique_id_function=lambda route: route.name)  # operationId = function name
    app.state.settings = settings
    for module in (jobs, references, series, operations):
        app.include_router(module.router)
    openapi.install(app)

    @app.exception_handler(TrustfidError)
    async def _trustfid_error(request: Request, exc: TrustfidError):
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(InputError(validation_message(exc) or "invalid request", code="invalid_request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(TrustfidError(str(exc.detail), code=codes.get(exc.status_code, "http_error"),
                                            status=exc.status_code), exc.headers)  # e.g. 405's Allow

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect):
        # The caller went away mid-upload: its staging is already removed; one line, no traceback.
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return error_response(TrustfidError("the client disconnected before the request was complete",
                                            code="client_disconnected", status=400))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(TrustfidError("internal error; see the server log", code="internal", status=500))

    return app
