"""Fault injection against real processes; `make chaos` runs the tests marked `chaos`.

One stack for the module: a redis-server with the local stack's own persistence arguments
(clipmorph.serving.stack.redis_server_args), the API under uvicorn in a thread, one `clipmorph worker`
process. Each test injects one fault, the ones issue 15 lists: 20 concurrent uploads, a 4096x4096
file, a 30 000-frame file, a resolution change mid-stream, an oversized image, a full disk, a worker
SIGKILLed mid-job, Redis SIGKILLed mid-job, an API restart mid-upload. Every job a test submits is
tallied: finished, failed with the reason the client was given (refused at upload, or failed by the
worker), or lost (accepted, then never ended, vanished, or "finished" without a result). Every test
asserts that it lost none and left no job folder that belongs to no job; the module prints the table
at the end.

Limits are set low through the env (frame pixels, frame count, image pixels), so that each fault
needs only tiny clips. `make chaos` also runs the stack's restart tests (test_stack.py) and the
killed-worker retry test of test_worker.py.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av
import httpx
import pytest
import redis
import uvicorn
from PIL import Image
from serving_helpers import make_clip, make_flat_clip, make_resizing_clip, register_tiny_model, stop_processes

from api.main import create_app
from clipmorph.serving.stack import redis_server_args
from clipmorph.settings import Settings, get_settings

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
STYLE = "tiny"
WAIT = 600.0  # generous: the test machines are shared and slow (a new worker imports torch)
ENDED = ("finished", "failed", "cancelled")
# Low limits, so that tiny clips cross them: the largest clip the tests expect to be stylized is 128x96.
MAX_FRAME_PIXELS = 128 * 96
MAX_VIDEO_FRAMES = 10_000
MAX_IMAGE_PIXELS = 1_000_000


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _free_port() -> int:
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


@dataclass
class Tally:
    """One fault's line in the table."""

    fault: str
    submitted: int = 0
    finished: int = 0
    failed: Counter[str] = field(default_factory=Counter)  # the reason the client was given -> how many
    lost: list[str] = field(default_factory=list)
    busy_retries: int = 0  # uploads answered 429 and sent again after Retry-After
    worker_peak_mb: float | None = None


