"""How an RQ job looks from the API: its state, progress, model and error."""

from __future__ import annotations

import contextlib

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from api import schemas

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


def fetch(queue: Queue, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=queue.connection)
    except NoSuchJobError:
        return None


def state_of(job: Job) -> schemas.JobState:
    return _STATES.get(job.get_status(refresh=False), schemas.JobState.queued)


def reap_if_abandoned(queue: Queue, job: Job) -> None:
    """A 'running' job whose worker stopped sending heartbeats is retried or failed now, not left running.

    Workers do this in their maintenance passes; doing it here too means a
    client polling a dead worker's job gets an answer even when no worker is left.
    """
    if job.get_status(refresh=False) != JobStatus.STARTED:
        return
    registry = StartedJobRegistry(queue.name, connection=queue.connection)
    if job.id not in registry.get_expired_job_ids():
        return
    if queue.acquire_maintenance_lock():  # the same lock workers take, so a job is never reaped twice
        try:
            registry.cleanup()
        finally:
            queue.release_maintenance_lock()
    job.refresh()


def error_of(job: Job) -> str | None:
    if job.get_status(refresh=False) != JobStatus.FAILED:
        return None
    result = None
    with contextlib.suppress(Exception):
        result = job.latest_result()
    text = (result.exc_string if result else None) or job.exc_info or ""
    if "AbandonedJobError" in text:
        return _ABANDONED
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "failed without an error message"


def describe(job: Job, result_url: str) -> schemas.Job:
    meta = job.get_meta(refresh=False)
    state = state_of(job)
    progress = meta.get("progress")
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
        error=error_of(job),
        retries_left=job.retries_left,
        result_url=result_url if state is schemas.JobState.finished else None,
    )
