"""Request and response bodies of the REST API (pydantic v2); no logic here."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field

from clipmorph.video.contrast import MAX_CONTRAST
from clipmorph.video.inference import DEFAULT_STABILIZE

STYLE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    finished = "finished"
    failed = "failed"
    cancelled = "cancelled"


class Stabilize(StrEnum):
    none = "none"
    norm = "norm"
    flow = "flow"
    both = "both"


def _stabilize_alias(value: object) -> object:
    # HTML checkboxes send true/false: on means the default treatment.
    on = DEFAULT_STABILIZE
    aliases = {"true": on, "on": on, "1": on, "false": "none", "off": "none", "0": "none"}
    return aliases.get(str(value).lower(), value) if isinstance(value, str | bool) else value


def _blank_is_none(value: object) -> object:
    return None if value == "" else value


def _zero_or_at_least_16(value: int | None) -> int | None:
    if value is not None and value != 0 and value < 16:
        raise ValueError("max_side must be 0 (full size) or at least 16")
    return value


class StyleForm(BaseModel):
    style: str = Field(pattern=STYLE_PATTERN, description="A registered style, e.g. kandinsky (its champion is used).")
    max_side: Annotated[int | None, BeforeValidator(_blank_is_none), AfterValidator(_zero_or_at_least_16)] = Field(
        None,
        description="Stylize at this longest side (pixels), then scale back; 0 = full size; "
        "empty = the model's frame side (the size its strokes were learned at).",
    )
    strength: float = Field(1.0, ge=0.0, le=1.0, description="0 = the original, 1 = fully stylized.")
    contrast: Annotated[float | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        ge=0.0,
        le=MAX_CONTRAST,
        description="Local contrast given to the network (CLAHE clip limit, 0 = off); "
        "empty = 2 for images, 0 for videos.",
    )


class JobForm(StyleForm):
    """Fields of POST /v1/jobs besides the `file` part."""

    stabilize: Annotated[Stabilize, BeforeValidator(_stabilize_alias)] = Field(
        Stabilize(DEFAULT_STABILIZE),
        description="Flicker reduction: none, norm (smoothed norm statistics), flow, both.",
    )


class ImageForm(StyleForm):
    """Fields of POST /v1/images besides the `file` part."""

    format: str = Field("png", pattern=r"^(png|jpeg|webp)$", description="Encoding of the stylized image.")


class StyleTrainForm(BaseModel):
    """Fields of POST /v1/styles besides the `file` part (the painting). Checked by clipmorph.jobs.training."""

    name: str = Field(description="The new style's name: lower-case letters, digits, '-' and '_' (1 to 48).")
    preset: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Network preset (default rt_bn, the shipped styles' network)."
    )
    iterations: Annotated[int | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="Training steps (default 1000; at most CLIPMORPH_TRAIN_MAX_ITERS)."
    )
    blend: Annotated[str | None, BeforeValidator(_blank_is_none)] = Field(
        None,
        description="Blend the painting with existing ones: 'kandinsky:0.5,candy' (weights relative to the "
        "upload's 1; default 1).",
    )


class StyleTrainingCreated(BaseModel):
    id: str
    status: JobState
    status_url: str
    name: str
    options: dict = Field(description="preset, iters and blend as the job will use them.")


class Progress(BaseModel):
    done: int = Field(
        description="Frames stylized so far (an image job: network passes, one per tile and one more; a training "
        "job: steps)."
    )
    total: int | None = Field(
        None, description="Frames in the video, when known (an image job: passes in all; a training job: steps)."
    )
    fps: float = Field(0.0, description="Frames (an image job: passes; a training job: steps) per second.")
    eta_seconds: float | None = None


class VideoSummary(BaseModel):
    width: int
    height: int
    frames: int | None
    duration: float | None
    fps: float | None
    has_audio: bool


class JobCreated(BaseModel):
    id: str
    status: JobState
    status_url: str
    result_url: str
    input: VideoSummary


class ImageSummary(BaseModel):
    width: int
    height: int


class ImageJobCreated(BaseModel):
    """POST /v1/images for an image over CLIPMORPH_MAX_SYNC_IMAGE_PIXELS: a job, as POST /v1/jobs makes one."""

    id: str
    status: JobState
    status_url: str
    result_url: str = Field(description="The stylized image once finished, at the input's size and in its format.")
    input: ImageSummary


class Job(BaseModel):
    id: str
    status: JobState
    style: str | None = None
    options: dict = Field(default_factory=dict)
    progress: Progress | None = None
    model_name: str | None = Field(None, description="Registered model that stylized (or is stylizing) the video.")
    model_version: str | None = None
    created_at: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    retries_left: int | None = None
    queue_position: int | None = Field(
        None, description="While queued: jobs ahead of this one in the queue (0 = next for a free worker)."
    )
    result_url: str | None = Field(
        None, description="Set once the job has finished (a training job: its last validation sheet, JPEG)."
    )
    kind: str = Field("video", description="video, image or train.")
    losses: dict[str, float] | None = Field(None, description="A training job: the loss terms of its latest step.")
    preview: str | None = Field(
        None,
        description="A training job: its latest validation sheet (photos above, stylized below) as a small JPEG "
        "data URL.",
    )
    preview_step: int | None = Field(None, description="The step that preview was rendered at.")
    device: str | None = Field(None, description="A training job: what it trains on, cuda or cpu.")
    champion: bool | None = Field(
        None, description="A finished training job: whether its version passed the gate and became champion."
    )
    stream_url: str | None = Field(
        None,
        description="Set once the job has finished: the result URL with an expiring signature in the query, for "
        "players that cannot send an Authorization header (an HTML <video> streams it with Range requests).",
    )


class StyleTrait(BaseModel):
    aspect: str = Field(description="strength, steadiness or speed.")
    words: str = Field(description="The champion's measured behaviour in plain words.")


class Figure(BaseModel):
    name: str = Field(description="A metric name, e.g. warping_ratio.")
    value: float
    meaning: str = Field(description="What the number measures and which way is better.")


class ModelSummary(BaseModel):
    name: str = Field(description="The style name used in requests.")
    registered_name: str
    description: str | None = None
    champion_version: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict, description="Metrics logged on the champion's run.")
    traits: list[StyleTrait] = Field(default_factory=list, description="How strong, steady and fast, in words.")
    figures: list[Figure] = Field(default_factory=list, description="The measurements the traits are based on.")
    preview_url: str | None = Field(None, description="A photo stylized by the champion (changes with the champion).")
    painting_url: str | None = Field(None, description="A thumbnail of the painting the style was learned from.")


class ModelList(BaseModel):
    models: list[ModelSummary]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str = Field(description="ok when redis, registry, workers and storage all are; else unavailable.")
    redis: bool = Field(description="Redis answers.")
    registry: bool = Field(description="The MLflow model registry answers.")
    workers: bool = Field(description="At least one live worker serves the queue (RQ worker registry).")
    storage: bool = Field(description="The job storage (jobs folder or bucket) can be written to.")


class PromotionRequest(BaseModel):
    version: str = Field(pattern=r"^\d+$", description="The registered version to make champion.")
    force: bool = Field(False, description="Override a failing gate; needs a reason.")
    reason: str | None = Field(None, max_length=1000)


class GateCheck(BaseModel):
    metric: str
    candidate: float
    champion: float
    limit: float
    higher_is_better: bool
    passed: bool


class Promotion(BaseModel):
    name: str
    registered_name: str
    version: str
    promoted: bool = Field(description="The version is the champion after this request.")
    changed: bool = Field(description="The champion alias moved.")
    previous: str | None
    forced: bool
    message: str
    checks: list[GateCheck]
    candidate_metrics: dict[str, float]
    champion_metrics: dict[str, float]
