"""Liveness, readiness and Prometheus metrics (outside /v1, never behind the token)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rq import Queue, Worker

from api import schemas
from api.deps import ServicesDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health, summary="The process is up")
def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Readiness,
    summary="Redis, the model registry and the job storage answer, and a worker is alive",
    responses={503: {"model": schemas.Readiness}},
)
def readyz(services: ServicesDep) -> JSONResponse:
    # Booleans only: an exception's text can name hosts, paths or credentials in URLs.
    checks = {
        "redis": _passes(services.redis.ping, "redis"),
        "registry": _passes(lambda: services.registry().search_registered_models(max_results=1), "registry"),
    }
    checks["workers"] = checks["redis"] and _passes(lambda: live_workers(services.queue) > 0, "workers")
    checks["storage"] = _passes(services.storage.ready, "storage")
    ready = all(checks.values())
    body = schemas.Readiness(status="ok" if ready else "unavailable", **checks)
    return JSONResponse(body.model_dump(), status_code=status.HTTP_200_OK if ready else 503)


def _passes(check: Callable[[], object], name: str) -> bool:
    try:
        return bool(check())
    except Exception:  # any failure means "not ready"; the log says why
        log.warning("readiness: %s check failed", name, exc_info=True)
        return False


def live_workers(queue: Queue) -> int:
    """Workers registered for the queue whose key has not expired (RQ refreshes it with every heartbeat)."""
    keys = sorted(Worker.all_keys(queue=queue))
    if not keys:
        return 0
    with queue.connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return sum(pipe.execute())


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
