"""The local stack: redis-server, the API under uvicorn and one worker, as background processes.

Built-in models are registered first when the registry lacks them.
Pid files live in <var_dir>/run, logs in <logs_dir>; nothing needs root except
installing redis-server when it is missing (through apt-get, as root or with
password-less sudo). `clipmorph stack up|down|status|logs` drives it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import httpx
import redis
from rq import Queue, Worker

from clipmorph import registry
from clipmorph.settings import REPO_ROOT, Settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}
STOP_SECONDS = 15.0


class StackError(RuntimeError):
    pass


@dataclass(frozen=True)
class Service:
    name: str
    argv: list[str]
    ready: Callable[[], bool]

    def pid_file(self, settings: Settings) -> Path:
        return settings.run_dir / f"{self.name}.pid"

    def log_file(self, settings: Settings) -> Path:
        return settings.logs_dir / f"{self.name}.log"


def _redis_ok(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


def _api_ok(settings: Settings) -> bool:
    """The API answers with Redis and the registry ready; its worker check is the worker service's own."""
    try:
        ready = httpx.get(f"{settings.api_base_url}/readyz", timeout=2).json()
    except (httpx.HTTPError, ValueError):
        return False
    return ready.get("redis") is True and ready.get("registry") is True


def _worker_ok(settings: Settings) -> bool:
    try:
        connection = redis.Redis.from_url(settings.redis_url)
        return Worker.count(queue=Queue(settings.queue_name, connection=connection)) > 0
    except redis.RedisError:
        return False


def redis_server() -> str:
    """Path of redis-server, installing the system package first when it is missing."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    if sudo and not shutil.which("sudo"):
        raise StackError("redis-server is not installed; install it with: sudo apt-get install -y redis-server")
    install = [*sudo, "apt-get", "install", "-y", "-qq", "redis-server"]
    print("redis-server is missing; installing it:", " ".join(install), flush=True)
    if subprocess.run(install, check=False).returncode != 0:
        # A fresh machine may have no package lists yet.
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=False)
        subprocess.run(install, check=False)
    exe = shutil.which("redis-server")
    if not exe:
        raise StackError("could not install redis-server; run: sudo apt-get install -y redis-server")
    return exe


def redis_server_args(settings: Settings, port: int) -> list[str]:
    """Loopback only, and an append-only file flushed every second: a restarted (or killed) Redis
    comes back with its queues, so queued and running jobs are not lost; at most ~1 s of writes is."""
    data = settings.var_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    # "--save ''": no RDB snapshots on top of the append-only file.
    return [
        "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
    ]  # fmt: skip


def services(settings: Settings) -> list[Service]:
    """The stack's processes in start order; redis only when the configured URL is local."""
    bin_dir = Path(sys.executable).parent
    url = urlparse(settings.redis_url)
    redis_args = redis_server_args(settings, url.port or 6379)
    api_args = f"api.main:create_app --factory --host {settings.api_host} --port {settings.api_port}".split()
    stack = []
    if (url.hostname or "127.0.0.1") in LOCAL_HOSTS:
        stack.append(Service("redis", ["redis-server", *redis_args], lambda: _redis_ok(settings.redis_url)))
    stack.append(Service("api", [str(bin_dir / "uvicorn"), *api_args], lambda: _api_ok(settings)))
    stack.append(Service("worker", [str(bin_dir / "clipmorph"), "worker"], lambda: _worker_ok(settings)))
    return stack


def _pid(service: Service, settings: Settings) -> int | None:
    """The service's pid if its pid file names a live process that is still that service."""
    try:
        pid = int(service.pid_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not _alive(pid):
        return None
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists() and Path(service.argv[0]).name.encode() not in cmdline.read_bytes():
        return None  # the pid was reused by something else
    return pid


def _wait(ready: Callable[[], bool], seconds: float, alive: Callable[[], bool] = lambda: True) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return False
        time.sleep(0.3)
    return ready()


def up(settings: Settings, timeout: float = 120.0) -> dict[str, int | None]:
    """Start whatever of the stack is not running and wait until each part answers; -> pids."""
    # Here, before the API and the worker start, so a first `make up` reports it once.
    for mv in registry.register_builtins(settings=settings):
        print(f"registered built-in model {mv.name} version {mv.version} as {settings.champion_alias}", flush=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    pids: dict[str, int | None] = {}
    for service in services(settings):
        pid = _pid(service, settings)
        if pid is None and service.name == "redis" and _redis_ok(settings.redis_url):
            print(f"redis: already answering at {settings.redis_url}, not starting another", flush=True)
            pids[service.name] = None
            continue
        if pid is None and service.name == "api" and not _port_free(settings.api_host, settings.api_port):
            raise StackError(
                f"port {settings.api_port} on {settings.api_host} is taken by another program; "
                "choose another with CLIPMORPH_API_PORT"
            )
        alive = lambda s=service: _pid(s, settings) is not None  # noqa: E731
        if pid is None:
            argv = [redis_server(), *service.argv[1:]] if service.name == "redis" else service.argv
            with service.log_file(settings).open("ab") as log:
                # A new session: the process outlives the terminal that ran `make up`.
                proc = subprocess.Popen(
                    argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )  # fmt: skip
            pid = proc.pid
            alive = lambda p=proc: p.poll() is None  # noqa: E731  (right after the fork, /proc shows python)
            service.pid_file(settings).write_text(str(pid))
            print(f"{service.name}: started (pid {pid}), log {service.log_file(settings)}", flush=True)
        if not _wait(service.ready, timeout, alive):
            tail = "\n".join(read_log(service.log_file(settings), 20))
            raise StackError(f"{service.name} did not become ready; last log lines:\n{tail}")
        pids[service.name] = pid
    print(f"stack up: API at {settings.api_base_url} (web page at /, docs at /docs)", flush=True)
    return pids


def down(settings: Settings) -> list[str]:
    """Stop the stack's processes (workers finish or abandon their job: it is retried later); -> names stopped."""
    stopped = []
    for service in reversed(services(settings)):
        pid = _pid(service, settings)
        if pid is not None:
            _terminate(pid)
            stopped.append(service.name)
            print(f"{service.name}: stopped (pid {pid})", flush=True)
        service.pid_file(settings).unlink(missing_ok=True)
    return stopped


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        if not _wait(lambda: not _alive(pid), STOP_SECONDS):
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: not _alive(pid), 5)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    # A child we started that has exited stays a zombie until reaped; it is not running.
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    return True


def status(settings: Settings) -> dict[str, int | None]:
    return {service.name: _pid(service, settings) for service in services(settings)}


def read_log(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        return [line.decode("utf-8", "replace").rstrip("\n") for line in deque(f, maxlen=lines)]


def log_files(settings: Settings) -> list[Path]:
    return [service.log_file(settings) for service in services(settings)]
