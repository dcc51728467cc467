"""POST /v1/images past CLIPMORPH_MAX_SYNC_IMAGE_PIXELS: 202 and a job a worker stylizes in tiles at full size.

The API runs in-process (FastAPI TestClient) against a real redis-server and a real MLflow
registry; queued jobs are run by a real StylizeWorker in burst mode in this process, with the
jobs kept in each storage in turn where marked (the local folder, a bucket on moto's S3 server). The
thresholds are set low (a few thousand pixels, tiles of 128x128) so that a 601x451 image
takes the queued, tiled path in seconds; what a 6000x4500 photo takes, only larger.
"""

from __future__ import annotations

import io
import socket
import uuid

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis
from rq import Queue
from serving_helpers import fetch_result, local_leftovers, stored, tiny_registry

import clipmorph.video.inference
import worker.jobs
from api.main import create_app
from clipmorph.jobs.models import ModelCache
from clipmorph.settings import Settings, get_settings
from clipmorph.video import tiling
from clipmorph.video.inference import StylizeOptions, stylize_pil
from worker.runner import build_worker

STYLE = "tiny"
SYNC_PIXELS = 100 * 100
TILE_PIXELS = 128 * 128
SIZE = (601, 451)  # odd, 4:3 like 6000x4500, and many tiles of 128 px


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, assets, redis_url):
    """One MLflow registry (with a tiny champion) for the module: creating one costs seconds."""
    root = tmp_path_factory.mktemp("image-jobs-registry")
    with tiny_registry(root, assets, redis_url, STYLE):
        yield root


@pytest.fixture
def serving(registry_env, tmp_path, monkeypatch, one_torch_thread) -> Settings:
    """This test's own var dir and queue, the module's registry; low image thresholds for API and worker alike."""
    for key, value in {
        "VAR_DIR": tmp_path / "var",
        "QUEUE_NAME": f"test-{uuid.uuid4().hex[:8]}",
        "MAX_SYNC_IMAGE_PIXELS": SYNC_PIXELS,
        "TILE_PIXELS": TILE_PIXELS,
        "JOB_RETRIES": 1,
    }.items():
        monkeypatch.setenv(f"CLIPMORPH_{key}", str(value))
    # The worker's model cache outlives a test module: another module's "tiny" v1 has other weights.
    monkeypatch.setattr(worker.jobs, "_models", None)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def client(serving):
    with TestClient(create_app(serving)) as c:
        yield c


@pytest.fixture
def bclient(backend):
    with TestClient(create_app(backend)) as c:
        yield c


def queue_of(settings: Settings) -> Queue:
    return Queue(settings.queue_name, connection=Redis.from_url(settings.redis_url))


