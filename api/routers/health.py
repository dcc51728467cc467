"""Liveness, readiness and Prometheus metrics (outside /v1, never behind the token)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api import schemas
from api.deps import ServicesDep

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health, summary="The process is up")
def healthz() -> schemas.Health:
    return schemas.Health(status="ok")


@router.get(
    "/readyz",
    response_model=schemas.Readiness,
    summary="Redis and the model registry are reachable",
    responses={503: {"model": schemas.Readiness}},
)
def readyz(services: ServicesDep):
    checks = {"redis": "ok", "registry": "ok"}
    try:
        services.redis.ping()
    except Exception as e:  # any failure means "not ready"; say which
        checks["redis"] = f"unreachable: {e}"
    try:
        services.registry().search_registered_models(max_results=1)
    except Exception as e:
        checks["registry"] = f"unreachable: {e}"
    ready = all(v == "ok" for v in checks.values())
    body = schemas.Readiness(status="ok" if ready else "unavailable", **checks)
    return JSONResponse(body.model_dump(), status_code=status.HTTP_200_OK if ready else 503)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
