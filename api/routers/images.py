"""Stylize one image: in the request when it is small, as a queued job when it is large.

Up to settings.max_sync_image_pixels (by the image's header) the stylized image is the
answer (200), as the web page's quick previews need. A larger image is not decoded in
the API at all: it becomes a job like a video's (202 and the job; GET /v1/jobs/{id} for
state and progress, /v1/jobs/{id}/result for the image, DELETE to cancel), and a worker
stylizes it in tiles and writes it at the input's own size. The limits and refusals are
the same either way: 413 past max_image_upload_bytes or max_image_pixels, 422 for what is
not a readable image or an unknown style, never a server path in the message.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import anyio
import PIL.Image
from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import schemas
from api.deps import Services, ServicesDep
from api.routers.jobs import FILE_FIELD, check_style, forget_input, parse_form
from api.uploads import ensure_disk_space, openapi_multipart, receive_form
from clipmorph.jobs.queue import enqueue_stylize_image, image_refusal
from clipmorph.registry import ModelNotFoundError
from clipmorph.settings import Settings
from clipmorph.video.inference import ImageError, StylizeOptions, open_image, stylize_pil

log = logging.getLogger(__name__)
router = APIRouter(prefix="/images", tags=["images"])

_UPLOAD_SCHEMA = openapi_multipart(schemas.ImageForm, FILE_FIELD, "The image.")


def stylize_upload(services: Services, path: Path, form: schemas.ImageForm) -> tuple[bytes, str, str | None]:
    """-> (encoded image, registered model name, version); blocking."""
    try:
        loaded = services.models().get(form.style)
    except ModelNotFoundError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown style {form.style!r}: {e}") from None
    try:
        image = open_image(path)
    except ImageError as e:
        log.info("refused image upload: %s", e)
        raise _image_refusal(path, services.settings) from None
    options = StylizeOptions(max_side=form.max_side, strength=form.strength, contrast=form.contrast)
    out = stylize_pil(loaded.model, image, options)
    if form.format == "jpeg" and out.mode != "RGB":
        out = out.convert("RGB")
    buffer = io.BytesIO()
    out.save(buffer, form.format.upper(), **({"quality": 92} if form.format != "png" else {}))
    return buffer.getvalue(), loaded.name or form.style, loaded.version


def _image_refusal(path: Path, settings: Settings) -> HTTPException:
    """Why an upload is not a usable image, in words of our own: PIL's messages name the server's temp file."""
    too_large, message = image_refusal(path, settings.max_image_pixels)
    code = status.HTTP_413_CONTENT_TOO_LARGE if too_large else status.HTTP_422_UNPROCESSABLE_CONTENT
    return HTTPException(code, message)


def image_header(path: Path, settings: Settings) -> tuple[int, int, str]:
    """(width, height, format) from the image's header; 413 past max_image_pixels, 422 if unreadable (blocking)."""
    try:
        with PIL.Image.open(path) as img:  # the header only: nothing is decoded
            width, height, fmt = img.width, img.height, (img.format or "")
    except Exception:
        raise _image_refusal(path, settings) from None
    if width * height > settings.max_image_pixels:
        raise _image_refusal(path, settings)
    return width, height, fmt


def _input_suffix(fmt: str) -> str:
    """The job's input suffix, from the format PIL read in the content (never the client's file name)."""
    fmt = fmt.lower()
    return fmt if fmt.isascii() and fmt.isalnum() and len(fmt) <= 8 else "bin"


def _place(upload: Path, target: Path) -> None:
    """The received file, as the job's staged input (a hard link where the folders share a disk, else a copy)."""
    try:
        os.link(upload, target)
    except OSError:
        shutil.copyfile(upload, target)


def queue_image(
    services: Services, upload: Path, form: schemas.ImageForm, size: tuple[int, int], fmt: str
) -> tuple[str, dict]:
    """Store the image as a job's input and queue the job; -> (job id, its options) (blocking)."""
    settings = services.settings
    services.redis.ping()  # Redis down: 503 (api.main) before anything is stored
    check_style(services, form.style)
    job_id = str(uuid.uuid4())
    staged = services.storage.staging(job_id)  # with the local storage, the job's own folder
    staged.dir.mkdir(parents=True)
    options = {"max_side": form.max_side, "strength": form.strength, "contrast": form.contrast, "format": form.format}
    stored = False
    try:
        _place(upload, staged.input(_input_suffix(fmt)))
        services.storage.store_input(job_id, staged)
        stored = True
        enqueue_stylize_image(services.queue, job_id, form.style, options, size, settings)
    except BaseException:
        staged.delete()
        if stored:
            forget_input(services, job_id)
        raise
    return job_id, options


@router.post(
    "",
    response_class=Response,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Stylize one image: returned at once when small, else queued as a job",
    responses={
        200: {
            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            "description": "The stylized image (images of at most CLIPMORPH_MAX_SYNC_IMAGE_PIXELS pixels)",
        },
        202: {
            "model": schemas.ImageJobCreated,
            "description": "A larger image, queued: poll status_url, then download result_url (same size as the input)",
        },
        408: {"description": "The upload took longer than the upload deadline"},
        413: {"description": "Upload or image over a limit"},
        422: {"description": "Not a readable image, or unknown style"},
        503: {
            "description": "A large image needs the job queue (Redis) and the job storage; one is unavailable; see "
            "Retry-After"
        },
        507: {"description": "Not enough free disk space for the upload"},
    },
)
async def stylize_image(request: Request, services: ServicesDep) -> Response:
    settings = services.settings
    upload_dir = settings.var_dir / "uploads"
    upload_dir.mkdir(parents=True, exist_ok=True)
    ensure_disk_space(
        request, services.storage.staging_dir, settings.max_image_upload_bytes, settings.min_free_disk_bytes
    )
    with tempfile.NamedTemporaryFile(dir=upload_dir, suffix=".upload") as sink:
        received = await receive_form(
            request, FILE_FIELD, sink, settings.max_image_upload_bytes, settings.upload_deadline_seconds
        )
        sink.flush()
        if received.size <= 0:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"no image: send it as a non-empty {FILE_FIELD!r}"
            )
        form = parse_form(schemas.ImageForm, received.fields)
        upload = Path(sink.name)
        width, height, fmt = await run_in_threadpool(image_header, upload, settings)
        if width * height > settings.max_sync_image_pixels:
            job_id, options = await run_in_threadpool(queue_image, services, upload, form, (width, height), fmt)
            log.info("image job %s queued: %s, %dx%d, %s", job_id, form.style, width, height, options)
            return _created(request, job_id, width, height)
        data, model_name, version = await anyio.to_thread.run_sync(
            stylize_upload, services, upload, form, limiter=services.inference_limiter
        )
    headers = {"X-Model-Name": model_name, **({"X-Model-Version": version} if version else {})}
    return Response(data, media_type=f"image/{form.format}", headers=headers)


def _created(request: Request, job_id: str, width: int, height: int) -> JSONResponse:
    status_url = request.app.url_path_for("get_job", job_id=job_id)
    body = schemas.ImageJobCreated(
        id=job_id,
        status=schemas.JobState.queued,
        status_url=status_url,
        result_url=request.app.url_path_for("get_job_result", job_id=job_id),
        input=schemas.ImageSummary(width=width, height=height),
    )
    return JSONResponse(body.model_dump(), status.HTTP_202_ACCEPTED, headers={"Location": status_url})
