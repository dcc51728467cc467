"""The local stack: redis-server, the API under uvicorn, a video worker and a training worker, kept by supervisord.

supervisord (the `supervisor` package) starts them in the background and restarts any of them
that dies; Redis keeps an append-only file, so a restarted Redis still has its queues, and the
API and the worker reconnect by themselves (clipmorph.serving.redisconn).
Built-in models are registered first when the registry lacks them.
supervisord's configuration, socket and pid file live in <var_dir>/run, logs in <logs_dir>;
`.venv/bin/supervisorctl -c var/run/supervisord.conf status` talks to it directly. Nothing needs
root except installing redis-server when it is missing (through apt-get, as root or with
password-less sudo). `clipmorph stack up|down|status|logs` drives it.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from xmlrpc.client import Fault, ServerProxy

import httpx
import redis
from rq import Queue, Worker
from supervisor.xmlrpc import SupervisorTransport

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


def _worker_ok(settings: Settings, queue: str) -> bool:
    try:
        connection = redis.Redis.from_url(settings.redis_url)
        return Worker.count(queue=Queue(queue, connection=connection)) > 0
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
    worker = str(bin_dir / "clipmorph")
    stack.append(Service("worker", [worker, "worker"], lambda: _worker_ok(settings, settings.queue_name)))
    # Its own process for styles uploaded over REST (POST /v1/styles): a training job runs for many minutes and
    # would hold the video worker that long; idle, it waits on the train queue only.
    trainer = [worker, "worker", "--queues", "train"]
    stack.append(Service("trainer", trainer, lambda: _worker_ok(settings, settings.train_queue_name)))
    return stack


def _rpc(settings: Settings) -> ServerProxy | None:
    """supervisord's XML-RPC interface when it runs for this stack, else None."""
    sock = settings.run_dir / "supervisor.sock"
    if not sock.exists():
        return None
    proxy = ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, f"unix://{sock}"))
    try:
        proxy.supervisor.getState()
    except (OSError, Fault):
        return None  # a socket left by a supervisord that was killed
    return proxy


def supervisor_conf(settings: Settings, stack: list[Service]) -> str:
    """supervisord's configuration: each service restarted whenever it exits, its output in its log."""
    run, logs = settings.run_dir, settings.logs_dir
    lines = [
        "[supervisord]", f"logfile={logs / 'supervisord.log'}", f"pidfile={run / 'supervisord.pid'}",
        f"directory={REPO_ROOT}",
        "[unix_http_server]", f"file={run / 'supervisor.sock'}", "chmod=0700",
        "[rpcinterface:supervisor]", "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]", f"serverurl=unix://{run / 'supervisor.sock'}",
    ]  # fmt: skip
    for priority, service in enumerate(stack, start=1):
        lines += [
            f"[program:{service.name}]",
            # '%' starts an expansion in supervisord's files; shlex quoting survives its shlex.split.
            f"command={shlex.join(service.argv).replace('%', '%%')}",
            f"priority={priority}",  # started in this order, stopped in the reverse one
            f"directory={REPO_ROOT}",
            "autorestart=true",
            "startsecs=1",
            "startretries=10",  # a process that dies within startsecs is retried this often, then FATAL
            f"stopwaitsecs={STOP_SECONDS:g}",  # SIGTERM, then SIGKILL (a worker abandons its job: it is retried)
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={service.log_file(settings)}",
        ]
    return "\n".join(lines) + "\n"


def _start_supervisord(settings: Settings, stack: list[Service]) -> ServerProxy:
    conf = settings.run_dir / "supervisord.conf"
    conf.write_text(supervisor_conf(settings, stack))
    # supervisord forks into the background and starts the programs; it outlives the terminal of `make up`.
    exe = Path(sys.executable).parent / "supervisord"
    done = subprocess.run([str(exe), "-c", str(conf)], capture_output=True, text=True, check=False)
    proxy = None
    if done.returncode == 0 and _wait(lambda: _rpc(settings) is not None, 15):
        proxy = _rpc(settings)
    if proxy is None:
        tail = "\n".join(read_log(settings.logs_dir / "supervisord.log", 20))
        raise StackError(f"supervisord did not start: {done.stderr.strip()}\n{tail}")
    return proxy


