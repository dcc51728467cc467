"""Synchronous stylization of one image (the web page's quick previews)."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import anyio
from fastapi import APIRouter, HTTPException, Request, Response, status

from api import schemas
from api.deps import Services, ServicesDep
from api.routers.jobs import FILE_FIELD, parse_form
from api.uploads import openapi_multipart, receive_form
from clipmorph.inference import ImageError, StylizeOptions, open_image, stylize_pil
from clipmorph.registry import ModelNotFoundError

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
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e).replace(path.name, "upload")) from None
    out = stylize_pil(loaded.model, image, StylizeOptions(max_side=form.max_side, strength=form.strength))
    if form.format == "jpeg" and out.mode != "RGB":
        out = out.convert("RGB")
    buffer = io.BytesIO()
    out.save(buffer, form.format.upper(), **({"quality": 92} if form.format != "png" else {}))
    return buffer.getvalue(), loaded.name or form.style, loaded.version


@router.post(
    "",
    response_class=Response,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Stylize one image and return it",
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}, 413: {}, 422: {}},
)
async def stylize_image(request: Request, services: ServicesDep) -> Response:
    settings = services.settings
    upload_dir = settings.var_dir / "uploads"
    upload_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=upload_dir, suffix=".upload") as sink:
        received = await receive_form(request, FILE_FIELD, sink, settings.max_image_upload_bytes)
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
