"""The local stack (`make up` / `make down`), the demo's model check, and the docker-compose file."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import httpx
import pytest
import yaml

from clipmorph import registry
from clipmorph.serving import stack
from clipmorph.serving.client import DemoError, ensure_models
from clipmorph.settings import REPO_ROOT, get_settings

COMPOSE = REPO_ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or the standalone `docker-compose`, whichever works here."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_validates():
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    secrets = {"CLIPMORPH_API_TOKEN": "t0ken", "MINIO_ROOT_PASSWORD": "s3cret-key"}
    env = {**os.environ, **secrets}
    done = subprocess.run(
        [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    # Secure by default: without either secret the file does not even configure.
    for name in secrets:
        without = {k: v for k, v in env.items() if k != name}
        refused = subprocess.run(
            [*command, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, env=without
        )
        assert refused.returncode != 0 and name in refused.stderr


def test_compose_publishes_the_api_on_loopback_and_not_mlflow():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "ports" not in services["mlflow"]
    assert services["api"]["ports"] == ["${CLIPMORPH_PUBLISH:-127.0.0.1}:8000:8000"]


def test_compose_services_share_jobs_and_workers_reserve_a_gpu():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert {"redis", "mlflow", "api", "worker", "trainer"} <= set(services)
    for name in ("worker", "trainer"):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert services["trainer"]["command"][-2:] == ["--queues", "train"]  # styles uploaded over REST get trained
    for name in ("api", "worker", "trainer"):
        env = services[name]["environment"]
        assert env["CLIPMORPH_REDIS_URL"] == "redis://redis:6379/0"
        assert env["CLIPMORPH_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert any(v.startswith("jobs:") for v in services[name]["volumes"])
    assert (REPO_ROOT / services["worker"]["build"]["dockerfile"]).exists()
    assert "nvidia/cuda" in (REPO_ROOT / "docker" / "Dockerfile.worker").read_text()


def test_demo_refuses_clearly_without_any_model(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPMORPH_BUILTIN_MODELS_DIR", str(tmp_path / "no-models"))
    get_settings.cache_clear()
    with pytest.raises(DemoError, match="no models"):
        ensure_models(get_settings())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.chaos
def test_stack_up_status_logs_down_and_restarts_what_dies(settings, monkeypatch):
    monkeypatch.setenv("CLIPMORPH_REDIS_URL", f"redis://127.0.0.1:{_free_port()}/0")
    monkeypatch.setenv("CLIPMORPH_API_PORT", str(_free_port()))
    get_settings.cache_clear()
    s = get_settings()
    try:
        pids = stack.up(s)
        assert set(pids) == {"redis", "api", "worker", "trainer"} and all(pids.values())
        # `make up` on a fresh registry: the built-in styles are champions before the first upload.
        client = registry.configure(s)
        for style in registry.builtin_model_dirs(s):
            champion = client.get_model_version_by_alias(registry.registered_name(style), s.champion_alias)
            assert str(champion.version) == "1"
        assert stack.status(s) == pids
        assert httpx.get(f"{s.api_base_url}/readyz").json()["status"] == "ok"
        assert stack.up(s) == pids  # idempotent: nothing started twice
        assert all(p.exists() for p in stack.log_files(s))
        _kill_each_and_see_it_restarted(s, pids)
    finally:
        stopped = stack.down(s)
    assert set(stopped) == {"redis", "api", "worker", "trainer"}
    assert all(pid is None for pid in stack.status(s).values())
    assert not list(s.run_dir.glob("*.pid"))


def _kill_each_and_see_it_restarted(s, pids: dict[str, int | None]) -> None:
    """supervisord restarts a SIGKILLed worker, API or Redis; the API then answers with Redis again."""
    for name in ("api", "worker", "redis"):
        os.kill(pids[name], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while stack.status(s)[name] in (None, pids[name]):
            assert time.monotonic() < deadline, f"{name} was not restarted"
            time.sleep(0.2)
    deadline = time.monotonic() + 180  # a new API imports torch and MLflow: slow on a loaded machine
    while not stack._api_ok(s):  # the restarted API answers, and reaches the restarted Redis
        assert time.monotonic() < deadline, "the API did not come back with Redis"
        time.sleep(0.2)
    assert "exited: worker (terminated by SIGKILL" in (s.logs_dir / "supervisord.log").read_text()


@pytest.mark.chaos
def test_stack_redis_keeps_its_data_across_a_kill(settings):
    """The local stack's Redis persists (append-only, fsync every second): a SIGKILL loses no queued job."""
    import redis as redis_lib

    from clipmorph.serving.stack import redis_server_args

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = ["redis-server", *redis_server_args(settings, port)]
    assert "--appendonly" in argv and argv[argv.index("--appendonly") + 1] == "yes"

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        client = redis_lib.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                return proc
            except redis_lib.ConnectionError:
                time.sleep(0.05)
        proc.kill()
        raise AssertionError("redis-server did not start")

    proc = start()
    try:
        redis_lib.Redis(port=port).rpush("rq:queue:test", "job-1")
        time.sleep(1.5)  # appendfsync everysec
        proc.kill()
        proc.wait()
        proc = start()
        assert redis_lib.Redis(port=port).lrange("rq:queue:test", 0, -1) == [b"job-1"]
    finally:
        proc.kill()
        proc.wait()
