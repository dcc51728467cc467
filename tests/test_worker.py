"""End to end: a real uvicorn API, real RQ worker processes (`clipmorph worker`), a real redis-server.

Workers beat every second and are given up on after 2 more, so a killed worker's
job is noticed in seconds, not minutes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import pytest
import uvicorn
from redis import Redis
from rq import Queue, Worker
from rq.job import Job
from serving_helpers import make_clip, register_tiny_model, stop_processes

from api.main import create_app
from clipmorph.settings import get_settings

pytestmark = pytest.mark.slow
STYLE = "tiny"
WAIT = 180.0  # generous: the test machines are shared and slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Live:
    def __init__(self, settings, base_url: str, log_dir: Path) -> None:
        self.settings = settings
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.redis = Redis.from_url(settings.redis_url)
        self.queue = Queue(settings.queue_name, connection=self.redis)
        self.log_dir = log_dir
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        log = (self.log_dir / f"worker-{len(self.workers)}.log").open("wb")
        exe = Path(sys.executable).parent / "clipmorph"
        proc = subprocess.Popen([str(exe), "worker"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        self.workers.append(proc)
        return proc

    def wait_for_workers(self, n: int) -> None:
        wait_until(lambda: Worker.count(queue=self.queue) >= n, f"{n} workers to register")

    def submit(self, clip: Path, **fields) -> dict:
        with clip.open("rb") as f:
            r = self.http.post("/v1/jobs", data={"style": STYLE, **fields}, files={"file": (clip.name, f)})
        assert r.status_code == 202, r.text
        return r.json()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait_for(self, job_id: str, statuses: set[str]) -> dict:
        seen: dict = {}

        def reached() -> bool:
            seen.update(self.job(job_id))
            return seen["status"] in statuses

        wait_until(reached, f"job {job_id} to be {statuses}")
        return seen


def wait_until(condition, what: str, timeout: float = WAIT, every: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def live(tmp_path_factory, assets, redis_url):
    root = tmp_path_factory.mktemp("live")
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
            "CLIPMORPH_JOB_RETRIES": "1",
            # Ten uploads at a time from one address (test_twenty_concurrent_uploads_all_finish); the default
            # of 4 and its 429s are tested in test_uploads.py and test_chaos.py.
            "CLIPMORPH_MAX_UPLOADS_PER_CLIENT": "10",
            "WANDB_MODE": "disabled",
            "OMP_NUM_THREADS": "1",  # two workers on a small shared machine
        }
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CLIPMORPH_API_TOKEN", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        register_tiny_model(settings, STYLE)

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
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return {
        "short": make_clip(folder / "short.mp4", frames=24, size=(64, 48)),
        "tiny": make_clip(folder / "tiny.mp4", frames=6, size=(32, 24), audio=False),
        # Long enough that a job is still running when the test reacts to its first progress report.
        "long": make_clip(folder / "long.mp4", frames=300, size=(128, 96), fps=25),
    }


def frames_and_audio(data: bytes, tmp: Path) -> tuple[int, bool]:
    tmp.write_bytes(data)
    with av.open(str(tmp)) as container:
        return sum(1 for _ in container.decode(video=0)), bool(container.streams.audio)


def test_upload_to_result_with_progress(live, clips, tmp_path):
    created = live.submit(clips["short"], max_side="48")
    history = []

    def finished() -> bool:
        job = live.job(created["id"])
        history.append((job["status"], (job["progress"] or {}).get("done", 0)))
        return job["status"] in ("finished", "failed", "cancelled")

    wait_until(finished, "the job to end", every=0.02)
    job = live.job(created["id"])
    assert job["status"] == "finished", job
    statuses = [s for s, _ in history]
    order = ["queued", "running", "finished"]
    assert [order.index(s) for s in statuses] == sorted(order.index(s) for s in statuses)
    done = [d for _, d in history]
    assert done == sorted(done) and done[-1] == 24
    assert job["progress"]["total"] == 24
    assert job["model_name"] == "clipmorph-tiny" and job["model_version"] == "1"
    assert job["started_at"] and job["ended_at"] and job["enqueued_at"]

    result = live.http.get(created["result_url"])
    assert result.status_code == 200
    assert frames_and_audio(result.content, tmp_path / "out.mp4") == (24, True)


def test_twenty_concurrent_uploads_all_finish(live, clips):
    with ThreadPoolExecutor(10) as pool:
        created = list(pool.map(lambda _: live.submit(clips["tiny"]), range(20)))
    assert len({c["id"] for c in created}) == 20
    for c in created:
        assert live.wait_for(c["id"], {"finished", "failed", "cancelled"})["status"] == "finished"
    sizes = [len(live.http.get(c["result_url"]).content) for c in created]
    assert all(size > 0 for size in sizes)
    metrics = live.http.get("/metrics").text
    assert "clipmorph_frames_stylized" in metrics


def _running_with_progress(live: Live, job_id: str) -> dict:
    job: dict = {}

    def ready() -> bool:
        job.update(live.job(job_id))
        assert job["status"] in ("queued", "running"), job
        return job["status"] == "running" and (job["progress"] or {}).get("done", 0) > 0

    wait_until(ready, f"job {job_id} to make progress", every=0.05)
    return job


def test_cancel_stops_a_running_job_and_deletes_its_files(live, clips):
    created = live.submit(clips["long"])
    _running_with_progress(live, created["id"])
    assert live.http.delete(f"/v1/jobs/{created['id']}").status_code == 204
    assert not (live.settings.jobs_dir / created["id"]).exists()
    job = live.wait_for(created["id"], {"cancelled", "finished", "failed"})
    assert job["status"] == "cancelled", job
    assert live.http.get(created["result_url"]).status_code == 409
    time.sleep(0.5)  # the worker's own cleanup after stopping must not resurrect anything
    assert not (live.settings.jobs_dir / created["id"]).exists()


@pytest.mark.chaos
def test_sigkilled_worker_job_is_retried_not_stuck(live, clips):
    created = live.submit(clips["long"])
    _running_with_progress(live, created["id"])
    worker_name = Job.fetch(created["id"], connection=live.redis).worker_name
    victim = Worker.find_by_key(Worker.redis_worker_namespace_prefix + worker_name, connection=live.redis)
    os.kill(victim.pid, signal.SIGKILL)

    # Heartbeats stop; after heartbeat + grace the surviving worker's maintenance requeues the job (1 retry).
    def retried() -> bool:
        job = live.job(created["id"])
        assert job["status"] != "failed", job
        return job["retries_left"] == 0 and job["status"] in ("queued", "running")

    wait_until(retried, "the abandoned job to be retried")
    rerun = _running_with_progress(live, created["id"])
    assert Job.fetch(created["id"], connection=live.redis).worker_name != worker_name
    assert rerun["model_version"] == "1"
    # Done: stop the rerun rather than wait for 300 frames.
    assert live.http.delete(f"/v1/jobs/{created['id']}").status_code == 204
    assert live.wait_for(created["id"], {"cancelled", "finished", "failed"})["status"] in ("cancelled", "finished")
