"""Video jobs: upload and enqueue, status, result (with HTTP Range), cancel.

An upload streams into a local staging folder, is probed there, then becomes the job's input in
the job storage (clipmorph.jobs.storage: the local jobs folder, or a bucket). A result is served
from the local folder (Starlette answers Range), or from a bucket through a 307 to a presigned
URL (the bucket answers Range), behind the same bearer token or signed link either way.

Uploads over a limit the probe can see (frame size, frame count, duration) are refused
with 413; the worker checks every frame again and fails the job with the same message.
A DELETE and a finishing worker race through clipmorph.jobs.settle: a job still queued or
running is cancelled (204, and it reads "cancelled" from then on); a job that already
finished keeps its result and the DELETE gets 409.

A video longer than settings.segment_seconds is planned into segments here at upload (a packet
scan) and queued as one job per segment plus the video's stitch job (clipmorph.jobs.queue): its
status sums the segments' progress, and its DELETE stops every segment too.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse
from pydantic import ValidationError
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation
from rq.job import Job, JobStatus

from api import jobstate, schemas
from api.deps import Services, ServicesDep, signed_result_url
from api.uploads import ensure_disk_space, openapi_multipart, receive_form
from clipmorph.jobs import settle
from clipmorph.jobs.files import input_suffix
from clipmorph.jobs.queue import enqueue_stylize, result_name, segment_ids
from clipmorph.jobs.storage import Redirect, StorageUnavailable
from clipmorph.registry import ModelNotFoundError, get_version
from clipmorph.settings import Settings
from clipmorph.video.probe import VideoError, VideoInfo, VideoLimitError, VideoLimits, probe, public_message
from clipmorph.video.segments import Segment, plan_segments

log = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])
# The result has a router of its own: besides the bearer token it accepts the signed link of stream_url
# (api.main mounts it with deps.require_token_or_signature), because <video src> sends no headers.
result_router = APIRouter(prefix="/jobs", tags=["jobs"])

FILE_FIELD = "file"
_UPLOAD_SCHEMA = openapi_multipart(schemas.JobForm, FILE_FIELD, "The video.")


def parse_form(model: type[schemas.StyleForm], fields: dict[str, str]) -> Any:
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        detail = [{k: v for k, v in err.items() if k in ("loc", "msg", "type")} for err in e.errors()]
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail) from None


def check_style(services: Services, style: str) -> tuple[str, str]:
    """422 unless the style has a champion in the registry (blocking: run in a thread); -> (name, version)."""
    try:
        version = get_version(services.registry(), style)
    except ModelNotFoundError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown style {style!r}: {e}") from None
    return version.name, str(version.version)


def probe_upload(path: Path, settings: Settings) -> VideoInfo:
    """422 unless the file is a video with frames in it, 413 past a limit (blocking: run in a thread)."""
    try:
        info = probe(path, limits=VideoLimits.from_settings(settings))
    except VideoLimitError as e:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"video too large: {public_message(e, path)}") from None
    except VideoError as e:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"not a usable video: {public_message(e, path)}"
        ) from None
    if info.frames == 0:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "not a usable video: it has no frames")
    return info


def plan_upload(path: Path, info: VideoInfo, settings: Settings) -> list[Segment]:
    """The video's segments when it is longer than settings.segment_seconds, else [] (blocking: run in a thread).

    Planned here, where the file is on local disk already: a packet scan, no decoding.
    """
    if settings.segment_seconds <= 0 or (info.duration or 0) <= settings.segment_seconds:
        return []
    try:
        return plan_segments(path, settings.segment_seconds, settings.segment_warmup_frames)
    except VideoError:  # it passed the probe; one job for the whole video reports whatever is wrong
        log.warning("could not plan segments for %s; one job for the whole video", path.parent.name)
        return []


def _urls(request: Request, job_id: str) -> tuple[str, str]:
    return (
        request.app.url_path_for("get_job", job_id=job_id),
        request.app.url_path_for("get_job_result", job_id=job_id),
    )


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=schemas.JobCreated,
    openapi_extra=_UPLOAD_SCHEMA,
    summary="Upload a video to stylize",
    responses={
        413: {"description": "Upload, frames, frame count or duration over a limit"},
        507: {"description": "Not enough free disk space for the upload"},
        408: {"description": "The upload took longer than the upload deadline"},
        429: {"description": "Too many uploads in progress from this client; see Retry-After"},
        422: {"description": "Not a video, or unknown style"},
        503: {"description": "The job queue (Redis) or the job storage is unavailable; see Retry-After"},
    },
)
async def create_job(request: Request, services: ServicesDep) -> schemas.JobCreated:
    settings = services.settings
    # Fail before receiving what may be hundreds of megabytes that could not be queued anyway.
    await run_in_threadpool(services.redis.ping)
    storage = services.storage
    ensure_disk_space(request, storage.staging_dir, settings.max_upload_bytes, settings.min_free_disk_bytes)
    job_id = str(uuid.uuid4())
    staged = storage.staging(job_id)  # with the local storage, the job's own folder
    staged.dir.mkdir(parents=True)
    stored = False
    try:
        with staged.upload.open("wb") as sink:
            received = await receive_form(
                request, FILE_FIELD, sink, settings.max_upload_bytes, settings.upload_deadline_seconds
            )
        if not received.has_file:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"no video: send it as the {FILE_FIELD!r} part")
        if received.size == 0:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the uploaded file is empty")
        form = parse_form(schemas.JobForm, received.fields)
        if form.max_side is not None and form.max_side > settings.max_video_side:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"max_side may be at most {settings.max_video_side}"
            )
        model = await run_in_threadpool(check_style, services, form.style)
        source = staged.input(input_suffix(received.filename))
        staged.upload.rename(source)
        info = await run_in_threadpool(probe_upload, source, settings)
        segments = await run_in_threadpool(plan_upload, source, info, settings)
        options = {
            "max_side": form.max_side,
            "strength": form.strength,
            "stabilize": form.stabilize.value,
            "contrast": form.contrast,
        }
        await run_in_threadpool(storage.store_input, job_id, staged)
        stored = True
        await run_in_threadpool(
            enqueue_stylize, services.queue, job_id, form.style, options, info, settings, segments, model
        )
    except BaseException:
        staged.delete()
        if stored:
            forget_input(services, job_id)
        raise
    status_url, result_url = _urls(request, job_id)
    log.info("job %s queued: %s, %d bytes, %s", job_id, form.style, received.size, options)
    return schemas.JobCreated(
        id=job_id,
        status=schemas.JobState.queued,
        status_url=status_url,
        result_url=result_url,
        input=schemas.VideoSummary.model_validate(info, from_attributes=True),
    )


def forget_input(services: Services, job_id: str) -> None:
    """Delete a stored input whose job could not be queued (blocking; rare: Redis failed after its ping)."""
    try:
        services.storage.delete(job_id)
    except StorageUnavailable:
        log.warning("job %s: could not delete its unqueued input; the expiry sweep will", job_id)


def _job_or_404(services: Services, job_id: uuid.UUID):
    job = jobstate.fetch(services.queue, str(job_id))
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id} (never created, or expired)")
    return job


@router.get("/{job_id}", response_model=schemas.Job, summary="A job's status and progress")
def get_job(job_id: uuid.UUID, request: Request, services: ServicesDep) -> schemas.Job:
    job = _job_or_404(services, job_id)
    jobstate.reap_if_abandoned(services.queue, job)
    result_url = _urls(request, job.id)[1]
    segments = jobstate.segments_of(job)
    described = jobstate.describe(job, result_url, settle.ended(services.redis, job.id), segments)
    if described.status is schemas.JobState.queued:
        if segments and segments[0] is not None:
            # A video in segments waits as its first segment does (its own job is deferred until they all end).
            described.queue_position = services.queue.get_job_position(segments[0].id)
        else:
            queue = services.train_queue if job.origin == services.train_queue.name else services.queue
            described.queue_position = queue.get_job_position(job.id)
    if described.result_url:
        described.stream_url = signed_result_url(services.settings, result_url, job.id)
    return described


@result_router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    summary="The stylized video or image (supports HTTP Range; bearer token, or the signed query of the job's "
    "stream_url)",
    responses={
        200: {"content": {"video/mp4": {}, "image/png": {}, "image/jpeg": {}, "image/webp": {}}},
        206: {"description": "Partial content"},
        307: {"description": "With a bucket for storage: a presigned URL of the result (it answers Range itself)"},
        409: {},
        410: {},
    },
)
def get_job_result(job_id: uuid.UUID, services: ServicesDep) -> Response:
    job = _job_or_404(services, job_id)
    state = jobstate.state_of(job, settle.ended(services.redis, job.id))
    if state is not schemas.JobState.finished:
        raise HTTPException(status.HTTP_409_CONFLICT, f"job {job_id} is {state.value}, there is no result yet")
    # A video's output.mp4, or an image job's image (api.routers.images) in the format it asked for.
    name, media_type = result_name(job.get_meta(refresh=False))
    download_name = f"{job_id}{Path(name).suffix}"
    found = services.storage.result(str(job_id), name, media_type, download_name)
    if found is None:
        raise HTTPException(status.HTTP_410_GONE, f"the result of job {job_id} was deleted or has expired")
    if isinstance(found, Redirect):
        # 307: the client repeats its GET, Range header included, at the bucket.
        return RedirectResponse(found.url, status_code=status.HTTP_307_TEMPORARY_REDIRECT)
    # Starlette's FileResponse answers Range requests (206 + Content-Range) itself.
    return FileResponse(found, media_type=media_type, filename=download_name)


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Cancel a queued or running job and delete its files",
    responses={409: {"description": "The job has already finished; its result stays until it expires"}},
)
def delete_job(job_id: uuid.UUID, services: ServicesDep) -> Response:
    job = _job_or_404(services, job_id)
    outcome = settle.cancel(services.redis, job.id, services.settings.job_ttl_seconds)
    if outcome.state == settle.FINISHED:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"job {job_id} has already finished; its result stays until it expires"
        )
    if outcome.changed:
        _stop(job)
    # Cancelled now or earlier, or failed: there is no result to keep.
    services.storage.delete(str(job_id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _stop(job: Job) -> None:
    """Take a job that was just marked cancelled off the queue, or tell its worker to stop between frames;
    for a video in segments, each of its segment jobs too (they also poll the video's cancelled mark)."""
    _stop_one(job)
    for segment in Job.fetch_many(segment_ids(job.get_meta(refresh=False)), connection=job.connection):
        if segment is not None and segment.get_status(refresh=False) in _STOPPABLE:
            _stop_one(segment)


# What a segment job can be while there is something to stop; one that ended is left as it is.
_STOPPABLE = (JobStatus.QUEUED, JobStatus.DEFERRED, JobStatus.SCHEDULED, JobStatus.STARTED)


def _stop_one(job: Job) -> None:
    job.refresh()
    if job.get_status(refresh=False) == JobStatus.STARTED:
        try:
            send_stop_job_command(job.connection, job.id)
        except InvalidJobOperation:  # its worker died: the job, when reaped or retried, reads the mark
            log.info("job %s has no live worker to stop", job.id)
        return
    try:
        job.cancel()
    except InvalidJobOperation:
        log.info("job %s was already cancelled", job.id)
