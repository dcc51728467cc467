"""Registered styles: list them with their champion, preview images, promotion."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse

from api import schemas
from api.deps import AdminDep, Services, ServicesDep
from clipmorph.inference import ImageError, StylizeOptions, open_image, stylize_pil
from clipmorph.promotion import PromotionError, PromotionResult, promote, version_metrics
from clipmorph.registry import MODEL_PREFIX, ModelNotFoundError, get_version, registered_name, style_of

log = logging.getLogger(__name__)
router = APIRouter(prefix="/models", tags=["models"])
StyleName = Annotated[str, PathParam(pattern=schemas.STYLE_PATTERN, description="A style, e.g. kandinsky.")]
PREVIEW_SIDE = 512


@router.get("", response_model=schemas.ModelList, summary="Registered styles with their champion")
def list_models(request: Request, services: ServicesDep) -> schemas.ModelList:
    client = services.registry()
    alias = services.settings.champion_alias
    models = []
    for rm in client.search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'"):
        champion = rm.aliases.get(alias) if rm.aliases else None
        style = style_of(rm.name)
        models.append(
            schemas.ModelSummary(
                name=style,
                registered_name=rm.name,
                description=rm.description,
                champion_version=str(champion) if champion else None,
                metrics=version_metrics(client, rm.name, str(champion)) if champion else {},
                preview_url=request.app.url_path_for("model_preview", name=style) if champion else None,
            )
        )
    return schemas.ModelList(models=sorted(models, key=lambda m: m.name))


def render_preview(services: Services, style: str) -> Path:
    """The champion of `style` applied to the preview photo, rendered once per version and kept on disk."""
    try:
        version = get_version(services.registry(), style)
    except ModelNotFoundError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    target = services.settings.var_dir / "previews" / version.name / f"{version.version}.jpg"
    if target.exists():
        return target
    loaded = services.models().get(f"{version.name}/{version.version}")
    try:
        photo = open_image(services.settings.preview_photo_path)
    except (ImageError, FileNotFoundError) as e:
        log.error("preview photo unavailable: %s", e)  # the operator's to fix; the path stays in the log
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the preview photo is unavailable") from None
    photo.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    image = stylize_pil(loaded.model, photo, StylizeOptions()).convert("RGB")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.jpg")
    image.save(partial, "JPEG", quality=90)
    partial.replace(target)
    return target


@router.get(
    "/{name}/preview",
    response_class=FileResponse,
    name="model_preview",
    summary="The style's champion applied to a fixed photo (JPEG)",
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No such style"}},
)
async def model_preview(name: StyleName, services: ServicesDep) -> FileResponse:
    path = await anyio.to_thread.run_sync(render_preview, services, name, limiter=services.inference_limiter)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=300"})


def _promotion_body(result: PromotionResult) -> schemas.Promotion:
    fields = vars(result) | {"name": style_of(result.name), "registered_name": result.name}
    return schemas.Promotion.model_validate(fields, from_attributes=True)


@router.post(
    "/{name}/promote",
    response_model=schemas.Promotion,
    summary="Make a version the style's champion, if it passes the quality gate (or forced, with a reason)",
    responses={409: {"model": schemas.Promotion, "description": "Refused by the gate; both metric sets included"}},
)
def promote_model(name: StyleName, body: schemas.PromotionRequest, services: ServicesDep, admin: AdminDep):
    try:
        # The actor is whoever the admin token belongs to, never a name the client sends.
        result = promote(services.registry(), registered_name(name), body.version, body.force, body.reason, actor=admin)
    except ModelNotFoundError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    except PromotionError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    out = _promotion_body(result)
    if not result.promoted:
        return JSONResponse(out.model_dump(mode="json"), status_code=status.HTTP_409_CONFLICT)
    return out
