"""RQ jobs: plain functions a worker runs, plus how the API enqueues them.

A job's id is the UUID of its folder (worker.files.JobFiles). Its meta holds
what a status request shows while it runs: the model name and version in use,
and progress (frames done/total, fps, ETA), saved at most twice a second.

Failures: bad input (VideoError, including a limit found mid-stream), an
unknown style or a missing input fail the job at once, with a message for the
client in meta["error"]: running it again would fail the same way. Anything
else (a worker killed mid-job, a timeout) keeps RQ's retries. A Redis restart is
waited out (the worker's connection retries with backoff, worker.runner); a
progress write that still fails is skipped, never fatal.
Half-written files are removed on every failure, and when a new attempt starts.
A job ends exactly once, finished or cancelled (worker.settle).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis import Redis
from rq import Callback, Queue, Retry
from rq.job import Job, get_current_job

from clipmorph.inference import ImageError, StylizeOptions, norm_smoothing
from clipmorph.registry import ModelNotFoundError
from clipmorph.settings import Settings, get_settings
from clipmorph.video import (
    Progress,
    StylizeCancelled,
    VideoError,
    VideoInfo,
    VideoLimitError,
    public_message,
    stylize_video,
)
from worker import settle
from worker.files import JobFiles
from worker.models import ModelCache

log = logging.getLogger(__name__)

# Frames stylized by all workers ever: a Redis counter so the API's /metrics sees every worker's work.
FRAMES_COUNTER_KEY = "clipmorph:metrics:frames_stylized"
PROGRESS_SAVE_SECONDS = 0.5

# Set by the worker (worker.runner) when RQ asks it to stop the running job; the job polls it between frames.
cancel_requested = threading.Event()
_models: ModelCache | None = None


class JobCancelled(Exception):
    """The job was stopped on request (DELETE /v1/jobs/{id})."""


class InputMissing(LookupError):
    """The job's folder has no input: it was deleted (cancelled) or expired."""


# Failures that would repeat on every attempt: never retried.
DETERMINISTIC_ERRORS = (VideoError, ImageError, ModelNotFoundError, InputMissing)


def models() -> ModelCache:
    """The process-wide model cache: models stay loaded from one job to the next."""
    global _models
    if _models is None:
        _models = ModelCache()
    return _models


def job_timeout(frames: int | None, width: int, height: int, settings: Settings) -> int:
    """Seconds a video job may run: frames x megapixels x settings.job_seconds_per_megapixel_frame.

    Each frame counts as at least settings.job_min_frame_pixels (decoding, encoding and the
    network's rescaling cost something per frame however small it is); never below
    settings.job_min_timeout_seconds.
    """
    pixels = max(width * height, settings.job_min_frame_pixels)
    budget = (frames or 0) * pixels * settings.job_seconds_per_megapixel_frame / 1_000_000
    return max(settings.job_min_timeout_seconds, math.ceil(budget))


def enqueue_stylize(
    queue: Queue, job_id: str, style: str, options: dict[str, Any], info: VideoInfo, settings: Settings
) -> Job:
    ttl = settings.job_ttl_seconds
    return queue.enqueue(
        stylize_job,
        style,
        options,
        job_id=job_id,
        description=f"stylize video {job_id} as {style}",
        job_timeout=job_timeout(info.frames, info.width, info.height, settings),
        ttl=ttl,  # a job still queued after this is dropped
        result_ttl=ttl,
        failure_ttl=ttl,
        retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
        on_failure=Callback(remove_partials),
        meta={"style": style, "options": options, "frames": info.frames, "progress": None},
    )


def remove_partials(
    job: Job,
    connection: Redis,
    exc_type: type[BaseException] | None = None,
    exc: BaseException | None = None,
    tb: TracebackType | None = None,
) -> None:
    """RQ failure callback, also for a job abandoned by a dead worker: drop its half-written files."""
    JobFiles.of(get_settings().jobs_dir, job.id).remove_partials()


