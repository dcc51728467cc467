"""Training a style as a job (POST /v1/styles): what a request may ask for, and how a worker sets it up.

The API checks a request with the functions here before it queues anything (a name, a painting,
a preset, iterations, a blend), and the worker checks again when the job starts: the registry or the
styles folder may have changed in between. Every refusal is a TrainingRefused whose message is ours,
fit for a client (never a path or an exception's text).

The painting is stored as <settings.uploaded_styles_dir>/<name>.png (var/styles/), re-encoded from the upload;
training, evaluation and the style's painting thumbnail look names up in settings.style_dirs (the data's
paintings, then the uploaded ones), so they all find it. It never goes into the data folder, which may be a
link to a shared read-only mirror.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import PIL.Image

from clipmorph.model.network import PRESETS
from clipmorph.settings import Settings
from clipmorph.training.data import find_painting, load_rgb

# Lower case, so that two styles never differ by case alone (file systems that ignore case would mix them up);
# a slug, so that the name is safe as a file name, a registered model name and a URL segment.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,47}$"
_NAME = re.compile(NAME_PATTERN)
DEFAULT_PRESET = "rt_bn"  # TrainConfig's default, the shipped styles' network
DEFAULT_ITERS = 1000
PAINTING_SUFFIX = ".png"


class TrainingRefused(ValueError):
    """A training request that cannot be run as asked; the message is for the client."""


@dataclass(frozen=True)
class TrainRequest:
    name: str
    preset: str
    iters: int
    blend: tuple[tuple[str, float], ...]  # existing paintings and their weights; the upload weighs 1

    def options(self) -> dict[str, Any]:
        """As the job's options (JSON-friendly): what GET /v1/jobs/{id} shows."""
        return {"preset": self.preset, "iters": self.iters, "blend": blend_text(self.blend)}


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TrainingRefused(
            "name must be 1 to 48 characters: lower-case letters, digits, '-' and '_', starting with a letter or digit"
        )
    return name


def check_preset(preset: str | None) -> str:
    preset = preset or DEFAULT_PRESET
    if preset not in PRESETS:
        raise TrainingRefused(f"unknown preset {preset!r}; choose from {', '.join(sorted(PRESETS))}")
    return preset


def check_iters(iters: int | None, settings: Settings) -> int:
    iters = DEFAULT_ITERS if iters is None else iters
    if not 1 <= iters <= settings.train_max_iters:
        raise TrainingRefused(f"iterations must be between 1 and {settings.train_max_iters}")
    return iters


def parse_blend(text: str | None, settings: Settings) -> tuple[tuple[str, float], ...]:
    """'kandinsky:0.5,candy' -> existing paintings to blend the upload with, each weight relative to the
    upload's 1 (default 1)."""
    parts = [p.strip() for p in (text or "").split(",") if p.strip()]
    if len(parts) > settings.train_max_blend:
        raise TrainingRefused(f"blend at most {settings.train_max_blend} existing paintings")
    blend = []
    for part in parts:
        name, _, weight = part.partition(":")
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            w = math.nan
        if not (math.isfinite(w) and 0 < w <= 100):
            raise TrainingRefused(f"blend weight of {name!r} must be a number above 0 and at most 100")
        # Checked as a name before it touches the file system: the blend never names a path.
        if not _NAME.match(name) or find_painting(name, settings.style_dirs) is None:
            raise TrainingRefused(f"blend: there is no painting {name!r} on this server")
        blend.append((name, w))
    return tuple(blend)


def blend_text(blend: tuple[tuple[str, float], ...]) -> str:
    return ",".join(f"{name}:{weight:g}" for name, weight in blend)


class PaintingRefusal(NamedTuple):
    too_large: bool  # over a limit (413), else unusable (422)
    message: str


def painting_refusal(path: Path, settings: Settings) -> PaintingRefusal | None:
    """Why an uploaded painting cannot be trained on (None when it can), from its header."""
    try:
        with PIL.Image.open(path) as img:
            width, height = img.size
    except PIL.Image.DecompressionBombError:
        width = height = settings.max_image_pixels + 1
    except Exception:  # PIL's messages name the server's file: ours instead
        return PaintingRefusal(False, "not a readable image (send a JPEG, PNG, WebP, GIF, BMP or TIFF painting)")
    if width * height > settings.max_image_pixels:
        return PaintingRefusal(True, f"painting too large: more than {settings.max_image_pixels} pixels")
    side = settings.train_min_painting_side
    if min(width, height) < side:
        return PaintingRefusal(
            False, f"painting too small: {width}x{height}; its shorter side must be at least {side} pixels"
        )
    return None


def install_painting(source: Path, name: str, settings: Settings) -> Path:
    """Put the uploaded painting in settings.uploaded_styles_dir as <name>.png (decoded and re-encoded: whatever else
    the upload carried stays behind). A retry of the same job finds its own file and keeps it; any other
    painting of that name is refused."""
    try:
        image = load_rgb(source)
    except Exception:
        raise TrainingRefused("not a readable image (send a JPEG, PNG, WebP, GIF, BMP or TIFF painting)") from None
    folder = settings.uploaded_styles_dir
    target = folder / f"{name}{PAINTING_SUFFIX}"
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.{uuid.uuid4().hex[:8]}.partial{PAINTING_SUFFIX}"
    try:
        image.save(partial, "PNG")
        existing = find_painting(name, settings.style_dirs)
        if existing is not None:
            if existing == target and existing.read_bytes() == partial.read_bytes():
                return target  # this job's own painting, from an attempt that did not finish
            raise TrainingRefused(f"a painting named {name!r} already exists on this server")
        try:
            os.link(partial, target)  # fails if the name was taken meanwhile: never overwrites
        except FileExistsError:
            raise TrainingRefused(f"a painting named {name!r} already exists on this server") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


def style_spec(name: str, blend: tuple[tuple[str, float], ...]) -> str:
    """The TrainConfig style spec: the installed painting (weight 1), then the blended ones."""
    return ",".join([f"{name}:1", *(f"{other}:{weight:g}" for other, weight in blend)])


def train_overrides(request: TrainRequest, settings: Settings) -> dict[str, str]:
    """TrainConfig overrides for the job: the operator's settings.train_job_overrides, then the request."""
    return {
        **settings.train_job_overrides,
        "style": style_spec(request.name, request.blend),
        "name": request.name,
        "preset": request.preset,
        "iters": str(request.iters),
        "register": "true",
        "evaluate": "true",
    }


def train_request(
    name: str, preset: str | None, iters: int | None, blend: str | None, settings: Settings
) -> TrainRequest:
    """A checked request (TrainingRefused otherwise); the styles folder is read for the blend."""
    return TrainRequest(
        check_name(name), check_preset(preset), check_iters(iters, settings), parse_blend(blend, settings)
    )