def job_dirs(settings: Settings) -> list:
    return sorted(settings.jobs_dir.glob("*")) if settings.jobs_dir.exists() else []


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A gradient with noise: content the network has something to do with."""
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 40, (height, width, 3))
    rgb = np.stack([xx * 255 // width, yy * 255 // height, (xx + yy) % 256], axis=-1) + noise
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def encoded(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def post_image(client, data: bytes, style: str | None = STYLE, **fields):
    form = {**({"style": style} if style else {}), **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/images", data=form, files={"file": ("photo.png", data)})


def attempts(settings: Settings) -> int:
    """Run the queued jobs with a burst worker in this process; -> how many job runs (a retry runs again)."""
    worker = build_worker(settings)
    runs = []
    perform = worker.perform_job
    worker.perform_job = lambda job, queue, execution: runs.append(job.id) or perform(job, queue, execution)
    worker.work(burst=True)
    return len(runs)


def no_server_details(text: str) -> bool:
    return "/" not in text and "\\" not in text and "input." not in text and "Error" not in text


def test_small_image_is_answered_directly_and_one_pixel_more_is_a_job(client, serving):
    small = post_image(client, encoded(picture((100, 100))))
    assert small.status_code == 200, small.text
    assert small.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(small.content)).size == (100, 100)
    assert queue_of(serving).count == 0 and job_dirs(serving) == []

    large = post_image(client, encoded(picture((101, 100))))
    assert large.status_code == 202, large.text
    body = large.json()
    assert body["status"] == "queued" and body["input"] == {"width": 101, "height": 100}
    assert queue_of(serving).job_ids == [body["id"]]
    assert large.headers["location"] == body["status_url"] == f"/v1/jobs/{body['id']}"
    assert [p.name for p in (serving.jobs_dir / body["id"]).iterdir()] == ["input.png"]
    assert list((serving.var_dir / "uploads").iterdir()) == []  # the temp upload is gone, the job keeps a copy


def test_large_image_is_stylized_by_a_worker_in_tiles_at_full_size(bclient, backend, monkeypatch):
    client, serving = bclient, backend
    tiled_inputs = []
    real_tiled = clipmorph.video.inference.stylize_tiled

    def spy(model, x, tile_pixels, *args, **kwargs):
        tiled_inputs.append((tuple(x.shape), tile_pixels))
        return real_tiled(model, x, tile_pixels, *args, **kwargs)

    monkeypatch.setattr(clipmorph.video.inference, "stylize_tiled", spy)
    photo = picture(SIZE)
    r = post_image(client, encoded(photo), max_side=0, strength=1)
    assert r.status_code == 202, r.text
    created = r.json()
    assert created["input"] == {"width": SIZE[0], "height": SIZE[1]}
    assert tiled_inputs == []  # the API decoded nothing and ran no network

    queued = client.get(created["status_url"]).json()
    assert queued["status"] == "queued" and queued["style"] == STYLE and queued["queue_position"] == 0
    assert queued["options"] == {"max_side": 0, "strength": 1.0, "contrast": None, "format": "png"}
    assert client.get(created["result_url"]).status_code == 409
    assert stored(serving, created["id"]) == ["input.png"]

    assert attempts(serving) == 1
    # The worker stylized the whole image at its full size, in tiles of TILE_PIXELS.
    assert tiled_inputs == [((1, 3, SIZE[1], SIZE[0]), TILE_PIXELS)]

    job = client.get(created["status_url"]).json()
    assert job["status"] == "finished", job
    assert job["model_name"] == f"clipmorph-{STYLE}" and job["model_version"] == "1"
    tile = 128
    overlap = min(tiling.DEFAULT_OVERLAP, tile // 2)
    passes = 1 + len(tiling.spans(SIZE[1], tile, overlap, 8)) * len(tiling.spans(SIZE[0], tile, overlap, 8))
    assert passes > 20
    assert job["progress"]["done"] == job["progress"]["total"] == passes
    assert job["progress"]["eta_seconds"] == 0

    result = fetch_result(client, created["result_url"])
    assert result.status_code == 200
    assert result.headers["content-type"] == "image/png"
    assert f'filename="{created["id"]}.png"' in result.headers["content-disposition"]
    out = Image.open(io.BytesIO(result.content))
    assert out.size == SIZE and out.mode == "RGB"
    # What the synchronous path would have made of it (same model, same tiles), not the input sent back.
    expected = stylize_pil(ModelCache().get(STYLE).model, photo, StylizeOptions(max_side=0, strength=1.0))
    got = np.asarray(out).astype(int)
    assert np.abs(got - np.asarray(expected).astype(int)).max() <= 1
    assert np.abs(got - np.asarray(photo).astype(int)).mean() > 5
    assert stored(serving, created["id"]) == ["input.png", "output.png"]
    assert local_leftovers(serving) == []

    ranged = fetch_result(client, created["result_url"], headers={"Range": "bytes=0-7"})
    assert ranged.status_code == 206 and ranged.content == result.content[:8]
    assert client.delete(f"/v1/jobs/{created['id']}").status_code == 409  # finished: its result stays


def test_image_job_answers_in_the_format_asked_for(client, serving):
    r = post_image(client, encoded(picture((240, 160), seed=1), "JPEG"), format="jpeg", strength=0.5)
    assert r.status_code == 202, r.text
    created = r.json()
    assert [p.name for p in (serving.jobs_dir / created["id"]).iterdir()] == ["input.jpeg"]
    assert attempts(serving) == 1
    result = client.get(created["result_url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/jpeg"
    out = Image.open(io.BytesIO(result.content))
    assert out.format == "JPEG" and out.size == (240, 160)


@pytest.mark.parametrize(
    ("fields", "data", "code", "words"),
    [
        ({"style": "nosuchstyle"}, "large", 422, "unknown style 'nosuchstyle'"),
        ({"format": "gif"}, "large", 422, "format"),
        ({"max_side": "8"}, "large", 422, "max_side"),
        ({}, "huge", 413, "image too large: more than 300000 pixels"),
        ({}, "text", 422, "not a readable image"),
        ({}, "empty", 422, "no image"),
    ],
)
def test_refused_image_leaves_no_job(serving, monkeypatch, fields, data, code, words):
    monkeypatch.setenv("CLIPMORPH_MAX_IMAGE_PIXELS", "300000")
    get_settings.cache_clear()
    settings = get_settings()
    payload = {
        "large": encoded(picture(SIZE)),
        "huge": encoded(picture((800, 600))),
        "text": b"I am not an image\n" * 100,
        "empty": b"",
    }[data]
    with TestClient(create_app(settings)) as c:
        r = post_image(c, payload, **{"style": STYLE, **fields})
    assert r.status_code == code, r.text
    assert words in str(r.json()["detail"])
    assert no_server_details(str(r.json()["detail"]).replace("/v1", ""))
    assert queue_of(settings).count == 0 and job_dirs(settings) == []
    assert list((settings.var_dir / "uploads").iterdir()) == []


def test_an_image_that_turns_out_unreadable_fails_once_with_a_clear_message(client, serving):
    data = encoded(picture(SIZE))
    r = post_image(client, data[: len(data) // 2])  # the header is fine, the pixels stop halfway
    assert r.status_code == 202, r.text
    created = r.json()
    assert attempts(serving) == 1  # bad input: not retried although JOB_RETRIES is 1
    job = client.get(created["status_url"]).json()
    assert job["status"] == "failed"
    assert job["error"] == "not a readable image (send a JPEG, PNG, WebP, GIF, BMP or TIFF file)"
    assert client.get(created["result_url"]).status_code == 409
    assert [p.name for p in (serving.jobs_dir / created["id"]).iterdir()] == ["input.png"]  # no partial output


def test_a_queued_image_job_can_be_cancelled(bclient, backend):
    client, serving = bclient, backend
    created = post_image(client, encoded(picture(SIZE))).json()
    assert stored(serving) == [created["id"]]
    assert client.delete(f"/v1/jobs/{created['id']}").status_code == 204
    assert client.get(created["status_url"]).json()["status"] == "cancelled"
    assert stored(serving) == []
    build_worker(serving).work(burst=True)
    assert client.get(created["status_url"]).json()["status"] == "cancelled"
    assert client.get(created["result_url"]).status_code == 409


def test_a_running_image_job_stops_between_tiles_when_deleted(bclient, backend, monkeypatch):
    client, serving = bclient, backend
    created = post_image(client, encoded(picture(SIZE))).json()
    deleted = []
    reporter = worker.jobs.ProgressReporter.__call__

    def delete_after_the_first_pass(self, progress):
        if not deleted:  # the DELETE arrives while the worker is between two tiles
            deleted.append(client.delete(f"/v1/jobs/{created['id']}").status_code)
        return reporter(self, progress)

    monkeypatch.setattr(worker.jobs.ProgressReporter, "__call__", delete_after_the_first_pass)
    assert attempts(serving) == 1
    assert deleted == [204]
    job = client.get(created["status_url"]).json()
    assert job["status"] == "cancelled" and job["progress"]["done"] < job["progress"]["total"]
    assert stored(serving) == [] and local_leftovers(serving) == []


def test_a_large_image_needs_redis_but_a_small_one_does_not(serving):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    settings = type(serving)(**{**serving.model_dump(), "redis_url": f"redis://127.0.0.1:{port}/0"})
    with TestClient(create_app(settings)) as c:
        large = post_image(c, encoded(picture(SIZE)))
        small = post_image(c, encoded(picture((60, 40))))
    assert large.status_code == 503 and "retry-after" in large.headers
    assert job_dirs(serving) == []
    assert small.status_code == 200 and Image.open(io.BytesIO(small.content)).size == (60, 40)
