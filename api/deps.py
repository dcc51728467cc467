"""FastAPI dependencies: settings, the bearer-token check, Redis and the RQ queue, job storage, the registry, models."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from typing import Annotated

import anyio
from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from mlflow import MlflowClient
from pydantic import SecretStr
from rq import Queue

from clipmorph import registry
from clipmorph.jobs.models import ModelCache
from clipmorph.jobs.storage import JobStorage, open_storage
from clipmorph.serving import redisconn
from clipmorph.settings import Settings

API_REDIS_PATIENCE_SECONDS = 1.0


class Services:
    """What the routes share, built once per app: connections are lazy, nothing is contacted at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Bounded waits: with Redis unreachable a request answers 503 (api.main) after about a second
        # of retries instead of hanging; the retries also carry requests over a restarted Redis's
        # closed connections, so the API recovers by itself.
        self.redis = redisconn.connect(settings.redis_url, API_REDIS_PATIENCE_SECONDS, settings.redis_timeout_seconds)
        self.queue = Queue(settings.queue_name, connection=self.redis)
        self.train_queue = Queue(settings.train_queue_name, connection=self.redis)  # POST /v1/styles
        # Where jobs' inputs and results are kept (CLIPMORPH_STORAGE_URL); a bucket is contacted on first use.
        self.storage: JobStorage = open_storage(settings)
        # Inference in the API (images, previews) runs one at a time: torch already uses every core.
        self.inference_limiter = anyio.CapacityLimiter(1)
        self._registry: MlflowClient | None = None
        self._models: ModelCache | None = None
        self._lock = threading.Lock()

    def registry(self) -> MlflowClient:
        """The MLflow registry client (blocking on first use: call from a worker thread)."""
        with self._lock:
            if self._registry is None:
                self._registry = registry.configure(self.settings)
            return self._registry

    def models(self) -> ModelCache:
        client = self.registry()
        with self._lock:
            if self._models is None:
                self._models = ModelCache(client=client)
            return self._models


def get_services(request: Request) -> Services:
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]

_bearer = HTTPBearer(auto_error=False, description="Required when the server sets CLIPMORPH_API_TOKEN.")


def _matches(given: str, expected: str) -> bool:
    return bool(expected) and secrets.compare_digest(given.encode(), expected.encode())


def _owner(tokens: dict[str, SecretStr], given: str) -> str | None:
    found = None
    for name, token in tokens.items():
        if _matches(given, token.get_secret_value()):
            found = name  # no early return: the time taken does not tell which entry matched
    return found


def admin_name(settings: Settings, given: str) -> str | None:
    """The name of the admin whose token this is, or None."""
    return _owner(settings.admin_tokens, given)


def trainer_name(settings: Settings, given: str) -> str | None:
    """The name of the trainer whose token this is, or None (an admin token is not a trainer token)."""
    return _owner(settings.trainer_tokens, given)


def require_token(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """When a token is configured, every /v1 request must carry it (or an admin or trainer token) as a bearer token."""
    expected = _expected_token(services.settings)
    if not expected:
        return
    given = credentials.credentials if credentials else ""
    settings = services.settings
    if not _matches(given, expected) and admin_name(settings, given) is None and trainer_name(settings, given) is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong API token" if given else "this server requires an API token (Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _expected_token(settings: Settings) -> str:
    return settings.api_token.get_secret_value() if settings.api_token else ""


def _signature(secret: str, job_id: str, expires: int) -> str:
    # Keyed by the API token, which only the server and its clients hold; the message binds one job and a deadline.
    return hmac.new(secret.encode(), f"result:{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def signed_result_url(settings: Settings, url: str, job_id: str) -> str:
    """`url` with an expiring signature, so that a <video> element (no Authorization header) can stream it."""
    secret = _expected_token(settings)
    if not secret:
        return url
    expires = int(time.time()) + settings.result_link_seconds
    return f"{url}?expires={expires}&signature={_signature(secret, job_id, expires)}"


def require_token_or_signature(
    request: Request,
    services: ServicesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    expires: Annotated[int | None, Query(description="From the job's stream_url.")] = None,
    signature: Annotated[str | None, Query(description="From the job's stream_url.")] = None,
) -> None:
    """A result is read with the bearer token, or with the signed query of the job's stream_url."""
    secret = _expected_token(services.settings)
    if secret and signature is not None and expires is not None:
        job_id = str(request.path_params.get("job_id", ""))
        if expires >= time.time() and _matches(signature, _signature(secret, job_id, expires)):
            return
        if credentials is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this result link has expired or is not valid")
    require_token(services, credentials)


def require_admin(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """An admin token (CLIPMORPH_ADMIN_TOKENS) is required; returns its name, which is the recorded actor."""
    if not services.settings.admin_tokens:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "promotion over the API is disabled: the server has no CLIPMORPH_ADMIN_TOKENS"
        )
    name = admin_name(services.settings, credentials.credentials if credentials else "")
    if name is None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, "promotion needs an admin token", headers={"WWW-Authenticate": "Bearer"}
        )
    return name


AdminDep = Annotated[str, Depends(require_admin)]


def require_trainer(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """A trainer or admin token is required (CLIPMORPH_TRAINER_TOKENS, CLIPMORPH_ADMIN_TOKENS); returns its
    name, recorded as who asked for the training. 401 without a token, 403 with one that may not train."""
    settings = services.settings
    if not settings.trainer_tokens and not settings.admin_tokens:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "training over the API is disabled: the server has no CLIPMORPH_TRAINER_TOKENS or CLIPMORPH_ADMIN_TOKENS",
        )
    given = credentials.credentials if credentials else ""
    if not given:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "training a style needs a trainer or admin token (Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Both lists are always searched: the time taken does not tell which kind of token matched.
    trainer, admin = trainer_name(settings, given), admin_name(settings, given)
    if trainer is None and admin is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "training a style needs a trainer or admin token")
    return str(admin or trainer)


TrainerDep = Annotated[str, Depends(require_trainer)]
