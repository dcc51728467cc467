"""RQ jobs: plain functions a worker runs, plus how the API enqueues them.

Two kinds: a video (stylize_job) and a still image too large to stylize in the
API's request (stylize_image_job, from POST /v1/images past
settings.max_sync_image_pixels). A video longer than settings.segment_seconds is
queued as one stylize_segment_job per segment (any worker takes any of them) and
stitch_job under the video's id, which joins their pieces (clipmorph.jobs.queue,
clipmorph.video.segments). A job's id is the UUID its input and output are stored
under (clipmorph.jobs.storage: the local jobs folder, or a bucket). Each attempt works in a
local folder (the storage's workspace: with a bucket the input is downloaded there, because
PyAV needs a seekable file, and the output is uploaded from there once complete), which is
cleared when the attempt ends, however it ends. Its meta holds what a status request shows while it
runs: the model name and version in use, and progress (frames, or for an image
network passes, done/total, their rate, ETA), saved at most twice a second.
An image is stylized at the size its options ask for, in tiles of
settings.tile_pixels above that many network pixels (clipmorph.video.tiling), and
written at the input's own size.

Failures: bad input (VideoError, including a limit found mid-stream), an
unknown style or a missing input fail the job at once, with a message for the
client in meta["error"]: running it again would fail the same way. Anything
else (a worker killed mid-job, a timeout) keeps RQ's retries. A Redis restart is
waited out (the worker's connection retries with backoff, worker.runner); a
progress write that still fails is skipped, never fatal.
Half-written files are removed on every failure, and when a new attempt starts; a bucket
never holds one (an object appears whole or not at all).
A job ends exactly once, finished or cancelled (clipmorph.jobs.settle).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import PIL.Image
import redis
from redis import Redis
from rq.job import Job, JobStatus, get_current_job

from clipmorph import registry
from clipmorph.evaluation.promotion import train_and_gate
from clipmorph.jobs import settle, training
from clipmorph.jobs.files import JobFiles
from clipmorph.jobs.models import ModelCache
from clipmorph.jobs.queue import (
    FRAMES_COUNTER_KEY,
    UNREADABLE_IMAGE,
    VIDEO_META,
    image_refusal,
    result_name,
    segment_ids,
    video_of,
)
from clipmorph.jobs.storage import JobStorage, StorageUnavailable, open_storage
from clipmorph.model.device import resolve_device
from clipmorph.registry import ModelNotFoundError
from clipmorph.settings import get_settings
from clipmorph.training.train import TrainConfig, TrainStep
from clipmorph.video import tiling
from clipmorph.video.inference import ImageError, StylizeOptions, network_size, norm_smoothing, stylize_image
from clipmorph.video.pipeline import Progress, StylizeCancelled, stylize_video
from clipmorph.video.probe import VideoError, VideoLimitError, probe, public_message
from clipmorph.video.segments import Segment, part_name, stitch

log = logging.getLogger(__name__)

PROGRESS_SAVE_SECONDS = 0.5

# Set by the worker (worker.runner) when RQ asks it to stop the running job; the job polls it between frames.
cancel_requested = threading.Event()
_models: ModelCache | None = None


class JobCancelled(Exception):
    """The job was stopped on request (DELETE /v1/jobs/{id})."""


class InputMissing(LookupError):
    """The job has no stored input: it was deleted (cancelled) or expired."""


class SegmentFailed(RuntimeError):
    """A segment of the video failed for good (its retries spent); the message is for the client."""


# A segment that failed with no message for the client (an internal error, a dead worker, a timeout).
SEGMENT_FAILED = "a segment of the video failed on the worker (details in the worker's log) and no retries were left"

# Failures that would repeat on every attempt: never retried.
DETERMINISTIC_ERRORS = (
    VideoError,
    ImageError,
    ModelNotFoundError,
    InputMissing,
    SegmentFailed,
    training.TrainingRefused,
)


def models() -> ModelCache:
    """The process-wide model cache: models stay loaded from one job to the next."""
    global _models
    if _models is None:
        _models = ModelCache()
    return _models


class ProgressReporter:
    """Progress callback for stylize_video: writes job.meta["progress"] at most every PROGRESS_SAVE_SECONDS.

    `count_frames`: add the frames done to the frames-stylized counter (not for an image's network passes).
    """

    def __init__(
        self, job: Job, connection: Redis, interval: float = PROGRESS_SAVE_SECONDS, count_frames: bool = True
    ) -> None:
        self.job = job
        self.connection = connection
        self.interval = interval
        self.count_frames = count_frames
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
            if self.count_frames:
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
    """What the client reads, worded as the upload's refusals are (api.routers.jobs.probe_upload, images)."""
    if isinstance(error, ImageError):
        if source is None:
            return UNREADABLE_IMAGE
        return image_refusal(source, get_settings().max_image_pixels)[1]
    if isinstance(error, VideoLimitError):
        return f"video too large: {public_message(error, source or Path())}"
    if isinstance(error, VideoError):
        return f"not a usable video: {public_message(error, source or Path())}"
    return str(error)  # our own messages: InputMissing, ModelNotFoundError, TrainingRefused


def _cancelled_by_delete(job: Job) -> bool:
    """The video's DELETE won (for a segment job: its video's)."""
    try:
        return settle.is_cancelled(job.connection, video_of(job.id))
    except redis.RedisError:  # Redis itself may be what failed: then RQ's retries decide
        return False


def stylize_job(style: str, options: dict[str, Any]) -> dict[str, Any]:
    """Stylize the job's uploaded video with the style's current champion; -> what was made and with which model."""
    return _run(lambda job, source, output: _stylize(job, source, output, style, options), "video")


def stylize_image_job(style: str, options: dict[str, Any]) -> dict[str, Any]:
    """Stylize the job's uploaded image with the style's current champion, at the input's size, tiled."""
    return _run(lambda job, source, output: _stylize_image(job, source, output, style, options), "image")


def train_job(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Train the style `name` on the job's painting, register it, grade it and run the promotion gate."""
    return _run(lambda job, source, output: _train_style(job, source, output, name, options), "painting")


def stylize_segment_job(model_ref: str, options: dict[str, Any], segment: dict[str, Any]) -> dict[str, Any]:
    """Stylize one segment of a long video (clipmorph.video.segments) into a piece kept in the job storage.

    model_ref: the version pinned when the video was queued ("clipmorph-kandinsky/3"): every segment uses it.
    The video's DELETE stops it between frames; a failure keeps the segment's retries (it alone runs again)
    unless it is bad input, which fails it at once with the client's message (the stitch job passes it on).
    """
    job = get_current_job()
    if job is None:
        raise RuntimeError("jobs run inside an RQ worker")
    video = job.meta[VIDEO_META]
    piece = Segment.from_dict(segment)
    storage = open_storage(get_settings())
    work = storage.segment_workspace(video, piece.index)
    source: Path | None = None
    try:
        if _cancelled_by_delete(job):
            raise JobCancelled(f"video {video} cancelled")
        source = _input_of(storage, video, work)
        loaded = models().get(model_ref)
        name = part_name(piece.index)
        log.info("job %s: segment %d of %s with %s v%s", job.id, piece.index, video, loaded.name, loaded.version)
        try:
            stylize_video(
                source,
                work.dir / name,
                loaded.model,
                StylizeOptions(**options, norm_smoothing=norm_smoothing(loaded.info)),
                progress=ProgressReporter(job, job.connection),
                should_cancel=lambda: cancel_requested.is_set() or _cancelled_by_delete(job),
                segment=piece,
            )
        except StylizeCancelled:
            raise JobCancelled(f"video {video} cancelled") from None
        storage.store_part(video, work, name)
        return {"segment": piece.index, "frames": piece.frames}
    except BaseException as e:
        if _cancelled_by_delete(job):
            storage.delete(video)  # what this attempt may have re-created after the DELETE removed the files
            _no_retry(job)
            raise JobCancelled(f"video {video} cancelled") from None
        if isinstance(e, DETERMINISTIC_ERRORS):
            _no_retry(job, _client_message(e, source))
        raise
    finally:
        work.delete()  # this attempt's workspace, whatever the outcome (the piece is in the storage)


def stitch_job(style: str, options: dict[str, Any]) -> dict[str, Any]:
    """The job of a video in segments: once every segment job ended, join their pieces (a remux) with the
    input's audio into the video's result; fail (not retried) with the first failed segment's message."""
    result = _run(lambda job, source, output: _stitch(job, source, output), "video")
    job = get_current_job()
    try:
        open_storage(get_settings()).delete_parts(job.id if job else "")
    except StorageUnavailable:  # the expiry sweep deletes them with the job
        log.warning("could not delete the pieces of %s; they expire with the job", job.id if job else "?")
    return result


def _stitch(job: Job, source: Path, output: Path) -> dict[str, Any]:
    ids = segment_ids(job.meta)
    segments = Job.fetch_many(ids, connection=job.connection)
    for sid, segment in zip(ids, segments, strict=True):
        if segment is None:
            raise SegmentFailed(SEGMENT_FAILED)  # expired before it ran (queued past the job TTL)
        status = segment.get_status(refresh=False)
        if status == JobStatus.FAILED:
            raise SegmentFailed(segment.get_meta(refresh=False).get("error") or SEGMENT_FAILED)
        if status != JobStatus.FINISHED:
            log.warning("job %s: segment %s ended %s", job.id, sid, status)
            raise SegmentFailed(SEGMENT_FAILED)
    storage = open_storage(get_settings())
    work = JobFiles(output.parent)
    try:
        parts = [storage.fetch_part(job.id, part_name(i), work) for i in range(len(ids))]
    except FileNotFoundError:
        raise InputMissing("the video's stylized segments are gone (deleted or expired)") from None
    stitch(parts, source, output)
    info = probe(output)
    return {
        "model_name": job.meta.get("model_name"),
        "model_version": job.meta.get("model_version"),
        "frames": info.frames,
        "width": info.width,
        "height": info.height,
        "duration": info.duration,
        "has_audio": info.has_audio,
        "segments": len(ids),
    }


def _run(stylize: Callable[[Job, Path, Path], dict[str, Any]], kind: str) -> dict[str, Any]:
    """A job's life around `stylize(job, input, output)`: the input fetched, the output stored, cancellation,
    the end settled once, failures kept or not retried, the attempt's local files removed."""
    job = get_current_job()
    if job is None:
        raise RuntimeError("jobs run inside an RQ worker")
    settings = get_settings()
    storage = open_storage(settings)
    work = storage.workspace(job.id)  # without what an earlier attempt, killed, left behind
    name, media_type = result_name(job.meta)
    source: Path | None = None
    try:
        if settle.is_cancelled(job.connection, job.id):
            raise JobCancelled(f"job {job.id} cancelled")
        source = _input_of(storage, job.id, work, kind)
        result = stylize(job, source, work.dir / name)
        storage.store_output(job.id, work, name, media_type)
        if settle.finish(job.connection, job.id, settings.job_ttl_seconds) != settle.FINISHED:
            raise JobCancelled(f"job {job.id} cancelled")  # a DELETE came first: it wins
        return result
    except BaseException as e:
        if _cancelled_by_delete(job):
            storage.delete(job.id)
            _no_retry(job)
            raise JobCancelled(f"job {job.id} cancelled") from None
        if isinstance(e, DETERMINISTIC_ERRORS):
            _no_retry(job, _client_message(e, source))
        raise  # anything else (a timeout, a worker shutting down, Redis, the storage) keeps its retries
    finally:
        storage.release(work)  # half-written files, and with a bucket the local copies


def _input_of(storage: JobStorage, job_id: str, work: JobFiles, kind: str = "video") -> Path:
    try:
        return storage.fetch_input(job_id, work)
    except FileNotFoundError:
        raise InputMissing(f"the job's {kind} is gone (deleted or expired)") from None


def _stylize(job: Job, source: Path, output: Path, style: str, options: dict[str, Any]) -> dict[str, Any]:
    loaded = models().get(style)
    job.meta.update(model_name=loaded.name, model_version=loaded.version)
    job.save_meta()
    log.info("job %s: %s with %s v%s", job.id, source.name, loaded.name, loaded.version)
    stylize_options = StylizeOptions(**options, norm_smoothing=norm_smoothing(loaded.info))
    try:
        info = stylize_video(
            source,
            output,  # written to a temp file and renamed when complete: readers never see half a video
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


class _CountedPasses:
    """A model that counts its network passes, for an image job's progress, and stops between them on request.

    stylize_array makes one pass, or above tile_pixels (clipmorph.video.tiling.stylize_tiled) one on the
    downscaled image for the norm statistics and one per tile. Everything else is the model's own.
    """

    def __init__(
        self,
        model: Any,
        total: int,
        progress: Callable[[Progress], None],
        should_cancel: Callable[[], bool],
    ) -> None:
        self._model = model
        self._total = total
        self._progress = progress
        self._should_cancel = should_cancel
        self._done = 0
        self._started = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, x: Any) -> Any:
        if self._should_cancel():
            raise StylizeCancelled
        y = self._model(x)
        self._done += 1
        total = max(self._total, self._done)
        rate = self._done / max(time.monotonic() - self._started, 1e-6)
        self._progress(Progress(self._done, total, round(rate, 3), round((total - self._done) / rate, 1)))
        return y


def image_passes(model: Any, width: int, height: int, max_side: int | None, tile_pixels: int) -> int:
    """Network passes for an image of width x height: 1 untiled, else the statistics pass and one per tile,
    cut as clipmorph.video.tiling.stylize_tiled cuts them."""
    w, h = network_size(width, height, max_side, model)
    if w * h <= tile_pixels:
        return 1
    align = model.config.stride
    tile = max(4 * align, math.isqrt(tile_pixels) // align * align)
    overlap = min(tiling.DEFAULT_OVERLAP, tile // 2) // align * align
    return 1 + len(tiling.spans(h, tile, overlap, align)) * len(tiling.spans(w, tile, overlap, align))


def _stylize_image(job: Job, source: Path, output: Path, style: str, options: dict[str, Any]) -> dict[str, Any]:
    loaded = models().get(style)
    job.meta.update(model_name=loaded.name, model_version=loaded.version)
    job.save_meta()
    log.info("job %s: %s with %s v%s", job.id, source.name, loaded.name, loaded.version)
    stylize_options = StylizeOptions(
        max_side=options.get("max_side"), strength=options.get("strength", 1.0), contrast=options.get("contrast")
    )
    width, height = job.meta.get("width") or 0, job.meta.get("height") or 0
    total = image_passes(loaded.model, width, height, stylize_options.max_side, get_settings().tile_pixels)
    model = _CountedPasses(
        loaded.model,
        total,
        ProgressReporter(job, job.connection, count_frames=False),
        lambda: cancel_requested.is_set() or _cancelled_by_delete(job),
    )
    try:
        # Written to a hidden .partial file and renamed when complete; the output has the input's (displayed) size.
        stylize_image(model, source, output, stylize_options)
    except StylizeCancelled:
        raise JobCancelled(f"job {job.id} cancelled") from None
    with PIL.Image.open(output) as result:
        size = result.size
    return {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "width": size[0],
        "height": size[1],
        "format": options.get("format"),
    }


# A training job's validation preview in its meta: small, as every status request carries it.
PREVIEW_BOX = (384, 192)
PREVIEW_QUALITY = 75


def preview_jpeg(sheet: Path, box: tuple[int, int] = PREVIEW_BOX) -> str:
    """A validation sheet (photos above, their stylization below) as a small JPEG data URL."""
    with PIL.Image.open(sheet) as img:
        small = img.convert("RGB")
    small.thumbnail(box)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=PREVIEW_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class TrainingReporter:
    """train()'s on_step for a job: progress, losses and previews into job.meta, and stopping on request.

    Progress is saved at most every `interval` seconds, a new preview (every val_every steps) and the
    last step at once. A cancel (the stop command, or DELETE's mark) raises StylizeCancelled between steps.
    """

    def __init__(self, job: Job, interval: float = PROGRESS_SAVE_SECONDS) -> None:
        self.job = job
        self.interval = interval
        self.last_sheet: Path | None = None
        self._saved_at = -math.inf

    def __call__(self, step: TrainStep) -> None:
        if cancel_requested.is_set() or _cancelled_by_delete(self.job):
            raise StylizeCancelled
        meta = self.job.meta
        eta = step.eta_seconds
        meta["progress"] = {
            "done": step.step,
            "total": step.total,
            "fps": round(step.steps_per_second, 3),
            "eta_seconds": None if eta is None else round(eta, 1),
        }
        meta["losses"] = {k: float(f"{v:.4g}") for k, v in step.losses.items()}
        if step.validation is not None:
            self.last_sheet = step.validation
            meta["preview"] = preview_jpeg(step.validation)
            meta["preview_step"] = step.step
        now = time.monotonic()
        if step.validation is None and step.step < step.total and now - self._saved_at < self.interval:
            return
        self._saved_at = now
        try:
            self.job.save_meta()
        except redis.RedisError:  # only for show: training goes on, the next step saves it again
            log.warning("job %s: could not save progress, Redis unavailable; continuing", self.job.id)


def _train_style(job: Job, source: Path, output: Path, name: str, options: dict[str, Any]) -> dict[str, Any]:
    settings = get_settings()
    # Checked again here: the registry and the styles folder may have changed since the API looked.
    request = training.train_request(name, options.get("preset"), options.get("iters"), options.get("blend"), settings)
    if registry.style_exists(registry.configure(settings), name):
        raise training.TrainingRefused(f"a style named {name!r} already exists")
    painting = training.install_painting(source, name, settings)
    try:
        cfg = TrainConfig.from_overrides(training.train_overrides(request, settings))
    except ValueError as e:  # the operator's CLIPMORPH_TRAIN_JOB_OVERRIDES: theirs to fix, in the log
        painting.unlink(missing_ok=True)
        log.error("job %s: bad training options: %s", job.id, e)
        raise RuntimeError("bad training options in the worker's settings") from None
    reporter = TrainingReporter(job)
    device = resolve_device(cfg.device)  # "auto": CUDA when this worker has it
    job.meta["device"] = device.type
    job.save_meta()
    log.info("job %s: training %s (%s, %d steps) on %s", job.id, name, cfg.preset, cfg.iters, device)
    try:
        result = train_and_gate(cfg, reporter)
    except BaseException as e:
        if isinstance(e, (StylizeCancelled, *DETERMINISTIC_ERRORS)) or not job.retries_left:
            _free_name(name, painting, Path(cfg.run_dir) if cfg.run_dir else settings.runs_dir / cfg.name)
        if isinstance(e, StylizeCancelled):
            raise JobCancelled(f"job {job.id} cancelled") from None
        raise
    if reporter.last_sheet is not None:  # the last step always renders one
        partial = output.with_name(f".{output.stem}.{job.id[:8]}.partial{output.suffix}")
        with PIL.Image.open(reporter.last_sheet) as sheet:
            sheet.convert("RGB").save(partial, "JPEG", quality=90)
        partial.replace(output)  # readers never see half a file
    outcome = {
        "model_name": result.registered_name,
        "model_version": result.version,
        "champion": result.champion,
        "metrics": result.metrics,
        "losses": result.losses,
        "seconds": round(result.seconds, 1),
    }
    job.meta.update(model_name=result.registered_name, model_version=result.version, champion=result.champion)
    job.save_meta()
    return outcome


def _free_name(name: str, painting: Path, run_dir: Path) -> None:
    """After a training job's last attempt failed or was cancelled: remove its painting and checkpoint, so
    that the name can be used again; a retry would instead have found both and resumed. Kept when a version
    was registered before the failure (in the evaluation): the name is taken, and its painting is needed."""
    try:
        if registry.style_exists(registry.configure(), name):
            return
    except Exception:  # the registry is what failed, maybe: keep the files rather than guess
        log.exception("could not check the registry for %s; its painting and checkpoint stay", name)
        return
    painting.unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)