def _processes(proxy: ServerProxy | None) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in proxy.supervisor.getAllProcessInfo()} if proxy else {}


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
    """Start the stack under supervisord (or whatever of it is stopped) and wait until each part answers; -> pids."""
    # Here, before the API and the worker start, so a first `make up` reports it once.
    for mv in registry.register_builtins(settings=settings):
        print(f"registered built-in model {mv.name} version {mv.version} as {settings.champion_alias}", flush=True)
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    stack = services(settings)
    proxy = _rpc(settings)
    if proxy is None:
        if stack[0].name == "redis" and _redis_ok(settings.redis_url):
            print(f"redis: already answering at {settings.redis_url}, not starting another", flush=True)
            stack = stack[1:]
        if not _port_free(settings.api_host, settings.api_port):
            raise StackError(
                f"port {settings.api_port} on {settings.api_host} is taken by another program; "
                "choose another with CLIPMORPH_API_PORT"
            )
        if stack[0].name == "redis":
            stack[0] = dataclasses.replace(stack[0], argv=[redis_server(), *stack[0].argv[1:]])
        proxy = _start_supervisord(settings, stack)
    for name, process in _processes(proxy).items():
        if process["statename"] in ("STOPPED", "EXITED", "FATAL"):  # stopped by hand (supervisorctl) or gave up
            proxy.supervisor.startProcess(name, False)
    supervised = _processes(proxy)
    for service in (s for s in stack if s.name in supervised):
        alive = lambda name=service.name: _processes(proxy)[name]["statename"] != "FATAL"  # noqa: E731
        if not _wait(service.ready, timeout, alive):
            tail = "\n".join(read_log(service.log_file(settings), 20))
            raise StackError(f"{service.name} did not become ready; last log lines:\n{tail}")
        pid = _processes(proxy)[service.name]["pid"]
        print(f"{service.name}: running (pid {pid}), log {service.log_file(settings)}", flush=True)
    print(f"stack up: API at {settings.api_base_url} (web page at /, docs at /docs)", flush=True)
    return status(settings)


def down(settings: Settings) -> list[str]:
    """Stop the stack and its supervisord; -> names stopped.

    A worker finishes or abandons its job (it is retried later)."""
    proxy = _rpc(settings)
    if proxy is None:
        return []
    pids = {name: pid for name, pid in status(settings).items() if pid}
    running = {name: pids[name] for name in reversed(list(pids))}  # supervisord stops them in this order
    pid_file = settings.run_dir / "supervisord.pid"
    proxy.supervisor.shutdown()  # stops the programs in reverse start order, then exits
    if not _wait(lambda: not pid_file.exists(), STOP_SECONDS * len(running) + 10):
        raise StackError(f"supervisord did not stop; see {settings.logs_dir / 'supervisord.log'}")
    for name, pid in running.items():
        print(f"{name}: stopped (pid {pid})", flush=True)
    return list(running)


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def status(settings: Settings) -> dict[str, int | None]:
    """Each service's pid while supervisord reports it running, else None."""
    processes = _processes(_rpc(settings))
    return {
        s.name: processes[s.name]["pid"] if processes.get(s.name, {}).get("statename") == "RUNNING" else None
        for s in services(settings)
    }


def read_log(path: Path, lines: int) -> list[str]:
    if not path.exists():
        return []
    with path.open("rb") as f:
        return [line.decode("utf-8", "replace").rstrip("\n") for line in deque(f, maxlen=lines)]


def log_files(settings: Settings) -> list[Path]:
    """Each service's log, then supervisord's (which tells when a process died and was restarted)."""
    return [*(service.log_file(settings) for service in services(settings)), settings.logs_dir / "supervisord.log"]
