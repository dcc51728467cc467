"""Shared fixtures: isolated settings, a real redis-server, a real MLflow SQLite registry."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from clipmorph.settings import REPO_ROOT, Settings, get_settings

ASSETS = Path(get_settings().assets_dir)


@pytest.fixture(scope="session")
def assets() -> Path:
    """The offline mirror (../shared/assets); the suite needs it, as CI has it beside the clone."""
    if not (ASSETS / "README.md").exists():
        pytest.fail(f"offline assets not found at {ASSETS}")
    return ASSETS


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its schema created once: migrating a fresh one takes seconds per test."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}", f"sqlite:///{db}").search_registered_models()
    return db


@pytest.fixture
def settings(tmp_path, monkeypatch, assets, empty_mlflow_db):
    """Settings pointing every piece of runtime state into a temp dir (fresh registry, jobs, runs)."""
    var = tmp_path / "var"
    var.mkdir()
    shutil.copy(empty_mlflow_db, var / "mlflow.db")
    monkeypatch.setenv("CLIPMORPH_VAR_DIR", str(var))
    monkeypatch.setenv("CLIPMORPH_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CLIPMORPH_DATA_DIR", str(REPO_ROOT / "data"))
    monkeypatch.setenv("CLIPMORPH_ASSETS_DIR", str(assets))
    monkeypatch.delenv("CLIPMORPH_MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CLIPMORPH_API_TOKEN", raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server for the whole test session, on a free port, with no persistence."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def one_torch_thread():
    """Tiny images on a shared, loaded CPU: a second intra-op thread only waits at barriers (40x slower here)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3 endpoint for the session: moto's server on a free port (its own HTTP server, in a thread)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """A fresh bucket on the session's S3 endpoint, and the environment that makes clipmorph keep jobs there
    (CLIPMORPH_STORAGE_URL, boto3's AWS_* variables); -> the bucket's name."""
    import boto3

    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    bucket = f"jobs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    monkeypatch.setenv("CLIPMORPH_STORAGE_URL", f"s3://{bucket}/clipmorph")
    get_settings.cache_clear()
    return bucket


@pytest.fixture(params=["local", "s3"])
def storage_backend(request) -> str:
    """Each job storage in turn: the local jobs folder, then a bucket on a real S3 endpoint (moto's server).
    A test's settings fixture reads the environment after this one (get_settings.cache_clear())."""
    if request.param == "s3":
        request.getfixturevalue("s3_bucket")
    return request.param


@pytest.fixture
def backend(serving, storage_backend) -> Settings:
    """The test module's `serving` settings with each job storage in turn (local folder, S3 bucket)."""
    get_settings.cache_clear()
    return get_settings()
