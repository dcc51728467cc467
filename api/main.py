"""The clipmorph REST API: `uvicorn api.main:create_app --factory` (or `clipmorph serve`).

Routes live under /v1 (behind the optional bearer token); /healthz, /readyz
and /metrics sit outside it; the web page (api/static) is served at /.
OpenAPI docs at /docs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from api.deps import Services, require_token
from api.metrics import Metrics, MetricsMiddleware
from api.routers import health, images, jobs, models
from clipmorph.settings import Settings, get_settings

STATIC_DIR = Path(__file__).parent / "static"
log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="clipmorph",
        summary="Video style transfer: upload a video, get it back painted in a style.",
        version="1",
    )
    services = Services(settings)
    app.state.services = services
    app.state.metrics = Metrics(services.queue)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_token)])
    for router in (jobs.router, models.router, images.router):
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(health.router)

    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    if STATIC_DIR.is_dir():
        # Mounted last: routes above take precedence, everything else is a file of the web page.
        app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static")
    else:
        log.warning("no web page: %s is missing", STATIC_DIR)
    return app
