"""What one upload may hold, against a real uvicorn and a real redis-server: a deadline, a slot per
client, its share of the free disk; and whatever way an upload ends early, its job folder goes.

Slow clients are raw sockets that send the request head and part of the body, then wait.
"""

from __future__ import annotations

import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from serving_helpers import make_clip, register_tiny_model

from api.main import create_app
from clipmorph.settings import Settings, get_settings

pytestmark = pytest.mark.slow
STYLE = "tiny"
BOUNDARY = "slowboundary"
HEAD = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="style"\r\n\r\n{STYLE}\r\n'
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"\r\n'
    "Content-Type: video/mp4\r\n\r\n"
).encode()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def base_settings(tmp_path_factory, assets, redis_url, empty_mlflow_db) -> Iterator[Settings]:
    """One registry with a tiny champion for the module (creating one costs seconds)."""
    root = tmp_path_factory.mktemp("uploads")
    shutil.copy(empty_mlflow_db, root / "mlflow.db")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPMORPH_VAR_DIR", str(root / "var"))
        mp.setenv("CLIPMORPH_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("CLIPMORPH_MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
        mp.setenv("CLIPMORPH_ASSETS_DIR", str(assets))
        mp.setenv("CLIPMORPH_BUILTIN_MODELS_DIR", str(root / "no-builtins"))
        mp.setenv("CLIPMORPH_REDIS_URL", redis_url)
        mp.setenv("WANDB_MODE", "disabled")
        mp.delenv("CLIPMORPH_API_TOKEN", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        register_tiny_model(settings, STYLE)
        yield settings
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=6, size=(32, 24), audio=False).read_bytes()


@dataclass
class Live:
    app: FastAPI
    settings: Settings
    port: int

    def client(self, source: str = "127.0.0.1") -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", transport=transport, timeout=30)

    def upload(self, data: bytes, source: str = "127.0.0.1") -> httpx.Response:
        with self.client(source) as c:
            return c.post("/v1/jobs", data={"style": STYLE}, files={"file": ("clip.mp4", data, "video/mp4")})

    def slow_upload(self, declared: int, source: str = "127.0.0.1") -> socket.socket:
        """An upload that announces `declared` bytes, sends its first hundred, and waits."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30, source_address=(source, 0))
        head = (
            f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {declared}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
        ).encode()
        sock.sendall(head + HEAD + b"x" * 100)
        return sock

    def in_progress(self, client: str = "127.0.0.1") -> int:
        gate = getattr(self.app.state, "upload_gate", None)
        return gate.active[client] if gate else 0

    def job_dirs(self) -> list[Path]:
        return sorted(self.settings.jobs_dir.iterdir())


@pytest.fixture
def live(base_settings, tmp_path) -> Iterator[Callable[..., Live]]:
    """Start the API under uvicorn (in a thread) with these settings overridden, a var dir of its own."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(**overrides) -> Live:
        fields = {**base_settings.model_dump(), "var_dir": tmp_path / "var", "queue_name": uuid.uuid4().hex}
        settings = Settings(**{**fields, **overrides})
        app = create_app(settings)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        wait_until(lambda: server.started, "uvicorn to start")
        return Live(app, settings, port)

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(15)


def read_response(sock: socket.socket) -> bytes:
    """The whole response on this connection: a single recv may return the head without the body."""
    answer = b""
    while True:
        head, found, body = answer.partition(b"\r\n\r\n")
        if found:
            length = re.search(rb"(?i)content-length: *(\d+)", head)
            if length is None or len(body) >= int(length.group(1)):
                return answer
        chunk = sock.recv(4096)
        if not chunk:
            return answer
        answer += chunk


def status_of(sock: socket.socket) -> int:
    """The status code of the response the server sends on this connection."""
    return int(read_response(sock).split(b" ", 2)[1])


def test_a_client_may_have_only_so_many_uploads_in_progress(live, clip):
    api = live(max_uploads_per_client=2)
    slow = [api.slow_upload(declared=10_000_000) for _ in range(2)]
    wait_until(lambda: api.in_progress() == 2, "both slow uploads to be receiving")

    busy = api.upload(clip)
    assert busy.status_code == 429, busy.text
    assert busy.headers["retry-after"] == "1" and "at most 2 at a time" in busy.json()["detail"]
    assert len(api.job_dirs()) == 2  # the refused upload left no folder
    other = api.upload(clip, source="127.0.0.2")  # another client is not held up
    assert other.status_code == 202, other.text

    for sock in slow:  # the clients give up halfway: their half-written uploads go
        sock.close()
    wait_until(lambda: api.in_progress() == 0, "the abandoned uploads to be let go")
    assert [p.name for p in api.job_dirs()] == [other.json()["id"]]
    again = api.upload(clip)
    assert again.status_code == 202, again.text


def test_the_disk_check_counts_what_uploads_in_progress_will_still_write(live, clip, tmp_path):
    (tmp_path / "var" / "jobs").mkdir(parents=True)
    free = shutil.disk_usage(tmp_path / "var" / "jobs").free
    # Each of two uploads announcing half the free disk would leave enough on its own; not both.
    api = live(max_upload_bytes=10 * free, min_free_disk_bytes=free // 5)
    first = api.slow_upload(declared=free // 2)
    wait_until(lambda: api.in_progress() == 1, "the first upload to be receiving")

    with api.slow_upload(declared=free // 2) as second:
        answer = read_response(second)
    assert answer.startswith(b"HTTP/1.1 507 ") and b"out of disk space" in answer, answer
    assert len(api.job_dirs()) == 1
    first.close()
    wait_until(lambda: api.in_progress() == 0, "the first upload to be let go")
    assert api.upload(clip).status_code == 202
    assert len(api.job_dirs()) == 1  # the abandoned upload's folder went with it


def test_an_upload_past_its_deadline_gets_408_and_leaves_no_folder(live):
    api = live(upload_deadline_seconds=1.0)
    slow = api.slow_upload(declared=10_000_000)
    started = time.monotonic()
    with slow:
        assert status_of(slow) == 408
    assert time.monotonic() - started < 15
    wait_until(lambda: api.in_progress() == 0, "the upload to be let go")
    assert api.job_dirs() == []
