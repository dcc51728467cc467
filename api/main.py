"""The clipmorph REST API: `uvicorn api.main:create_app --factory` (or `clipmorph serve`).

Routes live under /v1 (behind the optional bearer token; a job's result also takes the
signed link of its stream_url, for <video> players); /healthz, /readyz and /metrics sit
outside it; the web page (api/static) is served at /.
OpenAPI docs at /docs and /redoc, with their assets served from the app (no CDN).
At start-up the built-in models are registered when the registry lacks them.
While Redis or the job storage (a bucket) is unreachable every route that needs it answers 503
with Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import redis
from fastapi import APIRouter, Depends, FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from api.deps import Services, require_token, require_token_or_signature
from api.metrics import Metrics, MetricsMiddleware
from api.routers import health, images, jobs, models, styles
from clipmorph import registry
from clipmorph.jobs.storage import UNAVAILABLE, StorageUnavailable
from clipmorph.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"
# Seconds a client should wait before trying again while Redis is down (a restart takes a few).
RETRY_AFTER_SECONDS = 5
log = logging.getLogger(__name__)


def register_builtins(services: Services) -> None:
    """Register the built-in models on a fresh registry, so their styles work from the first request.

    A registry that is down must not keep the API from starting: /readyz reports it, and the
    first request for a built-in style registers them then (registry.get_version).
    """
    try:
        registry.register_builtins(services.registry(), services.settings)
    except Exception:
        log.exception("could not register the built-in models at start-up; retried on first use")


async def redis_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 + Retry-After instead of a bare 500; the exception's text (host, port) stays in the log."""
    log.warning("%s %s: Redis unavailable: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "the job queue is unavailable; try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def storage_unavailable(request: Request, exc: Exception) -> JSONResponse:
    """503 + Retry-After; which bucket, key or endpoint failed, and how, is in the log (clipmorph.jobs.storage)."""
    log.warning("%s %s: job storage unavailable", request.method, request.url.path)
    return JSONResponse(
        {"detail": UNAVAILABLE},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await anyio.to_thread.run_sync(register_builtins, app.state.services)
    yield


LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def exposure_error(host: str, settings: Settings) -> str | None:
    """Why the API must not listen on `host` with these settings (None when it may)."""
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return None
    if settings.api_token is None or not settings.api_token.get_secret_value():
        return (
            f"refusing to serve on {host} without an API token: anyone who reaches it could upload and read "
            "jobs. Set CLIPMORPH_API_TOKEN, or listen on 127.0.0.1."
        )
    return None


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    if problem := exposure_error(settings.api_host, settings):
        raise RuntimeError(problem)
    # FastAPIOffline serves Swagger UI and ReDoc from files bundled in the package, not from a CDN,
    # so /docs and /redoc work on machines without internet access.
    app = FastAPIOffline(
        title="clipmorph",
        summary="Video style transfer: upload a video, get it back painted in a style.",
        version="1",
        lifespan=lifespan,
        # Swagger UI would otherwise load a validity badge from validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    )
    services = Services(settings)
    app.state.services = services
    app.state.metrics = Metrics(services.queue)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    for error in (redis.ConnectionError, redis.TimeoutError):
        app.add_exception_handler(error, redis_unavailable)
    app.add_exception_handler(StorageUnavailable, storage_unavailable)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
    for router in (jobs.router, models.router, images.router, styles.router):
        v1.include_router(router)
    app.include_router(v1)
    results = APIRouter(prefix="/v1", dependencies=[Depends(require_token_or_signature)])
    results.include_router(jobs.result_router)
    app.include_router(results)
    app.include_router(health.router)

    services.storage.staging_dir.mkdir(parents=True, exist_ok=True)
    if STATIC_DIR.is_dir():
        # Mounted last: routes above take precedence, everything else is a file of the web page.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    else:
        log.warning("no web page: %s is missing", STATIC_DIR)
    return app
