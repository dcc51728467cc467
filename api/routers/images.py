"""Synchronous stylization of one image (the web page's quick previews)."""

from __future__ import annotations

import io
import logging
import tempfile
from pathlib import Path

import anyio
import PIL.Image
from fastapi import APIRouter, HTTPException, Request, Response, status

from api import schemas
from api.deps import Services, ServicesDep
from api.routers.jobs import FILE_FIELD, parse_form
from api.uploads import openapi_multipart, receive_form
from clipmorph.inference import ImageError, StylizeOptions, open_image, stylize_pil
from clipmorph.registry import ModelNotFoundError
from clipmorph.settings import Settings

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
    out = stylize_pil(loaded.model, image, StylizeOptions(max_side=form.max_side, strength=form.strength))
    if form.format == "jpeg" and out.mode != "RGB":
        out = out.convert("RGB")
    buffer = io.BytesIO()
    out.save(buffer, form.format.upper(), **({"quality": 92} if form.format != "png" else {}))
    return buffer.getvalue(), loaded.name or form.style, loaded.version


def _image_refusal(path: Path, settings: Settings) -> HTTPException:
    """Why an upload is not a usable image, in words of our own: PIL's messages name the server's temp file."""
    try:
        with PIL.Image.open(path) as img:  # reads the header only
            pixels = img.width * img.height
    except PIL.Image.DecompressionBombError:
        pixels = settings.max_image_pixels + 1
    except Exception:  # any other failure to read it: not an image we can read
        pixels = 0
    if pixels > settings.max_image_pixels:
        return HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"image too large: more than {settings.max_image_pixels} pixels"
        )
    return HTTPException(
        status.HTTP_422_UNPROCESSABLE_CONTENT, "not a readable image (send a JPEG, PNG, WebP, GIF, BMP or TIFF file)"
    )


@router.post(
    "",
    response_class=Response,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Stylize one image and return it",
    responses={
        200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        413: {"description": "Upload or image over a limit"},
        422: {"description": "Not a readable image, or unknown style"},
    },
)
async def stylize_image(request: Request, services: ServicesDep) -> Response:
    settings = services.settings
    upload_dir = settings.var_dir / "uploads"
    upload_dir.mkdir(parents=True, exist_ok=True)
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
        data, model_name, version = await anyio.to_thread.run_sync(
            stylize_upload, services, Path(sink.name), form, limiter=services.inference_limiter
        )
    headers = {"X-Model-Name": model_name, **({"X-Model-Version": version} if version else {})}
    return Response(data, media_type=f"image/{form.format}", headers=headers)
