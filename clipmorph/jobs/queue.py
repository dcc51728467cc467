"""How the API hands a job to the workers: the queue entry, its time budget, where its result lands.

The API enqueues by the job function's dotted name ("worker.jobs.stylize_job"), so this module and
the API never import the worker: RQ resolves the name in the worker's process. The job's storage
(clipmorph.jobs.storage: a local folder or a bucket) holds its input and output; its meta holds the
style, the options and progress (written by the worker, read by GET /v1/jobs/{id}).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Any

import PIL.Image
from redis import Redis
from redis.lock import Lock
from rq import Callback, Queue, Retry
from rq.job import Dependency, Job

from clipmorph.jobs.storage import open_storage
from clipmorph.settings import Settings, get_settings
from clipmorph.video.probe import VideoInfo
from clipmorph.video.segments import Segment

# The job functions, run by a worker (worker/jobs.py).
VIDEO_JOB = "worker.jobs.stylize_job"
IMAGE_JOB = "worker.jobs.stylize_image_job"
TRAIN_JOB = "worker.jobs.train_job"
# A video longer than settings.segment_seconds (clipmorph.video.segments): one SEGMENT_JOB per segment, any
# worker taking any of them, and the video's own job (its id the video's) is the STITCH_JOB that joins the
# pieces, run once every segment job has ended (RQ depends_on; a failed segment lets it run, to fail the video).
SEGMENT_JOB = "worker.jobs.stylize_segment_job"
STITCH_JOB = "worker.jobs.stitch_job"
# Meta keys: the video job's ids of its segment jobs; a segment job's video id and segment number.
SEGMENTS_META = "segments"
VIDEO_META = "video"
SEGMENT_META = "segment"

# Frames stylized by all workers ever: a Redis counter so the API's /metrics sees every worker's work.
FRAMES_COUNTER_KEY = "clipmorph:metrics:frames_stylized"
# A video job's result: (its name in the job's storage, media type).
VIDEO_RESULT = ("output.mp4", "video/mp4")
# An image job's result, by the `format` of POST /v1/images: (its name in the job's storage, media type).
IMAGE_RESULTS = {
    "png": ("output.png", "image/png"),
    "jpeg": ("output.jpg", "image/jpeg"),
    "webp": ("output.webp", "image/webp"),
}
# A training job's result: the validation sheet of its last step (the model itself goes to the registry).
TRAIN_RESULT = ("output.jpg", "image/jpeg")
UNREADABLE_IMAGE = "not a readable image (send a JPEG, PNG, WebP, GIF, BMP or TIFF file)"


def job_timeout(frames: int | None, width: int, height: int, settings: Settings) -> int:
    """Seconds a video job may run: frames x megapixels x settings.job_seconds_per_megapixel_frame.

    Each frame counts as at least settings.job_min_frame_pixels (decoding, encoding and the
    network's rescaling cost something per frame however small it is); never below
    settings.job_min_timeout_seconds.
    """
    pixels = max(width * height, settings.job_min_frame_pixels)
    budget = (frames or 0) * pixels * settings.job_seconds_per_megapixel_frame / 1_000_000
    return max(settings.job_min_timeout_seconds, math.ceil(budget))


def segment_job_id(video_id: str, index: int) -> str:
    """A segment job's id: the video's and the segment's number (not a UUID: no route reaches it)."""
    return f"{video_id}-s{index:04d}"


def video_of(job_id: str) -> str:
    """The id of the video (the job storage's key) a job works for: its own, or a segment job's video."""
    head, sep, tail = job_id.rpartition("-s")
    return head if sep and len(head) == 36 and tail.isdigit() else job_id


def segment_ids(meta: dict[str, Any]) -> list[str]:
    """A video job's segment job ids ([] for a video that is not split)."""
    return list(meta.get(SEGMENTS_META) or [])


def enqueue_stylize(
    queue: Queue,
    job_id: str,
    style: str,
    options: dict[str, Any],
    info: VideoInfo,
    settings: Settings,
    segments: list[Segment] | None = None,
    model: tuple[str, str] | None = None,
) -> Job:
    """Queue the video's job; with `segments` (2 or more, clipmorph.video.segments.plan_segments), one job per
    segment and the video's job to stitch them. model: (registered name, version) that every segment uses,
    so a promotion while the video runs cannot mix two models in it (required with segments)."""
    if segments and len(segments) > 1:
        if model is None:
            raise ValueError("a video in segments needs its model version pinned")
        return _enqueue_segmented(queue, job_id, style, options, info, settings, segments, model)
    return _enqueue(
        queue,
        VIDEO_JOB,
        job_id,
        style,
        options,
        settings,
        description=f"stylize video {job_id} as {style}",
        timeout=job_timeout(info.frames, info.width, info.height, settings),
        meta={"frames": info.frames},
    )


def _enqueue_segmented(
    queue: Queue,
    job_id: str,
    style: str,
    options: dict[str, Any],
    info: VideoInfo,
    settings: Settings,
    segments: list[Segment],
    model: tuple[str, str],
) -> Job:
    ttl = settings.job_ttl_seconds
    ids = [segment_job_id(job_id, s.index) for s in segments]
    ref = f"{model[0]}/{model[1]}"
    jobs = [
        Queue.prepare_data(
            SEGMENT_JOB,
            args=(ref, options, segment.as_dict()),
            job_id=sid,
            description=f"stylize segment {segment.index + 1}/{len(segments)} of video {job_id} as {style}",
            # Its frames and its warm-up frames.
            timeout=job_timeout(segment.frames + settings.segment_warmup_frames, info.width, info.height, settings),
            ttl=ttl,
            result_ttl=ttl,
            failure_ttl=ttl,
            # Each segment keeps its own retries: a failed one is run again alone.
            retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
            meta={VIDEO_META: job_id, SEGMENT_META: segment.index, "frames": segment.frames, "progress": None},
        )
        for segment, sid in zip(segments, ids, strict=True)
    ]
    stitch = Queue.prepare_data(
        STITCH_JOB,
        args=(style, options),
        job_id=job_id,
        description=f"stitch the {len(segments)} segments of video {job_id} as {style}",
        depends_on=Dependency(jobs=ids, allow_failure=True),
        # A remux: reading and writing the file, with a bucket downloading the input and the pieces.
        timeout=settings.job_min_timeout_seconds,
        ttl=ttl,
        result_ttl=ttl,
        failure_ttl=ttl,
        retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
        on_failure=Callback(remove_partials),
        meta={
            "style": style,
            "options": options,
            "progress": None,
            "frames": info.frames,
            "model_name": model[0],
            "model_version": model[1],
            SEGMENTS_META: ids,
        },
    )
    return next(job for job in queue.enqueue_many([*jobs, stitch]) if job.id == job_id)


def enqueue_stylize_image(
    queue: Queue, job_id: str, style: str, options: dict[str, Any], size: tuple[int, int], settings: Settings
) -> Job:
    """Queue the image in the job's folder; options: max_side, strength, format (a key of IMAGE_RESULTS)."""
    if options.get("format") not in IMAGE_RESULTS:
        raise ValueError(f"format must be one of {', '.join(IMAGE_RESULTS)}")
    width, height = size
    return _enqueue(
        queue,
        IMAGE_JOB,
        job_id,
        style,
        options,
        settings,
        description=f"stylize image {job_id} as {style}",
        timeout=job_timeout(1, width, height, settings),  # one frame of the input's size: an upper bound
        meta={"kind": "image", "width": width, "height": height},
    )


def train_timeout(iters: int, settings: Settings) -> int:
    """Seconds a training job may run: its iterations at settings.train_seconds_per_iteration, then the
    evaluation and gate (settings.train_eval_seconds)."""
    return math.ceil(iters * settings.train_seconds_per_iteration) + settings.train_eval_seconds


def enqueue_train(queue: Queue, job_id: str, name: str, options: dict[str, Any], settings: Settings) -> Job:
    """Queue training of the style `name` on the painting stored as the job's input.

    options: preset, iters, blend (a style spec of existing paintings, "" for none); the worker adds
    settings.train_job_overrides. `queue` is the train queue (settings.train_queue_name).
    """
    return _enqueue(
        queue,
        TRAIN_JOB,
        job_id,
        name,
        options,
        settings,
        description=f"train style {name}",
        timeout=train_timeout(int(options["iters"]), settings),
        meta={"kind": "train"},
    )


# Held by the API from its checks of a new style's name until the training job is queued: two uploads naming
# the same style at the same moment would otherwise both pass styles_in_training before either is queued.
STYLE_NAME_LOCK = "clipmorph:style-name:{name}"
STYLE_NAME_LOCK_SECONDS = 600  # an upper bound on checking and storing one painting; expires if the API dies


def reserve_style_name(connection: Redis, name: str) -> Lock | None:
    """The name's lock, held (release it once the job is queued or refused), or None when another request
    holds it. redis-py's Lock: a token per holder, so a request never releases another's."""
    lock = connection.lock(STYLE_NAME_LOCK.format(name=name), timeout=STYLE_NAME_LOCK_SECONDS, blocking=False)
    return lock if lock.acquire() else None


def styles_in_training(queue: Queue) -> set[str]:
    """The names of the styles the train queue holds a job for, queued or running (a small queue)."""
    ids = [*queue.get_job_ids(), *queue.started_job_registry.get_job_ids(cleanup=False)]
    jobs = Job.fetch_many(ids, connection=queue.connection)
    return {str(job.meta.get("style")) for job in jobs if job is not None}


def _enqueue(
    queue: Queue,
    func: str,
    job_id: str,
    style: str,
    options: dict[str, Any],
    settings: Settings,
    description: str,
    timeout: int,
    meta: dict[str, Any],
) -> Job:
    ttl = settings.job_ttl_seconds
    return queue.enqueue(
        func,
        style,
        options,
        job_id=job_id,
        description=description,
        job_timeout=timeout,
        ttl=ttl,  # a job still queued after this is dropped
        result_ttl=ttl,
        failure_ttl=ttl,
        retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
        on_failure=Callback(remove_partials),
        meta={"style": style, "options": options, "progress": None, **meta},
    )


def result_name(meta: dict[str, Any]) -> tuple[str, str]:
    """A job's output name and media type: output.mp4 for a video, the image job's file in its format, a
    training job's last validation sheet."""
    if meta.get("kind") == "train":
        return TRAIN_RESULT
    if meta.get("kind") == "image":
        return IMAGE_RESULTS[(meta.get("options") or {}).get("format", "png")]
    return VIDEO_RESULT


def image_refusal(path: Path, max_pixels: int) -> tuple[bool, str]:
    """Why an image cannot be stylized, in words of our own (PIL's messages name the server's file).

    -> (too large, message): over `max_pixels` by its header, else not readable.
    """
    try:
        with PIL.Image.open(path) as img:  # reads the header only
            pixels = img.width * img.height
    except PIL.Image.DecompressionBombError:
        pixels = max_pixels + 1
    except Exception:  # any other failure to read it: not an image we can read
        pixels = 0
    if pixels > max_pixels:
        return True, f"image too large: more than {max_pixels} pixels"
    return False, UNREADABLE_IMAGE


def remove_partials(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None = None,
    exc: BaseException | None = None,
    tb: TracebackType | None = None,
) -> None:
    """RQ failure callback, also for a job abandoned by a dead worker: drop its half-written files."""
    open_storage(get_settings()).remove_partials(video_of(job.id))