class Chaos:
    def __init__(self, settings: Settings, tmp: Path, redis_server: AofRedis) -> None:
        self.settings = settings
        self.tmp = tmp
        self.redis = redis_server
        self.port = _free_port()
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None
        self.worker: subprocess.Popen | None = None
        self.workers: list[subprocess.Popen] = []
        self.accepted: set[str] = set()
        self.tallies: list[Tally] = []

    # --- the processes -------------------------------------------------------------------------------

    def start_api(self) -> None:
        self.app = create_app(get_settings().model_copy())
        # An upload still arriving when the API stops is cut off after 2 s, as a restart by a supervisor would.
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(config)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)  # no connection to the old one
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, "uvicorn to start", timeout=60)

    def stop_api(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.should_exit = True
            self.thread.join(30)
            assert not self.thread.is_alive(), "the API did not stop"

    def start_worker(self) -> None:
        with (self.tmp / f"worker-{len(self.workers)}.log").open("wb") as log:
            self.worker = subprocess.Popen(
                [str(Path(sys.executable).parent / "clipmorph"), "worker"], stdout=log, stderr=subprocess.STDOUT
            )
        self.workers.append(self.worker)

    def worker_peak_mb(self) -> float | None:
        """The worker's peak resident memory so far (it runs jobs in its own process: a SimpleWorker)."""
        try:
            status = Path(f"/proc/{self.worker.pid}/status").read_text()
        except (AttributeError, FileNotFoundError):
            return None
        kb = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return kb / 1024 if kb else None

    # --- jobs ----------------------------------------------------------------------------------------

    def tally(self, fault: str) -> Tally:
        self.tallies.append(Tally(fault))
        return self.tallies[-1]

    def submit(self, tally: Tally, clip: Path, **fields: str) -> str | None:
        """Upload `clip`; -> the job's id, or None when it was refused (its reason tallied as a failure)."""
        tally.submitted += 1
        data = clip.read_bytes()
        while True:
            r = self.http.post("/v1/jobs", data={"style": STYLE, **fields}, files={"file": (clip.name, data)})
            if r.status_code != 429:
                break
            tally.busy_retries += 1
            time.sleep(float(r.headers["retry-after"]))
        if r.status_code == 202:
            self.accepted.add(r.json()["id"])
            return r.json()["id"]
        tally.failed[f"{r.status_code} {r.json()['detail']}"] += 1
        return None

    def job(self, job_id: str) -> dict:
        r = self.http.get(f"/v1/jobs/{job_id}")
        if r.status_code == 503:  # Redis restarting: ask again
            return {"status": "unavailable", "progress": None}
        assert r.status_code in (200, 404), r.text
        return r.json() if r.status_code == 200 else {"status": "gone"}

    def wait_for_end(self, job_id: str, timeout: float = WAIT) -> dict:
        seen: dict = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = self.job(job_id)
            if seen["status"] in ENDED or seen["status"] == "gone":
                break
            time.sleep(0.1)
        return seen

    def result_frames(self, job_id: str) -> int | None:
        r = self.http.get(f"/v1/jobs/{job_id}/result")
        if r.status_code != 200:
            return None
        out = self.tmp / f"{job_id}.mp4"
        out.write_bytes(r.content)
        try:
            with av.open(str(out)) as container:
                return sum(1 for _ in container.decode(video=0))
        except av.FFmpegError:
            return None

    def settle(self, tally: Tally, jobs: dict[str, int | None]) -> dict[str, dict]:
        """Wait for each accepted job (id -> the frames its result must have) to end and tally how it did.

        Lost: still queued or running after WAIT, gone from Redis, cancelled (nobody asked), or finished
        with no result or a result missing frames.
        """
        ended = {job_id: self.wait_for_end(job_id) for job_id in jobs}
        for job_id, job in ended.items():
            if job["status"] == "finished" and self.result_frames(job_id) == jobs[job_id]:
                tally.finished += 1
            elif job["status"] == "failed" and job.get("error"):
                tally.failed[f"job failed: {job['error']}"] += 1
            else:
                tally.lost.append(f"{job_id}: {job['status']}")
        tally.worker_peak_mb = self.worker_peak_mb()
        return ended

    def orphan_folders(self) -> list[str]:
        """Job folders that belong to no accepted job: what a refused or cut-off upload left behind."""
        return sorted(p.name for p in self.settings.jobs_dir.iterdir() if p.name not in self.accepted)

    def check(self, tally: Tally) -> None:
        assert tally.lost == [], tally
        assert self.orphan_folders() == []
        assert tally.submitted == tally.finished + sum(tally.failed.values()) + len(tally.lost)

    def table(self) -> list[str]:
        header = f"{'fault':<34} {'submitted':>9} {'finished':>8} {'failed':>6} {'lost':>4} {'worker MB':>9}  reasons"
        lines = [header, "-" * len(header)]
        for t in self.tallies:
            reasons = [f"{n} x {reason}" for reason, n in t.failed.items()]
            if t.busy_retries:
                reasons.append(f"({t.busy_retries} uploads answered 429, sent again after Retry-After)")
            peak = f"{t.worker_peak_mb:.0f}" if t.worker_peak_mb else "-"
            first, *rest = reasons or [""]
            lines.append(
                f"{t.fault:<34} {t.submitted:>9} {t.finished:>8} {sum(t.failed.values()):>6} {len(t.lost):>4} "
                f"{peak:>9}  {first}"
            )
            lines += [f"{'':<77}  {reason}" for reason in rest]
        total_lost = sum(len(t.lost) for t in self.tallies)
        lines.append(f"lost in all: {total_lost}")
        return lines


def _print_table(config: pytest.Config, lines: list[str]) -> None:
    """To the terminal, past pytest's output capture (which would keep it to itself when all pass)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("=", "chaos: jobs per fault")
        for line in lines:
            reporter.write_line(line)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, assets: Path, empty_mlflow_db: Path, request) -> Iterator[Chaos]:
    tmp = tmp_path_factory.mktemp("chaos")
    port = _free_port()
    shutil.copy(empty_mlflow_db, tmp / "mlflow.db")  # migrating a fresh registry takes long
    env = {
        "CLIPMORPH_VAR_DIR": str(tmp / "var"),
        "CLIPMORPH_MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
        "CLIPMORPH_MLFLOW_ARTIFACT_ROOT": str(tmp / "artifacts"),
        "CLIPMORPH_ASSETS_DIR": str(assets),
        # Only the tiny model: registering the built-in ones (with their ONNX export) is slow and not tested here.
        "CLIPMORPH_BUILTIN_MODELS_DIR": str(tmp / "no-builtins"),
        "CLIPMORPH_REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "CLIPMORPH_QUEUE_NAME": f"chaos-{uuid.uuid4().hex[:8]}",
        # Beats every second; a running job is given up on only after 10 s of silence, longer than the
        # Redis restart, so the job must survive the restart on its own worker, not be re-run.
        "CLIPMORPH_WORKER_HEARTBEAT_SECONDS": "1",
        "CLIPMORPH_WORKER_HEARTBEAT_GRACE_SECONDS": "10",
        "CLIPMORPH_WORKER_MAINTENANCE_SECONDS": "1",
        "CLIPMORPH_JOB_RETRIES": "1",
        "CLIPMORPH_MAX_FRAME_PIXELS": str(MAX_FRAME_PIXELS),
        "CLIPMORPH_MAX_VIDEO_FRAMES": str(MAX_VIDEO_FRAMES),
        "CLIPMORPH_MAX_IMAGE_PIXELS": str(MAX_IMAGE_PIXELS),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("CLIPMORPH_API_TOKEN", "CLIPMORPH_MAX_UPLOADS_PER_CLIENT", "CLIPMORPH_MIN_FREE_DISK_BYTES"):
            mp.delenv(key, raising=False)  # the defaults: 4 uploads per client, 2 GiB kept free
        get_settings.cache_clear()
        settings = get_settings()
        settings.var_dir.mkdir(parents=True)
        register_tiny_model(settings, STYLE)
        stack = Chaos(settings, tmp, AofRedis(settings, port))
        stack.redis.start()
        stack.start_api()
        stack.start_worker()
        try:
            yield stack
        finally:
            stop_processes([w for w in stack.workers if w.poll() is None])
            stack.stop_api()
            if stack.redis.proc and stack.redis.proc.poll() is None:
                stack.redis.kill()
            _print_table(request.config, stack.table())
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chaos-clips")
    return {
        "tiny": make_clip(folder / "tiny.mp4", frames=6, size=(32, 24), audio=False),
        "short": make_clip(folder / "short.mp4", frames=12, size=(64, 48)),
        # Long enough that a job is still running when the test reacts to its first progress report.
        "long": make_clip(folder / "long.mp4", frames=150, size=(128, 96), fps=25, audio=False),
    }


def test_twenty_concurrent_uploads(chaos: Chaos, clips) -> None:
    tally = chaos.tally("20 concurrent uploads")
    with ThreadPoolExecutor(20) as pool:
        ids = list(pool.map(lambda _: chaos.submit(tally, clips["tiny"]), range(20)))
    assert None not in ids and len(set(ids)) == 20
    chaos.settle(tally, dict.fromkeys(ids, 6))
    chaos.check(tally)
    assert tally.finished == 20


def test_a_4096x4096_file_is_refused_at_upload(chaos: Chaos, tmp_path: Path) -> None:
    tally = chaos.tally("4096x4096 file")
    assert chaos.submit(tally, make_flat_clip(tmp_path / "huge.mp4", (4096, 4096), 2)) is None
    chaos.check(tally)
    assert list(tally.failed) == [
        "413 video too large: 4096x4096 frames are larger than the limit of 3840 pixels a side"
    ]


def test_a_30000_frame_file_is_refused_at_upload(chaos: Chaos, tmp_path: Path) -> None:
    tally = chaos.tally("30 000-frame file (16x16)")
    clip = make_flat_clip(tmp_path / "many.mp4", (16, 16), 30_000, fps=1000)  # 30 s: under the duration cap
    assert chaos.submit(tally, clip) is None
    chaos.check(tally)
    assert list(tally.failed) == [
        f"413 video too large: the video has more frames than the limit of {MAX_VIDEO_FRAMES}"
    ]


def test_a_resolution_change_mid_stream(chaos: Chaos, tmp_path: Path) -> None:
    """The probe sees the first size; the worker checks every decoded frame, and fails the job once."""
    tally = chaos.tally("resolution change mid-stream")
    grows = make_resizing_clip(tmp_path / "grows.ts", [((64, 48), 50), ((160, 120), 5)])
    within = make_resizing_clip(tmp_path / "within.ts", [((64, 48), 50), ((96, 72), 5)])
    over, fine = chaos.submit(tally, grows), chaos.submit(tally, within)
    assert over and fine
    ended = chaos.settle(tally, {over: None, fine: 55})
    chaos.check(tally)
    assert tally.finished == 1
    assert ended[over]["retries_left"] == 0  # bad input: not retried
    assert list(tally.failed) == [
        f"job failed: video too large: 160x120 frames have more pixels than the limit of {MAX_FRAME_PIXELS} per frame"
    ]


def test_an_oversized_image(chaos: Chaos) -> None:
    tally = chaos.tally("oversized image (1200x1000)")
    buffer = io.BytesIO()
    Image.new("RGB", (1200, 1000), (90, 120, 200)).save(buffer, "PNG")
    tally.submitted += 1
    r = chaos.http.post("/v1/images", data={"style": STYLE}, files={"file": ("big.png", buffer.getvalue())})
    if r.status_code == 202:  # queued as an image job: it must end like any other
        chaos.accepted.add(r.json()["id"])
        chaos.settle(tally, {r.json()["id"]: None})
    else:
        tally.failed[f"{r.status_code} {r.json()['detail']}"] += 1
        assert r.status_code == 413, r.text
    chaos.check(tally)
    assert list(tally.failed) == [f"413 image too large: more than {MAX_IMAGE_PIXELS} pixels"]


def test_a_full_disk_refuses_uploads_and_keeps_the_jobs_it_has(chaos: Chaos, clips) -> None:
    """Disk full, simulated through the free-space threshold: more than any disk has must stay free."""
    tally = chaos.tally("disk full")
    before = chaos.submit(tally, clips["short"])
    settings = chaos.app.state.services.settings
    kept_free = settings.min_free_disk_bytes
    settings.min_free_disk_bytes = 10**18
    try:
        refused = [chaos.submit(tally, clips["short"]) for _ in range(3)]
    finally:
        settings.min_free_disk_bytes = kept_free
    after = chaos.submit(tally, clips["short"])
    assert refused == [None] * 3 and before and after
    chaos.settle(tally, {before: 12, after: 12})
    chaos.check(tally)
    assert tally.finished == 2
    assert tally.failed == Counter({"507 the server is out of disk space; try again later": 3})


def test_worker_sigkill_mid_job(chaos: Chaos, clips) -> None:
    """The job the worker was running is found abandoned (no heartbeat) and run again by a new worker."""
    tally = chaos.tally("worker SIGKILL mid-job")
    running = chaos.submit(tally, clips["long"])
    wait_until(lambda: (chaos.job(running)["progress"] or {}).get("done", 0) > 0, "the job to make progress")
    queued = chaos.submit(tally, clips["short"])
    os.kill(chaos.worker.pid, signal.SIGKILL)
    chaos.worker.wait()
    chaos.start_worker()
    ended = chaos.settle(tally, {running: 150, queued: 12})
    chaos.check(tally)
    assert tally.finished == 2
    assert ended[running]["retries_left"] == 0  # run twice: the killed attempt and the retry


def test_redis_sigkill_mid_job(chaos: Chaos, clips) -> None:
    tally = chaos.tally("Redis SIGKILL mid-job")
    running = chaos.submit(tally, clips["long"])
    wait_until(lambda: (chaos.job(running)["progress"] or {}).get("done", 0) > 0, "the first job to make progress")
    queued = chaos.submit(tally, clips["short"])  # one worker, busy: this one waits in the queue
    assert running and queued and chaos.job(queued)["status"] == "queued"
    wait_until(lambda: chaos.redis.on_disk(queued), "the queued job to reach the append-only file", timeout=10)

    assert chaos.job(running)["status"] == "running"
    chaos.redis.kill()
    down = chaos.http.get(f"/v1/jobs/{queued}")
    assert down.status_code == 503 and down.headers["retry-after"].isdigit()
    assert down.json() == {"detail": "the job queue is unavailable; try again shortly"}
    chaos.redis.start()  # same data dir: the append-only file brings the queue and the running job back

    # The API recovers by itself; the worker waited for Redis, finished the job it was running, then the queued one.
    ended = chaos.settle(tally, {running: 150, queued: 12})
    chaos.check(tally)
    assert tally.finished == 2, ended
    assert ended[running]["retries_left"] == 1  # finished by the attempt Redis died under, not re-run
    assert chaos.worker.poll() is None, "the worker died instead of waiting for Redis"


def test_api_restart_mid_upload(chaos: Chaos, clips) -> None:
    """Jobs live in Redis and on the worker: an API restart loses none; an upload it cuts off leaves no folder."""
    tally = chaos.tally("API restart mid-upload")
    running = chaos.submit(tally, clips["long"])
    queued = chaos.submit(tally, clips["short"])
    wait_until(lambda: chaos.job(running)["status"] == "running", "the first job to run")
    # An upload that announces a megabyte, sends a hundred bytes and waits: the restart cuts it off.
    tally.submitted += 1
    slow = socket.create_connection(("127.0.0.1", chaos.port), timeout=30)
    body = (
        f'--cut\r\nContent-Disposition: form-data; name="style"\r\n\r\n{STYLE}\r\n'
        '--cut\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n'
    ).encode() + b"x" * 100
    slow.sendall(
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n"
        b"Content-Type: multipart/form-data; boundary=cut\r\n\r\n" + body
    )
    wait_until(lambda: len(chaos.orphan_folders()) == 1, "the upload's folder")
    chaos.stop_api()
    with slow:
        try:
            answer = slow.recv(4096)
        except OSError:  # reset
            answer = b""
    tally.failed[f"upload cut off by the restart ({answer.split(b' ', 2)[1].decode() if answer else 'no answer'})"] += 1
    chaos.start_api()
    chaos.settle(tally, {running: 150, queued: 12})
    chaos.check(tally)
    assert tally.finished == 2
