"""RQ jobs: plain functions a worker runs, plus how the API enqueues them.

A job's id is the UUID of its folder (worker.files.JobFiles). Its meta holds
what a status request shows while it runs: the model name and version in use,
and progress (frames done/total, fps, ETA), saved at most twice a second.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from typing import Any

from redis import Redis
from rq import Queue, Retry
from rq.job import Job, get_current_job

from clipmorph.inference import StylizeOptions, norm_smoothing
from clipmorph.settings import Settings, get_settings
from clipmorph.video import Progress, StylizeCancelled, stylize_video
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


def models() -> ModelCache:
    """The process-wide model cache: models stay loaded from one job to the next."""
    global _models
    if _models is None:
        _models = ModelCache()
    return _models


def job_timeout(frames: int | None, settings: Settings) -> int:
    """Seconds a video job may run: proportional to its length, never below the configured minimum."""
    return max(settings.job_min_timeout_seconds, math.ceil(settings.job_seconds_per_frame * (frames or 0)))


def enqueue_stylize(
    queue: Queue, job_id: str, style: str, options: dict[str, Any], frames: int | None, settings: Settings
) -> Job:
    ttl = settings.job_ttl_seconds
    return queue.enqueue(
        stylize_job,
        style,
        options,
        job_id=job_id,
        description=f"stylize video {job_id} as {style}",
        job_timeout=job_timeout(frames, settings),
        ttl=ttl,  # a job still queued after this is dropped
        result_ttl=ttl,
        failure_ttl=ttl,
        retry=Retry(max=settings.job_retries) if settings.job_retries > 0 else None,
        meta={"style": style, "options": options, "frames": frames, "progress": None},
    )


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
        self.job.save_meta()
        self.connection.incrby(FRAMES_COUNTER_KEY, progress.done - self._frames_counted)
        self._frames_counted = progress.done


def stylize_job(style: str, options: dict[str, Any]) -> dict[str, Any]:
    """Stylize the job's uploaded video with the style's current champion; -> what was made and with which model."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("stylize_job runs inside an RQ worker")
    files = JobFiles.of(get_settings().jobs_dir, job.id)
    source = files.find_input()
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
            should_cancel=cancel_requested.is_set,
        )
    except StylizeCancelled:
        files.delete()
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
