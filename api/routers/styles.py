"""New styles: POST /v1/styles uploads a painting and queues its training on the train queue.

Only a trainer or admin token may (api.deps.require_trainer). The painting streams into the job's
staging folder with the image upload's cap, is checked (readable, at least
settings.train_min_painting_side on its shorter side, at most max_image_pixels), and becomes the job's
input; a worker serving the train queue (`clipmorph worker --queues train`) trains, registers,
evaluates and gates it (clipmorph.evaluation.promotion.train_and_gate), as `clipmorph train` does.
The job is followed like any other (GET /v1/jobs/{id}: steps, losses, ETA, a validation preview);
once it has finished the style is in GET /v1/models.

Refusals: 422 for a bad name, preset, iterations, blend or painting (the minimum size named), 413 for
a painting over the limits, 409 for a name that is taken (a registered or built-in style, a painting
of that name on the server, or a training job for it still queued or running).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from redis.exceptions import LockError
from redis.lock import Lock

from api import schemas
from api.deps import Services, ServicesDep, TrainerDep
from api.routers.jobs import forget_input, parse_form
from api.uploads import ensure_disk_space, openapi_multipart, receive_form
from clipmorph.jobs import training
from clipmorph.jobs.queue import enqueue_train, reserve_style_name, styles_in_training
from clipmorph.registry import style_exists
from clipmorph.training.data import find_painting

log = logging.getLogger(__name__)
router = APIRouter(prefix="/styles", tags=["styles"])

PAINTING_FIELD = "file"
_UPLOAD_SCHEMA = openapi_multipart(schemas.StyleTrainForm, PAINTING_FIELD, "The painting (an image).")


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, message)


def check_request(
    services: Services, form: schemas.StyleTrainForm, painting: Path, locks: list[Lock]
) -> training.TrainRequest:
    """The checked request; 422, 413 or 409 otherwise (blocking: the registry, the styles folder, Redis).
    The name's lock is appended to `locks` before the name is checked: the caller releases it once queued."""
    settings = services.settings
    try:
        request = training.train_request(form.name, form.preset, form.iterations, form.blend, settings)
    except training.TrainingRefused as e:
        raise _unprocessable(str(e)) from None
    if refusal := training.painting_refusal(painting, settings):
        too_large = status.HTTP_413_CONTENT_TOO_LARGE
        raise HTTPException(too_large if refusal.too_large else status.HTTP_422_UNPROCESSABLE_CONTENT, refusal.message)
    name = request.name
    if (lock := reserve_style_name(services.redis, name)) is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"a style named {name!r} is already being trained")
    locks.append(lock)
    if style_exists(services.registry(), name):
        raise HTTPException(status.HTTP_409_CONFLICT, f"a style named {name!r} already exists; choose another name")
    if find_painting(name, settings.style_dirs) is not None:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"a painting named {name!r} is already on this server; choose another name"
        )
    if name in styles_in_training(services.train_queue):
        raise HTTPException(status.HTTP_409_CONFLICT, f"a style named {name!r} is already being trained")
    return request


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.StyleTrainingCreated,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Upload a painting and train a new style from it (trainer or admin token)",
    responses={
        401: {"description": "No token"},
        403: {"description": "The token may not train styles (or training over the API is disabled)"},
        409: {"description": "The name is taken: a style, a painting, or a training job in progress"},
        413: {"description": "Upload or painting over a limit"},
        422: {"description": "Bad name, preset, iterations or blend; not a readable painting, or too small"},
        503: {"description": "The job queue (Redis) or the job storage is unavailable; see Retry-After"},
    },
)
async def create_style(request: Request, services: ServicesDep, trainer: TrainerDep) -> JSONResponse:
    settings = services.settings
    await run_in_threadpool(services.redis.ping)  # Redis down: 503 before the upload is read
    storage = services.storage
    ensure_disk_space(request, storage.staging_dir, settings.max_image_upload_bytes, settings.min_free_disk_bytes)
    job_id = str(uuid.uuid4())
    staged = storage.staging(job_id)
    staged.dir.mkdir(parents=True)
    stored = False
    locks: list[Lock] = []
    try:
        with staged.upload.open("wb") as sink:
            received = await receive_form(
                request, PAINTING_FIELD, sink, settings.max_image_upload_bytes, settings.upload_deadline_seconds
            )
        if received.size <= 0:
            raise _unprocessable(f"no painting: send it as a non-empty {PAINTING_FIELD!r} part")
        form = parse_form(schemas.StyleTrainForm, received.fields)
        checked = await run_in_threadpool(check_request, services, form, staged.upload, locks)
        # The worker decodes the painting whatever its suffix: a fixed one, never the client's file name.
        source = staged.input("img")
        staged.upload.rename(source)
        options = checked.options() | {"requested_by": trainer}
        await run_in_threadpool(storage.store_input, job_id, staged)
        stored = True
        await run_in_threadpool(enqueue_train, services.train_queue, job_id, checked.name, options, settings)
    except BaseException:
        staged.delete()
        if stored:
            forget_input(services, job_id)
        raise
    finally:
        for lock in locks:  # queued (styles_in_training sees it now) or refused: the name is free to check again
            with contextlib.suppress(LockError):
                await run_in_threadpool(lock.release)
    log.info("training job %s queued by %s: %s, %s", job_id, trainer, checked.name, options)
    status_url = request.app.url_path_for("get_job", job_id=job_id)
    body = schemas.StyleTrainingCreated(
        id=job_id, status=schemas.JobState.queued, status_url=status_url, name=checked.name, options=options
    )
    return JSONResponse(body.model_dump(), status.HTTP_202_ACCEPTED, headers={"Location": status_url})
