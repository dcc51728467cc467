"""How an RQ job looks from the API: its state, progress, model and error.

A DELETE that won (clipmorph.jobs.settle) makes a job read "cancelled" at once, whatever RQ's
status still says while the worker stops. Error messages are the worker's message
for the client (bad input, unknown style) or a fixed sentence: never an exception's
text, which can name server paths.
"""

from __future__ import annotations

import contextlib

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import TimerDeathPenalty

from api import schemas
from clipmorph.jobs import settle
from clipmorph.jobs.queue import segment_ids

_STATES = {
    JobStatus.CREATED: schemas.JobState.queued,
    JobStatus.QUEUED: schemas.JobState.queued,
    JobStatus.DEFERRED: schemas.JobState.queued,
    JobStatus.SCHEDULED: schemas.JobState.queued,
    JobStatus.READY_TO_ENQUEUE: schemas.JobState.queued,
    JobStatus.RATE_LIMITED: schemas.JobState.queued,
    JobStatus.STARTED: schemas.JobState.running,
    JobStatus.FINISHED: schemas.JobState.finished,
    JobStatus.FAILED: schemas.JobState.failed,
    JobStatus.STOPPED: schemas.JobState.cancelled,
    JobStatus.CANCELED: schemas.JobState.cancelled,
}
_ABANDONED = "the worker running this job stopped responding (killed or crashed) and no retries were left"
_TIMED_OUT = "the job ran past its time limit and no retries were left"
_INTERNAL = "the job failed on the worker (an internal error, in the worker's log) and no retries were left"


def fetch(queue: Queue, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        return None


def state_of(job: Job, ended: str | None = None) -> schemas.JobState:
    """`ended`: settle.ended() for the job (a DELETE that won makes it cancelled)."""
    if ended == settle.CANCELLED:
        return schemas.JobState.cancelled
    return _STATES.get(job.get_status(refresh=False), schemas.JobState.queued)


def reap_if_abandoned(queue: Queue, job: Job) -> None:
    """A 'running' job whose worker stopped sending heartbeats is retried or failed now, not left running.

    Workers do this in their maintenance passes; doing it here too means a
    client polling a dead worker's job gets an answer even when no worker is left.
    """
    if job.get_status(refresh=False) != JobStatus.STARTED:
        return
    # The job's own queue: a training job's is the train queue (its origin).
    if job.origin and job.origin != queue.name:
        queue = Queue(job.origin, connection=queue.connection)
    # Timer-based: a failure callback under the default SIGALRM penalty fails off the main thread.
    registry = StartedJobRegistry(queue.name, connection=queue.connection, death_penalty_class=TimerDeathPenalty)
    if job.id not in registry.get_expired_job_ids():
        return
    if queue.acquire_maintenance_lock():  # the same lock workers take, so a job is never reaped twice
        try:
            registry.cleanup()
        finally:
            queue.release_maintenance_lock()
    job.refresh()


def error_of(job: Job, state: schemas.JobState) -> str | None:
    if state is not schemas.JobState.failed:
        return None
    public = job.get_meta(refresh=False).get("error")
    if public:
        return public
    result = None
    with contextlib.suppress(Exception):
        result = job.latest_result()
    text = (result.exc_string if result else None) or job.exc_info or ""
    if "AbandonedJobError" in text:
        return _ABANDONED
    if "JobTimeoutException" in text:
        return _TIMED_OUT
    return _INTERNAL


def segments_of(job: Job) -> list[Job | None]:
    """A video job's segment jobs, in order (one Redis round trip); [] for a video that is not split."""
    ids = segment_ids(job.get_meta(refresh=False))
    return Job.fetch_many(ids, connection=job.connection) if ids else []


# While the video's own job waits for its segments (deferred), it is running once any segment started.
_UNDER_WAY = (JobStatus.STARTED, JobStatus.FINISHED, JobStatus.FAILED)


def _segmented_progress(job: Job, segments: list[Job | None], state: schemas.JobState) -> dict | None:
    """Frames done over all segments, their summed rate (of those running) and the ETA at that rate."""
    total = job.get_meta(refresh=False).get("frames")
    done, fps = 0, 0.0
    for segment in segments:
        progress = (segment.get_meta(refresh=False).get("progress") if segment else None) or {}
        done += progress.get("done") or 0
        if segment is not None and segment.get_status(refresh=False) == JobStatus.STARTED:
            fps += progress.get("fps") or 0.0
    if state is schemas.JobState.finished and total is not None:
        done = total
    if not done and state is schemas.JobState.queued:
        return None
    eta = (total - done) / fps if total is not None and fps > 0 else None
    return {"done": done, "total": total, "fps": round(fps, 3), "eta_seconds": eta}


def describe(
    job: Job, result_url: str, ended: str | None = None, segments: list[Job | None] | None = None
) -> schemas.Job:
    """segments: the video's segment jobs (segments_of) when it is split: its progress sums theirs."""
    meta = job.get_meta(refresh=False)
    state = state_of(job, ended)
    progress = meta.get("progress")
    if segments:
        if state is schemas.JobState.queued and any(
            s is not None and s.get_status(refresh=False) in _UNDER_WAY for s in segments
        ):
            state = schemas.JobState.running
        progress = _segmented_progress(job, segments, state)
    return schemas.Job(
        id=job.id,
        status=state,
        style=meta.get("style"),
        options=meta.get("options") or {},
        progress=schemas.Progress(**progress) if progress else None,
        model_name=meta.get("model_name"),
        model_version=meta.get("model_version"),
        created_at=job.created_at,
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
        ended_at=job.ended_at,
        error=error_of(job, state),
        retries_left=job.retries_left,
        result_url=result_url if state is schemas.JobState.finished else None,
        kind=meta.get("kind") or "video",
        losses=meta.get("losses"),
        preview=meta.get("preview"),
        preview_step=meta.get("preview_step"),
        device=meta.get("device"),
        champion=meta.get("champion"),
    )
