"""Registered styles: list them with their champion, preview images, promotion."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Request, status
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from mlflow.entities.model_registry import ModelVersion
from PIL import Image

from api import schemas
from api.deps import AdminDep, Services, ServicesDep
from api.style_words import describe
from clipmorph.evaluation.promotion import PromotionError, PromotionResult, promote, version_metrics
from clipmorph.model.artifact import CONFIG
from clipmorph.registry import MODEL_PREFIX, ModelNotFoundError, get_version, registered_name, resolve, style_of
from clipmorph.training.data import find_painting
from clipmorph.video.inference import ImageError, StylizeOptions, open_image, stylize_pil

log = logging.getLogger(__name__)
router = APIRouter(prefix="/models", tags=["models"])
StyleName = Annotated[str, PathParam(pattern=schemas.STYLE_PATTERN, description="A style, e.g. kandinsky.")]
PREVIEW_SIDE = 512
PAINTING_SIDE = 320
# A painting is looked up by the name its model's config records, only inside the styles folder.
_PAINTING_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def champion_config(services: Services, registered: str, version: str) -> dict:
    """The version's config.json (downloaded into the model cache once); {} when unreadable."""
    try:
        folder = resolve(f"{registered}/{version}", services.registry()).path
        return json.loads((folder / CONFIG).read_text())
    except Exception:  # a broken artifact must not take the style list down; the words say "not measured"
        log.exception("cannot read the config of %s version %s", registered, version)
        return {}


def painting_path(config: dict, style_dirs: Sequence[Path]) -> Path | None:
    """The painting the heaviest-weighted style image names, if one of the style folders has it."""
    images = sorted((config.get("style") or {}).get("images") or [], key=lambda i: -float(i.get("weight", 0)))
    for image in images[:1]:
        stem = Path(str(image.get("name", ""))).stem  # a path recorded at training time counts by its stem only
        if not _PAINTING_NAME.match(stem):
            return None
        return find_painting(stem, style_dirs)
    return None


def _summary(request: Request, services: Services, rm) -> schemas.ModelSummary:
    style = style_of(rm.name)
    champion = rm.aliases.get(services.settings.champion_alias) if rm.aliases else None
    summary = schemas.ModelSummary(name=style, registered_name=rm.name, description=rm.description)
    if not champion:
        return summary
    config = champion_config(services, rm.name, str(champion))
    summary.champion_version = str(champion)
    summary.metrics = version_metrics(services.registry(), rm.name, str(champion))
    summary.traits, summary.figures = describe(config, summary.metrics)
    # The version in the query makes browsers and proxies fetch a new preview when the champion changes.
    summary.preview_url = f"{request.app.url_path_for('model_preview', name=style)}?v={champion}"
    if painting_path(config, services.settings.style_dirs):
        summary.painting_url = f"{request.app.url_path_for('model_painting', name=style)}?v={champion}"
    return summary


@router.get("", response_model=schemas.ModelList, summary="Registered styles with their champion")
def list_models(request: Request, services: ServicesDep) -> schemas.ModelList:
    found = services.registry().search_registered_models(filter_string=f"name LIKE '{MODEL_PREFIX}%'")
    models = [_summary(request, services, rm) for rm in found]
    return schemas.ModelList(models=sorted(models, key=lambda m: m.name))


def _cached_jpeg(services: Services, style: str, suffix: str, make: Callable[[ModelVersion], Image.Image]) -> Path:
    """var/previews/<model>/<version><suffix>: made by `make` once per champion version, then served from disk."""
    try:
        version = get_version(services.registry(), style)
    except ModelNotFoundError as e:
        raise HTTPException(status.HTTP_404_NOT_FOUND, str(e)) from None
    target = services.settings.var_dir / "previews" / version.name / f"{version.version}{suffix}"
    if target.exists():
        return target
    image = make(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial.jpg")
    image.convert("RGB").save(partial, "JPEG", quality=90)
    partial.replace(target)  # a concurrent reader never sees half a file
    return target


def render_preview(services: Services, style: str) -> Path:
    """The champion of `style` applied to the preview photo, rendered once per version and kept on disk."""

    def make(version: ModelVersion) -> Image.Image:
        loaded = services.models().get(f"{version.name}/{version.version}")
        try:
            photo = open_image(services.settings.preview_photo_path)
        except (ImageError, FileNotFoundError) as e:
            log.error("preview photo unavailable: %s", e)  # the operator's to fix; the path stays in the log
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the preview photo is unavailable") from None
        photo.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
        return stylize_pil(loaded.model, photo, StylizeOptions())

    return _cached_jpeg(services, style, ".jpg", make)


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


def render_painting(services: Services, style: str) -> Path:
    """A small JPEG of the champion's painting, made once per version and kept on disk."""

    def make(version: ModelVersion) -> Image.Image:
        config = champion_config(services, version.name, version.version)
        source = painting_path(config, services.settings.style_dirs)
        if source is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"the painting of style {style!r} is not on this server")
        try:
            painting = open_image(source)
        except ImageError as e:
            log.error("painting unreadable: %s", e)
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"the painting of style {style!r} is unreadable") from None
        painting.thumbnail((PAINTING_SIDE, PAINTING_SIDE))
        return painting

    return _cached_jpeg(services, style, ".painting.jpg", make)


@router.get(
    "/{name}/painting",
    response_class=FileResponse,
    name="model_painting",
    summary="A thumbnail of the painting the style's champion learned from (JPEG)",
    responses={200: {"content": {"image/jpeg": {}}}, 404: {"description": "No such style, or no painting for it"}},
)
async def model_painting(name: StyleName, services: ServicesDep) -> FileResponse:
    path = await anyio.to_thread.run_sync(render_painting, services, name)
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
