"""POST /v1/styles: training a style as a job on the train queue.

The checks and tokens run in-process (FastAPI TestClient) against a real redis-server and a real MLflow
SQLite registry. The end-to-end test runs a tiny training job through a real uvicorn API, a real
`clipmorph worker --queues train` process and the real registry, to a new champion in GET /v1/models.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import torch
import uvicorn
from PIL import Image
from redis import Redis
from rq import Queue
from serving_helpers import make_client, stop_processes, tiny_registry

from api.main import create_app
from clipmorph.jobs import settle, training
from clipmorph.jobs.queue import STYLE_NAME_LOCK, reserve_style_name
from clipmorph.settings import Settings, get_settings
from clipmorph.training.train import TrainStep
from clipmorph.video.pipeline import StylizeCancelled
from worker.jobs import TrainingReporter, preview_jpeg
from worker.runner import queue_names

TRAINER, ADMIN, READER = "tr41ner-tok", "adm1n-tok", "s3cret"


def data_dir(root: Path, assets: Path) -> Path:
    """A data dir of our own, with one painting to blend with (uploaded ones go to var/styles, never here)."""
    data = root / "data"
    (data / "styles").mkdir(parents=True)
    shutil.copy(assets / "styles" / "candy.jpg", data / "styles" / "candy.jpg")  # to blend with
    for name in ("photos", "videos", "weights"):
        (data / name).symlink_to(assets / name, target_is_directory=True)
    return data


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, assets, redis_url):
    root = tmp_path_factory.mktemp("styles-registry")
    with tiny_registry(root, assets, redis_url, "tiny"):
        yield root


@pytest.fixture
def serving(registry_env, assets, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPMORPH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLIPMORPH_DATA_DIR", str(data_dir(tmp_path, assets)))
    monkeypatch.setenv("CLIPMORPH_QUEUE_NAME", f"test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("CLIPMORPH_TRAIN_QUEUE_NAME", f"train-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def client(serving):
    tokens = {"trainer_tokens": {"bob": TRAINER}, "admin_tokens": {"alice": ADMIN}}
    with make_client(serving, api_token=READER, **tokens) as c:
        yield c


def jpeg(size: tuple[int, int] = (300, 260)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 60, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


def post_style(client, token: str | None = TRAINER, data: bytes | None = None, **fields):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    form = {"name": "newstyle", **{k: str(v) for k, v in fields.items()}}
    files = {"file": ("painting.jpg", jpeg() if data is None else data, "image/jpeg")}
    return client.post("/v1/styles", data=form, files=files, headers=headers)


def queues(settings) -> tuple[Queue, Queue]:
    redis = Redis.from_url(settings.redis_url)
    return Queue(settings.train_queue_name, connection=redis), Queue(settings.queue_name, connection=redis)


def test_a_trainer_token_queues_training_on_the_train_queue_only(client, serving):
    r = post_style(client, preset="fast", iterations=40, blend="candy:0.5")
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["name"] == "newstyle" and r.headers["location"] == body["status_url"]
    assert body["options"] == {"preset": "fast", "iters": 40, "blend": "candy:0.5", "requested_by": "bob"}
    train_queue, stylize_queue = queues(serving)
    assert train_queue.get_job_ids() == [body["id"]] and stylize_queue.get_job_ids() == []
    job = train_queue.fetch_job(body["id"])
    assert job.func_name == "worker.jobs.train_job" and job.args == ("newstyle", body["options"])
    assert job.timeout == 40 * serving.train_seconds_per_iteration + serving.train_eval_seconds

    status = client.get(body["status_url"], headers={"Authorization": f"Bearer {READER}"}).json()
    assert status["status"] == "queued" and status["kind"] == "train" and status["queue_position"] == 0
    assert status["style"] == "newstyle" and status["preview"] is None


def test_defaults_and_an_admin_token_may_train_too(client):
    r = post_style(client, token=ADMIN, name="other")
    assert r.status_code == 202, r.text
    assert r.json()["options"] == {"preset": "rt_bn", "iters": 1000, "blend": "", "requested_by": "alice"}


def test_tokens_401_without_one_403_for_one_that_may_not_train(client, serving):
    assert post_style(client, token=None).status_code == 401
    assert post_style(client, token="wrong").status_code == 401
    refused = post_style(client, token=READER)
    assert refused.status_code == 403 and "trainer or admin token" in refused.json()["detail"]
    # A trainer may create styles but not move a champion.
    promote = client.post(
        "/v1/models/tiny/promote", json={"version": "1"}, headers={"Authorization": f"Bearer {TRAINER}"}
    )
    assert promote.status_code == 403 and "admin token" in promote.json()["detail"]
    # Without an API token the trainer check alone answers: 401 without a token.
    with make_client(serving, trainer_tokens={"bob": TRAINER}) as open_client:
        r = post_style(open_client, token=None)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert post_style(open_client, token="wrong").status_code == 403
    with make_client(serving) as no_trainers:
        off = post_style(no_trainers, token=TRAINER)
        assert off.status_code == 403 and "CLIPMORPH_TRAINER_TOKENS" in off.json()["detail"]
    assert queues(serving)[0].get_job_ids() == []


@pytest.mark.parametrize(
    ("fields", "data", "code", "words"),
    [
        ({}, b"not an image at all", 422, "not a readable image"),
        ({}, jpeg((300, 200)), 422, "300x200; its shorter side must be at least 256 pixels"),
        ({"name": "../etc/passwd"}, None, 422, "name must be"),
        ({"name": "Kandinsky"}, None, 422, "lower-case"),
        ({"name": ""}, None, 422, "name must be"),
        ({"name": "tiny"}, None, 409, "a style named 'tiny' already exists"),
        ({"name": "kandinsky"}, None, 409, "a style named 'kandinsky' already exists"),  # built-in
        ({"name": "candy"}, None, 409, "a painting named 'candy' is already on this server"),
        ({"preset": "huge"}, None, 422, "unknown preset 'huge'; choose from"),
        ({"iterations": 999999}, None, 422, "between 1 and 3000"),
        ({"iterations": 0}, None, 422, "between 1 and 3000"),
        ({"blend": "nosuch:0.5"}, None, 422, "no painting 'nosuch'"),
        ({"blend": "../../etc/hosts"}, None, 422, "no painting '../../etc/hosts'"),
        ({"blend": "candy:-1"}, None, 422, "above 0"),
        ({"blend": "candy,candy,candy,candy"}, None, 422, "at most 3"),
    ],
)
def test_bad_requests_are_refused_readably_and_nothing_is_queued(client, serving, fields, data, code, words):
    r = post_style(client, data=data, **fields)
    assert r.status_code == code, r.text
    detail = r.json()["detail"]
    assert words in detail
    assert str(serving.var_dir) not in detail and str(serving.data_dir) not in detail
    assert queues(serving)[0].get_job_ids() == []
    assert not serving.jobs_dir.exists() or list(serving.jobs_dir.iterdir()) == []  # the upload was removed


def test_a_painting_over_the_pixel_limit_is_413(serving):
    with make_client(serving, trainer_tokens={"bob": TRAINER}, max_image_pixels=100_000) as c:
        r = post_style(c, data=jpeg((400, 300)))
    assert r.status_code == 413 and r.json()["detail"] == "painting too large: more than 100000 pixels"
    assert queues(serving)[0].get_job_ids() == []


def test_worker_queues_are_named_by_kind_in_order_of_preference(serving):
    assert queue_names(["train", "stylize"], serving) == [serving.train_queue_name, serving.queue_name]
    assert queue_names(["stylize"], serving) == [serving.queue_name]
    with pytest.raises(ValueError, match="unknown queue 'gpu'; choose from stylize, train"):
        queue_names(["gpu"], serving)


def test_a_name_already_being_trained_is_refused(client, serving):
    assert post_style(client).status_code == 202
    again = post_style(client)
    assert again.status_code == 409 and "already being trained" in again.json()["detail"]
    assert len(queues(serving)[0].get_job_ids()) == 1
    assert not Redis.from_url(serving.redis_url).exists(STYLE_NAME_LOCK.format(name="newstyle"))  # released


def test_a_name_another_upload_is_checking_is_refused_and_then_free(client, serving):
    # Another request between its checks and its enqueue holds the name: this one must not pass the checks too.
    held = reserve_style_name(Redis.from_url(serving.redis_url), "racing")
    assert held is not None
    refused = post_style(client, name="racing")
    assert refused.status_code == 409 and "already being trained" in refused.json()["detail"]
    assert queues(serving)[0].get_job_ids() == []
    held.release()
    assert post_style(client, name="racing").status_code == 202


def test_install_painting_never_overwrites_and_keeps_its_own_on_a_retry(tmp_path):
    settings = Settings(data_dir=tmp_path / "data", var_dir=tmp_path / "var")
    styles = settings.uploaded_styles_dir
    source = tmp_path / "upload.img"
    source.write_bytes(jpeg())
    target = training.install_painting(source, "mine", settings)
    assert target == styles / "mine.png" and Image.open(target).size == (300, 260)
    assert training.install_painting(source, "mine", settings) == target  # the same job, retried
    other = tmp_path / "other.img"
    other.write_bytes(jpeg((400, 300)))
    with pytest.raises(training.TrainingRefused, match="already exists"):
        training.install_painting(other, "mine", settings)
    assert Image.open(target).size == (300, 260)
    assert sorted(p.name for p in styles.iterdir()) == ["mine.png"]  # no partial left behind
    # A painting that came with the data keeps its name too, and the data folder is never written to.
    settings.styles_dir.mkdir(parents=True)
    shutil.copy(target, settings.styles_dir / "theirs.png")
    with pytest.raises(training.TrainingRefused, match="already exists"):
        training.install_painting(other, "theirs", settings)
    assert sorted(p.name for p in settings.styles_dir.iterdir()) == ["theirs.png"]
    assert not (styles / "theirs.png").exists()


def test_preview_is_a_small_jpeg(tmp_path):
    sheet = tmp_path / "val.png"
    Image.new("RGB", (1024, 512), (10, 200, 90)).save(sheet)
    url = preview_jpeg(sheet)
    assert url.startswith("data:image/jpeg;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.format == "JPEG" and image.size == (384, 192)
    assert len(url) < 16_000


def test_training_reporter_saves_progress_and_stops_on_a_delete(serving, tmp_path):
    train_queue, _ = queues(serving)
    job = train_queue.enqueue("worker.jobs.train_job", "x", {}, meta={"kind": "train"})
    sheet = tmp_path / "val.png"
    Image.new("RGB", (64, 32), (1, 2, 3)).save(sheet)
    reporter = TrainingReporter(job, interval=3600)  # after the first save, only previews and the last step
    reporter(TrainStep(1, 4, {"loss": 12.345678}, 0.5, 2.0))
    assert train_queue.fetch_job(job.id).meta["losses"] == {"loss": 12.35}
    reporter(TrainStep(2, 4, {"loss": 5.0}, 1.0, 2.0))
    assert train_queue.fetch_job(job.id).meta["progress"]["done"] == 1  # throttled
    reporter(TrainStep(3, 4, {"loss": 3.0, "style": 2.0}, 1.5, 2.0, validation=sheet))
    meta = train_queue.fetch_job(job.id).meta
    assert meta["progress"] == {"done": 3, "total": 4, "fps": 2.0, "eta_seconds": 0.5}
    assert meta["losses"] == {"loss": 3.0, "style": 2.0} and meta["preview_step"] == 3
    assert meta["preview"].startswith("data:image/jpeg;base64,") and reporter.last_sheet == sheet

    settle.cancel(train_queue.connection, job.id, 60)
    with pytest.raises(StylizeCancelled):
        reporter(TrainStep(4, 4, {"loss": 1.0}, 2.0, 2.0))


# ------------------------------------------------------------------------------ end to end, a real worker

WAIT = 240.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, what: str, timeout: float = WAIT, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(every)


@pytest.mark.slow
def test_tiny_training_job_runs_end_to_end_to_a_new_champion(tmp_path, assets, redis_url, assets_val_photos):
    root = tmp_path
    painting = root / "painting.jpg"
    Image.open(assets / "styles" / "klee.jpg").convert("RGB").save(painting)
    tiny = {  # seconds, not the shipped recipe's 20 minutes: the job's path is under test, not the painting
        "size": "32",
        "batch_size": "1",
        "style_size": "64",
        "frame_side": "0",
        "val_every": "2",
        "val_images": "1",
        "workers": "0",
        "lr": "0.01",
        "train_dirs": str(assets_val_photos),
    }
    env = {
        "CLIPMORPH_VAR_DIR": str(root / "var"),
        "CLIPMORPH_RUNS_DIR": str(root / "runs"),
        "CLIPMORPH_DATA_DIR": str(data_dir(root, assets)),
        "CLIPMORPH_MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "CLIPMORPH_MLFLOW_ARTIFACT_ROOT": str(root / "artifacts"),
        "CLIPMORPH_ASSETS_DIR": str(assets),
        "CLIPMORPH_REDIS_URL": redis_url,
        "CLIPMORPH_QUEUE_NAME": f"live-{uuid.uuid4().hex[:8]}",
        "CLIPMORPH_TRAIN_QUEUE_NAME": f"train-{uuid.uuid4().hex[:8]}",
        "CLIPMORPH_TRAINER_TOKENS": json.dumps({"bob": TRAINER}),
        "CLIPMORPH_TRAIN_JOB_OVERRIDES": json.dumps(tiny),
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("CLIPMORPH_API_TOKEN", raising=False)
        get_settings.cache_clear()
        settings = get_settings()
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        wait_until(lambda: server.started, "uvicorn to start", timeout=60)
        log = (root / "worker.log").open("wb")
        exe = Path(sys.executable).parent / "clipmorph"
        worker = subprocess.Popen(
            [str(exe), "worker", "--queues", "train"], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        try:
            with painting.open("rb") as f:
                r = http.post(
                    "/v1/styles",
                    data={"name": "klee-api", "preset": "fast", "iterations": "6"},
                    files={"file": ("klee.jpg", f, "image/jpeg")},
                    headers={"Authorization": f"Bearer {TRAINER}"},
                )
            assert r.status_code == 202, r.text
            status_url = r.json()["status_url"]
            seen: list[dict] = []

            def ended() -> bool:
                seen.append(http.get(status_url).json())
                return seen[-1]["status"] in {"finished", "failed", "cancelled"}

            started = time.monotonic()
            wait_until(ended, "the training job to end")
            took = time.monotonic() - started
            last = seen[-1]
            assert last["status"] == "finished", (last, (root / "worker.log").read_text()[-3000:])
            print(f"training job: {took:.1f} s from queued to finished")

            # Progress was streamed while it ran: steps of 6, losses, and a validation preview.
            running = [s for s in seen if s["status"] == "running" and s["progress"]]
            assert last["progress"]["done"] == last["progress"]["total"] == 6
            assert set(last["losses"]) >= {"loss", "content", "style"}
            assert all(s["progress"]["total"] == 6 for s in running)
            assert last["preview_step"] == 6 and last["preview"].startswith("data:image/jpeg;base64,")
            assert last["model_name"] == "clipmorph-klee-api" and last["model_version"] == "1"
            assert last["champion"] is True  # the first version, graded, passes the gate
            assert last["device"] == ("cuda" if torch.cuda.is_available() else "cpu")

            sheet = http.get(last["result_url"])
            assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/jpeg"
            assert Image.open(io.BytesIO(sheet.content)).size == (32, 64)  # one photo above its stylization

            styles = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
            new = styles["klee-api"]
            assert new["champion_version"] == "1" and new["metrics"]["style_distance"] > 0
            assert new["painting_url"] and http.get(new["painting_url"]).status_code == 200
            assert http.get(new["preview_url"]).headers["content-type"] == "image/jpeg"
            assert (settings.uploaded_styles_dir / "klee-api.png").is_file()

            dup = None
            with painting.open("rb") as f:
                dup = http.post(
                    "/v1/styles",
                    data={"name": "klee-api"},
                    files={"file": ("klee.jpg", f, "image/jpeg")},
                    headers={"Authorization": f"Bearer {TRAINER}"},
                )
            assert dup.status_code == 409

            # A long job cancelled while it trains: it stops between steps, and its name is free again.
            with painting.open("rb") as f:
                long = http.post(
                    "/v1/styles",
                    data={"name": "cancelled", "preset": "fast", "iterations": "3000"},
                    files={"file": ("klee.jpg", f, "image/jpeg")},
                    headers={"Authorization": f"Bearer {TRAINER}"},
                ).json()
            wait_until(lambda: (http.get(long["status_url"]).json()["progress"] or {}).get("done", 0) > 0, "steps")
            assert http.delete(long["status_url"]).status_code == 204
            painting = settings.uploaded_styles_dir / "cancelled.png"
            wait_until(lambda: not painting.exists(), "the cancelled job's painting to go")
            cancelled = http.get(long["status_url"]).json()
            assert cancelled["status"] == "cancelled" and cancelled["progress"]["done"] < 3000
            assert not (settings.runs_dir / "cancelled").exists()
        finally:
            stop_processes([worker])
            server.should_exit = True
            thread.join(15)
            get_settings.cache_clear()


@pytest.fixture
def assets_val_photos(assets, tmp_path) -> Path:
    """A few training photos (scanning the whole mirror would cost more than the steps)."""
    folder = tmp_path / "train-photos"
    folder.mkdir()
    for photo in sorted((assets / "photos" / "coco128_train2017").glob("*.jpg"))[:4]:
        shutil.copy(photo, folder / photo.name)
    return folder
