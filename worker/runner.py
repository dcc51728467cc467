"""The clipmorph worker: an RQ worker that stylizes videos and images, or trains styles, on CUDA when there is one.

Which queues it serves is chosen at start (`clipmorph worker --queues train,stylize`), in that order of
preference: "stylize" (settings.queue_name: videos and large images) and "train" (settings.train_queue_name:
POST /v1/styles). A GPU machine serves "train" first; CPU-only workers leave it out.

Why a SimpleWorker (no fork): RQ's default Worker forks a work-horse per job.
CUDA cannot be used in a child forked after the parent initialised it, and
whatever the child loads dies with it, so every job would reload its model.
A SimpleWorker runs jobs in the worker process itself: CUDA is initialised
there once (there is no fork to break it) and the ModelCache keeps models
loaded from job to job. What the fork gave RQ we put back here:

- heartbeats while a job runs (the forking parent sends them while it waits
  on the horse): a thread sends them;
- stopping a running job on request (the parent kills the horse): the stop
  command sets an event the job polls between frames;
- a worker that dies mid-job (SIGKILL, OOM): the job's StartedJobRegistry
  entry is no longer refreshed, expires `heartbeat + grace` seconds later, and
  the next maintenance pass of any worker (or a status request to the API)
  retries it while it has retries left, or fails it with AbandonedJobError.
"""

from __future__ import annotations

import logging
import signal
import threading

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job
from rq.worker import WorkerStatus

from clipmorph import registry
from clipmorph.jobs.queue import video_of
from clipmorph.jobs.storage import StorageUnavailable, open_storage
from clipmorph.serving import redisconn
from clipmorph.settings import Settings, get_settings
from worker.jobs import cancel_requested

log = logging.getLogger(__name__)


class StylizeWorker(SimpleWorker):
    heartbeat_grace_seconds: int = 30

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # SimpleWorker's default (job timeout + 60 s) would leave a dead worker's job "running" for the
        # whole timeout; our heartbeat thread lets the TTL be short.
        return self.job_monitoring_interval + self.heartbeat_grace_seconds

    def execute_job(self, job: Job, queue: Queue) -> None:
        cancel_requested.clear()
        execution = self.prepare_execution(job)
        stop = threading.Event()
        beat = threading.Thread(
            target=self._beat_while_running, args=(job, execution, stop), name="rq-heartbeat", daemon=True
        )
        beat.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            stop.set()
            beat.join()
        self.set_state(WorkerStatus.IDLE)

    def _beat_while_running(self, job: Job, execution: Execution, stop: threading.Event) -> None:
        while not stop.wait(self.job_monitoring_interval):
            try:
                self.maintain_heartbeats(job, execution)
            except redis.RedisError:
                self.log.warning("heartbeat for job %s failed; retrying", job.id, exc_info=True)

    def kill_horse(self, sig: signal.Signals = signal.SIGKILL) -> None:
        # RQ's stop-job command (and a cold shutdown) end up here; with no horse to kill, ask the job to stop.
        cancel_requested.set()

    def run_maintenance_tasks(self) -> None:
        super().run_maintenance_tasks()
        settings = get_settings()
        running = set()
        for queue in self.queues:
            # A running segment job keeps its video's files (they are stored under the video's id).
            running.update(video_of(i) for i in queue.started_job_registry.get_job_ids(cleanup=False))
        try:
            open_storage(settings).purge_expired(settings.job_ttl_seconds, keep=running)
        except StorageUnavailable:  # logged by the storage; the next pass tries again
            log.warning("could not purge expired jobs: the job storage is unavailable")


QUEUE_KINDS = ("stylize", "train")


def queue_names(kinds: list[str], settings: Settings) -> list[str]:
    """The RQ queue names for queue kinds ("stylize", "train"), in the order given (RQ's preference order)."""
    names = {"stylize": settings.queue_name, "train": settings.train_queue_name}
    unknown = [k for k in kinds if k not in names]
    if unknown or not kinds:
        raise ValueError(f"unknown queue {', '.join(map(repr, unknown)) or '(none)'}; choose from {', '.join(names)}")
    return list(dict.fromkeys(names[k] for k in kinds))


def build_worker(
    settings: Settings | None = None, name: str | None = None, queues: list[str] | None = None
) -> StylizeWorker:
    """`queues`: queue kinds (QUEUE_KINDS), most preferred first; default: stylize only."""
    settings = settings or get_settings()
    # Retries with backoff: a Redis restart pauses the worker (and its running job) instead of killing it.
    connection = redisconn.connect(settings.redis_url, settings.worker_redis_patience_seconds)
    worker = StylizeWorker(
        [Queue(q, connection=connection) for q in queue_names(queues or ["stylize"], settings)],
        connection=connection,
        name=name,
        job_monitoring_interval=settings.worker_heartbeat_seconds,
        maintenance_interval=settings.worker_maintenance_seconds,
        # An idle worker blocks on the queue for worker_ttl - 15 s between maintenance checks.
        worker_ttl=settings.worker_maintenance_seconds + 15,
        default_result_ttl=settings.job_ttl_seconds,
    )
    worker.heartbeat_grace_seconds = settings.worker_heartbeat_grace_seconds
    return worker


def register_builtins(settings: Settings) -> None:
    """Register the built-in models on a fresh registry before the first job asks for one.

    A registry that is down must not stop the worker: the first job for a built-in style
    registers them then (registry.get_version).
    """
    try:
        registry.register_builtins(settings=settings)
    except Exception:
        log.exception("could not register the built-in models at start-up; retried on first use")


def run_worker(
    settings: Settings | None = None, burst: bool = False, name: str | None = None, queues: list[str] | None = None
) -> bool:
    """Serve the queues until stopped (or, with `burst`, until they are empty); -> whether any job ran."""
    settings = settings or get_settings()
    worker = build_worker(settings, name, queues)  # an unknown queue fails here, before any registry work
    register_builtins(settings)
    return worker.work(burst=burst, logging_level="INFO")
