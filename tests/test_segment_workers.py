"""A long video across two real worker processes (`clipmorph worker`), a real uvicorn API and redis-server:
its segments run on both workers at once, and one DELETE stops the segments running on each."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import av
import pytest
import uvicorn
from rq import Worker
from rq.job import Job, JobStatus
from serving_helpers import register_tiny_model, stop_processes
from test_segments import make_vfr_clip
from test_worker import Live, _free_port, wait_until

from api.main import create_app
from clipmorph.settings import get_settings

pytestmark = pytest.mark.slow
FRAMES = 250  # 10 s at 25 fps, a keyframe every 8 frames: segments of 2 s


@pytest.fixture(scope="module")
def live(tmp_path_factory, assets, redis_url):
    root = tmp_path_factory.mktemp("live-segments")
    with pytest.MonkeyPatch.context() as mp:
        env = {
            "CLIPMORPH_VAR_DIR": str(root / "var"),
            "CLIPMORPH_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "CLIPMORPH_MLFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
            "CLIPMORPH_ASSETS_DIR": str(assets),
            "CLIPMORPH_REDIS_URL": redis_url,
            "CLIPMORPH_QUEUE_NAME": f"live-{uuid.uuid4().hex[:8]}",
            "CLIPMORPH_WORKER_HEARTBEAT_SECONDS": "1",
            "CLIPMORPH_WORKER_HEARTBEAT_GRACE_SECONDS": "2",
            "CLIPMORPH_WORKER_MAINTENANCE_SECONDS": "1",
            "CLIPMORPH_SEGMENT_SECONDS": "2",
            "CLIPMORPH_JOB_RETRIES": "1",
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1",
        }
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CLIPMORPH_API_TOKEN", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        register_tiny_model(settings, "tiny")
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, "uvicorn to start", timeout=60)
        stack = Live(settings, f"http://127.0.0.1:{port}", root)
        for _ in range(2):
            stack.start_worker()
        stack.wait_for_workers(2)
        yield stack
        stop_processes(stack.workers)
        server.should_exit = True
        thread.join(15)
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_vfr_clip(tmp_path_factory.mktemp("clips") / "ten.mp4", durations=[40] * FRAMES, size=(128, 96))


def segments(live: Live, video_id: str) -> list[Job]:
    ids = Job.fetch(video_id, connection=live.redis).meta["segments"]
    return [Job.fetch(i, connection=live.redis) for i in ids]


def test_the_segments_of_one_video_run_on_both_workers_at_once(live, clip, tmp_path):
    created = live.submit(clip)
    running: set[str] = set()

    def both_busy() -> bool:
        started = [s for s in segments(live, created["id"]) if s.get_status() == JobStatus.STARTED]
        running.update(s.worker_name for s in started)
        return len(started) == 2

    wait_until(both_busy, "two segments of the video to run at once", every=0.05)
    job = live.wait_for(created["id"], {"finished", "failed", "cancelled"})
    assert job["status"] == "finished", job
    assert job["progress"]["done"] == job["progress"]["total"] == FRAMES
    assert len(running) == 2
    assert len({s.worker_name for s in segments(live, created["id"])}) == 2
    out = tmp_path / "out.mp4"
    out.write_bytes(live.http.get(created["result_url"]).content)
    with av.open(str(out)) as c:
        assert sum(1 for _ in c.decode(video=0)) == FRAMES


def test_one_delete_stops_the_segments_running_on_each_worker(live, clip):
    created = live.submit(clip)
    seen: dict = {}

    def both_running_with_progress() -> bool:
        seen.update(live.job(created["id"]))
        started = [s for s in segments(live, created["id"]) if s.get_status() == JobStatus.STARTED]
        return len(started) == 2 and all((s.meta.get("progress") or {}).get("done", 0) > 0 for s in started)

    wait_until(both_running_with_progress, "two segments to make progress", every=0.05)
    assert seen["status"] == "running"
    finished_before = sum(s.get_status() == JobStatus.FINISHED for s in segments(live, created["id"]))
    assert live.http.delete(f"/v1/jobs/{created['id']}").status_code == 204
    stopped_at = time.monotonic()
    wait_until(
        lambda: not any(s.get_status() == JobStatus.STARTED for s in segments(live, created["id"])),
        "the running segments to stop",
        timeout=30,
    )
    stopped_in = time.monotonic() - stopped_at
    assert stopped_in < 10  # between two frames, not at the end of a segment
    statuses = [s.get_status() for s in segments(live, created["id"])]
    # The two that ran were stopped (not finished), the queued ones cancelled: none finished after the DELETE.
    assert statuses.count(JobStatus.FINISHED) <= finished_before, statuses
    assert set(statuses) <= {JobStatus.FINISHED, JobStatus.STOPPED, JobStatus.CANCELED, JobStatus.FAILED}, statuses
    assert live.job(created["id"])["status"] == "cancelled"
    time.sleep(0.5)  # the workers' own cleanup after stopping must not resurrect anything
    assert not (live.settings.jobs_dir / created["id"]).exists()


@pytest.mark.chaos
def test_a_segment_whose_worker_is_killed_is_retried_alone_and_the_video_finishes(live, clip):
    created = live.submit(clip)
    victim_job: dict = {}

    def one_running_with_progress() -> bool:
        for s in segments(live, created["id"]):
            if s.get_status() == JobStatus.STARTED and (s.meta.get("progress") or {}).get("done", 0) > 0:
                victim_job.update(id=s.id, worker=s.worker_name)
                return True
        return False

    wait_until(one_running_with_progress, "a segment to make progress", every=0.05)
    victim = Worker.find_by_key(Worker.redis_worker_namespace_prefix + victim_job["worker"], connection=live.redis)
    os.kill(victim.pid, signal.SIGKILL)
    live.workers = [p for p in live.workers if p.pid != victim.pid]
    live.start_worker()  # back to two, as a supervisor would
    job = live.wait_for(created["id"], {"finished", "failed", "cancelled"})
    assert job["status"] == "finished", job
    retried = Job.fetch(victim_job["id"], connection=live.redis)
    assert retried.retries_left == 0 and retried.worker_name != victim_job["worker"]
    # The others ran once each: their retries are untouched.
    others = [s for s in segments(live, created["id"]) if s.id != victim_job["id"]]
    assert all(s.retries_left == live.settings.job_retries for s in others)
    assert job["progress"]["done"] == FRAMES