class ProgressReporter:
    """Progress callback for stylize_video: writes job.meta["progress"] at most every PROGRESS_SAVE_SECONDS."""

    def __init__(self, job: Job, connection: Redis, interval: float = PROGRESS_SAVE_SECONDS) -> None:
        self.job = job
        self.connection = connection
        self.interval = interval
        self._saved_at = -math.inf
        self._frames_counted = 0

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        last = progress.total is not None and progress.done >= progress.total
        if not last and now - self._saved_at < self.interval:
            return
        self._saved_at = now
        self.job.meta["progress"] = dataclasses.asdict(progress)
        try:
            self.job.save_meta()
            self.connection.incrby(FRAMES_COUNTER_KEY, progress.done - self._frames_counted)
        except redis.RedisError:
            # The connection already retried for worker_redis_patience_seconds: progress is only for show,
            # so the frames go on; the next report saves it again (and counts these frames).
            log.warning("job %s: could not save progress, Redis unavailable; continuing", self.job.id)
            return
        self._frames_counted = progress.done


def _no_retry(job: Job, message: str | None = None) -> None:
    """Fail without retry (the worker's failure handling reads this job object), with a message for the client."""
    job.retries_left = 0
    if message:
        job.meta["error"] = message
        job.save_meta()


def _client_message(error: BaseException, source: Path | None) -> str:
    """What the client reads, worded as the upload's refusals are (api.routers.jobs.probe_upload)."""
    if isinstance(error, VideoLimitError):
        return f"video too large: {public_message(error, source or Path())}"
    if isinstance(error, VideoError):
        return f"not a usable video: {public_message(error, source or Path())}"
    return str(error)


def _cancelled_by_delete(job: Job) -> bool:
    try:
        return settle.is_cancelled(job.connection, job.id)
    except redis.RedisError:  # Redis itself may be what failed: then RQ's retries decide
        return False


def stylize_job(style: str, options: dict[str, Any]) -> dict[str, Any]:
    """Stylize the job's uploaded video with the style's current champion; -> what was made and with which model."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("stylize_job runs inside an RQ worker")
    settings = get_settings()
    files = JobFiles.of(settings.jobs_dir, job.id)
    files.remove_partials()  # left by an earlier attempt whose worker was killed
    source: Path | None = None
    try:
        if settle.is_cancelled(job.connection, job.id):
            raise JobCancelled(f"job {job.id} cancelled")
        source = _input_of(files)
        result = _stylize(job, files, source, style, options)
        if settle.finish(job.connection, job.id, settings.job_ttl_seconds) != settle.FINISHED:
            raise JobCancelled(f"job {job.id} cancelled")  # a DELETE came first: it wins
        return result
    except BaseException as e:
        files.remove_partials()
        if _cancelled_by_delete(job):
            files.delete()
            _no_retry(job)
            raise JobCancelled(f"job {job.id} cancelled") from None
        if isinstance(e, DETERMINISTIC_ERRORS):
            _no_retry(job, _client_message(e, source))
        raise  # anything else (a timeout, a worker shutting down, Redis) keeps its retries


def _input_of(files: JobFiles) -> Path:
    try:
        return files.find_input()
    except FileNotFoundError:
        raise InputMissing("the job's video is gone (deleted or expired)") from None


def _stylize(job: Job, files: JobFiles, source: Path, style: str, options: dict[str, Any]) -> dict[str, Any]:
    loaded = models().get(style)
    job.meta.update(model_name=loaded.name, model_version=loaded.version)
    job.save_meta()
    log.info("job %s: %s with %s v%s", job.id, source.name, loaded.name, loaded.version)
    stylize_options = StylizeOptions(**options, norm_smoothing=norm_smoothing(loaded.info))
    try:
        info = stylize_video(
            source,
            files.output,  # written to a temp file and renamed when complete: readers never see half a video
            loaded.model,
            stylize_options,
            progress=ProgressReporter(job, job.connection),
            # The stop command, or the DELETE's mark when the command did not reach this worker.
            should_cancel=lambda: cancel_requested.is_set() or _cancelled_by_delete(job),
        )
    except StylizeCancelled:
        raise JobCancelled(f"job {job.id} cancelled") from None
    return {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "frames": info.frames,
        "width": info.width,
        "height": info.height,
        "duration": info.duration,
        "has_audio": info.has_audio,
    }
