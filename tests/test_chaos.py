"""Faults against real processes: Redis SIGKILLed and restarted on its append-only file while jobs wait and run.

The Redis here runs with the local stack's own arguments (clipmorph.stack.redis_server_args), the
API under uvicorn, the worker as a `clipmorph worker` process. `make chaos` runs the tests marked
`chaos` (these, the stack's restart test, the killed-worker test).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import httpx
import pytest
import redis
import uvicorn
from serving_helpers import make_clip, register_tiny_model, stop_processes

from api.main import create_app
from clipmorph.settings import Settings, get_settings
from clipmorph.stack import redis_server_args

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
STYLE = "tiny"
WAIT = 120.0  # generous: the test machines are shared and slow


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AofRedis:
    """A redis-server with the local stack's persistence, which the test kills and restarts on the same files."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.argv = [shutil.which("redis-server") or "redis-server", *redis_server_args(settings, port)]
        self.dir = settings.var_dir / "redis"
        self.client = redis.Redis(port=port)
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)

        def answers() -> bool:
            try:
                return bool(self.client.ping())
            except redis.ConnectionError:  # refused, or still loading the append-only file
                return False

        wait_until(answers, "redis-server to answer", timeout=30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no shutdown, no final write
        self.proc.wait()

    def on_disk(self, text: str) -> bool:
        """Whether Redis has written `text` to its append-only files (what a SIGKILL cannot take back)."""
        return any(text.encode() in f.read_bytes() for f in self.dir.rglob("*.aof"))


class Chaos:
    def __init__(self, settings: Settings, base_url: str, redis_server: AofRedis, worker: subprocess.Popen) -> None:
        self.settings = settings
        self.http = httpx.Client(base_url=base_url, timeout=60)
        self.redis = redis_server
        self.worker = worker

    def submit(self, clip: Path) -> str:
        with clip.open("rb") as f:
            r = self.http.post("/v1/jobs", data={"style": STYLE}, files={"file": (clip.name, f)})
        assert r.status_code == 202, r.text
        return r.json()["id"]

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for_end(self, job_id: str) -> dict:
        seen: dict = {}

        def ended() -> bool:
            seen.update(self.job(job_id))
            return seen["status"] in ("finished", "failed", "cancelled")

        wait_until(ended, f"job {job_id} to end")
        return seen


@pytest.fixture
def chaos(tmp_path: Path, assets: Path, empty_mlflow_db: Path) -> Iterator[Chaos]:
    port = _free_port()
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")  # migrating a fresh registry takes long
    env = {
        "CLIPMORPH_VAR_DIR": str(tmp_path / "var"),
        "CLIPMORPH_MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "CLIPMORPH_MLFLOW_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "CLIPMORPH_ASSETS_DIR": str(assets),
        # Only the tiny model: registering the built-in ones (with their ONNX export) is slow and not tested here.
        "CLIPMORPH_BUILTIN_MODELS_DIR": str(tmp_path / "no-builtins"),
        "CLIPMORPH_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "CLIPMORPH_QUEUE_NAME": f"chaos-{uuid.uuid4().hex[:8]}",
        # Beats every second; a running job is given up on only after 10 s of silence, longer than the
        # Redis restart, so the job must survive the restart on its own worker, not be re-run.
        "CLIPMORPH_WORKER_HEARTBEAT_SECONDS": "1",
        "CLIPMORPH_WORKER_HEARTBEAT_GRACE_SECONDS": "10",
        "CLIPMORPH_WORKER_MAINTENANCE_SECONDS": "1",
        "CLIPMORPH_JOB_RETRIES": "1",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CLIPMORPH_API_TOKEN", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        settings.var_dir.mkdir(parents=True)
        register_tiny_model(settings, STYLE)
        redis_server = AofRedis(settings, port)
        redis_server.start()

        api_port = _free_port()
        config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=api_port, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        with (tmp_path / "worker.log").open("wb") as log:
            worker = subprocess.Popen(
                [str(Path(sys.executable).parent / "clipmorph"), "worker"], stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_until(lambda: server.started, "uvicorn to start", timeout=60)
            yield Chaos(settings, f"http://127.0.0.1:{api_port}", redis_server, worker)
        finally:
            stop_processes([worker])
            server.should_exit = True
            thread.join(15)
            if redis_server.proc and redis_server.proc.poll() is None:
                redis_server.kill()
    get_settings.cache_clear()


def _frames(data: bytes, tmp: Path) -> int:
    tmp.write_bytes(data)
    with av.open(str(tmp)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_redis_sigkill_loses_no_queued_or_running_job(chaos: Chaos, tmp_path: Path) -> None:
    long_clip = make_clip(tmp_path / "long.mp4", frames=150, size=(128, 96), fps=25, audio=False)
    short_clip = make_clip(tmp_path / "short.mp4", frames=12, size=(64, 48))
    running = chaos.submit(long_clip)
    wait_until(lambda: (chaos.job(running)["progress"] or {}).get("done", 0) > 0, "the first job to make progress")
    queued = chaos.submit(short_clip)  # one worker, busy: this one waits in the queue
    assert chaos.job(queued)["status"] == "queued"
    wait_until(lambda: chaos.redis.on_disk(queued), "the queued job to reach the append-only file", timeout=10)

    assert chaos.job(running)["status"] == "running"
    chaos.redis.kill()
    down = chaos.http.get(f"/v1/jobs/{queued}")
    assert down.status_code == 503 and down.headers["retry-after"].isdigit()
    assert down.json() == {"detail": "the job queue is unavailable; try again shortly"}
    chaos.redis.start()  # same data dir: the append-only file brings the queue and the running job back

    # The API recovers by itself; the worker waited for Redis, finished the job it was running, then the queued one.
    finished = {job_id: chaos.wait_for_end(job_id) for job_id in (running, queued)}
    assert {job["status"] for job in finished.values()} == {"finished"}, finished
    assert finished[running]["retries_left"] == 1  # finished by the attempt Redis died under, not re-run
    assert chaos.worker.poll() is None, "the worker died instead of waiting for Redis"
    assert _frames(chaos.http.get(f"/v1/jobs/{running}/result").content, tmp_path / "a.mp4") == 150
    assert _frames(chaos.http.get(f"/v1/jobs/{queued}/result").content, tmp_path / "b.mp4") == 12
