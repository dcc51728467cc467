"""The REST API in-process (FastAPI TestClient) against a real redis-server and a real MLflow registry.

Jobs that need running are run by a real StylizeWorker in burst mode in this process. The core flows
(upload, queue, worker, result with Range, delete, expiry) run against each job storage: the local
jobs folder and a bucket on a real S3 endpoint (moto's server, tests/conftest.py).
"""

from __future__ import annotations

import io
import os
import re
import time
import uuid

import av
import pytest
from PIL import Image
from rq import Queue
from rq.job import JobStatus
from serving_helpers import (
    fetch_result,
    local_leftovers,
    make_client,
    make_clip,
    make_flat_clip,
    make_resizing_clip,
    plant_partial,
    put_stored,
    register_tiny_model,
    stored,
    tiny_registry,
)

from clipmorph import registry
from clipmorph.jobs import settle
from clipmorph.jobs.files import purge_expired
from clipmorph.jobs.models import ModelCache
from clipmorph.jobs.queue import job_timeout, remove_partials
from clipmorph.settings import Settings, get_settings
from worker.runner import build_worker

STYLE = "tiny"


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, assets, redis_url):
    """One MLflow registry (with a tiny champion) for the module: creating one costs seconds."""
    root = tmp_path_factory.mktemp("api-registry")
    with tiny_registry(root, assets, redis_url, STYLE):
        yield root


@pytest.fixture
def serving(registry_env, tmp_path, monkeypatch):
    """Settings with this test's own var dir (jobs, previews) and queue; the module's registry."""
    monkeypatch.setenv("CLIPMORPH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLIPMORPH_QUEUE_NAME", f"test-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def client(serving):
    with make_client(serving) as c:
        yield c


@pytest.fixture
def bclient(backend):
    with make_client(backend) as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=12)


def queue_of(settings) -> Queue:
    from redis import Redis

    return Queue(settings.queue_name, connection=Redis.from_url(settings.redis_url))


def job_dirs(settings) -> list:
    return sorted(settings.jobs_dir.glob("*")) if settings.jobs_dir.exists() else []


def upload(client, data: bytes, filename="clip.mp4", style=STYLE, **fields):
    form = {"style": style, **{k: str(v) for k, v in fields.items()}} if style is not None else fields
    return client.post("/v1/jobs", data=form, files={"file": (filename, data, "video/mp4")})


def run_queued_jobs(settings) -> None:
    build_worker(settings).work(burst=True)


def test_upload_is_queued_with_its_file_and_status(bclient, backend, clip):
    client = bclient
    r = upload(client, clip.read_bytes(), max_side=32, strength=0.5, stabilize="norm", contrast="1.5")
    assert r.status_code == 202, r.text
    body = r.json()
    assert uuid.UUID(body["id"]).version == 4
    assert body["status"] == "queued"
    assert body["input"]["frames"] == 12 and body["input"]["has_audio"] is True
    assert queue_of(backend).job_ids == [body["id"]]
    assert stored(backend, body["id"]) == ["input.mp4"]
    assert local_leftovers(backend) == []  # with a bucket, the staged upload is gone once stored

    job = client.get(body["status_url"]).json()
    assert job["status"] == "queued"
    assert job["style"] == STYLE
    assert job["options"] == {"max_side": 32, "strength": 0.5, "stabilize": "norm", "contrast": 1.5}
    assert job["result_url"] is None
    assert client.get(body["result_url"]).status_code == 409


def test_client_file_name_never_becomes_a_path(bclient, backend, clip):
    r = upload(bclient, clip.read_bytes(), filename="../../etc/passwd.mp4/../evil.sh")
    assert r.status_code == 202, r.text
    assert stored(backend) == [r.json()["id"]]
    assert stored(backend, r.json()["id"]) == ["input.bin"]


def _bad_uploads(clip_bytes: bytes) -> dict:
    return {
        "empty file": (b"", {}, 422, "empty"),
        "text renamed .mp4": (b"hello, I am not a video\n" * 50, {}, 422, "not a usable video"),
        "truncated mp4": (clip_bytes[: len(clip_bytes) // 3], {}, 422, "not a usable video"),
        "unknown style": (clip_bytes, {"style": "nosuchstyle"}, 422, "unknown style"),
        "style that is a path": (clip_bytes, {"style": "../models"}, 422, "style"),
        "missing style": (clip_bytes, {"style": None}, 422, "style"),
        "strength out of range": (clip_bytes, {"strength": "3"}, 422, "strength"),
        "contrast out of range": (clip_bytes, {"contrast": "20"}, 422, "contrast"),
    }


@pytest.mark.parametrize("case", list(_bad_uploads(b"")))
def test_bad_upload_is_refused_and_leaves_nothing(bclient, backend, clip, case):
    data, fields, code, words = _bad_uploads(clip.read_bytes())[case]
    r = upload(bclient, data, **fields)
    assert r.status_code == code, r.text
    assert words in str(r.json()["detail"])
    assert queue_of(backend).count == 0
    assert stored(backend) == [] and local_leftovers(backend) == []


def test_missing_file_part_is_refused(client, serving):
    r = client.post("/v1/jobs", data={"style": STYLE}, files={"other": ("x.txt", b"x", "text/plain")})
    assert r.status_code == 400
    r = client.post("/v1/jobs", data={"style": STYLE}, files={})
    assert r.status_code in (415, 422)
    assert queue_of(serving).count == 0 and job_dirs(serving) == []


def test_upload_over_the_cap_is_413_from_content_length(serving, clip):
    with make_client(serving, max_upload_bytes=1000) as c:
        r = upload(c, clip.read_bytes() + b"\0" * 200_000)
    assert r.status_code == 413
    assert queue_of(serving).count == 0 and job_dirs(serving) == []


def test_upload_over_the_cap_is_413_while_streaming(backend, clip):
    """Without Content-Length (chunked), the byte count while streaming stops it."""
    boundary = "testboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="style"\r\n\r\n{STYLE}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body():
        yield head
        for _ in range(10):
            yield b"\0" * 1000
        yield tail

    with make_client(backend, max_upload_bytes=5000) as c:
        r = c.post("/v1/jobs", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert r.status_code == 413, r.text
    assert queue_of(backend).count == 0 and stored(backend) == [] and local_leftovers(backend) == []


def test_job_runs_and_result_supports_range_requests(bclient, backend, clip, tmp_path):
    client = bclient
    created = upload(client, clip.read_bytes(), max_side=32).json()
    run_queued_jobs(backend)
    assert stored(backend, created["id"]) == ["input.mp4", "output.mp4"]
    assert local_leftovers(backend) == []  # with a bucket: the worker's local copies are gone

    job = client.get(created["status_url"]).json()
    assert job["status"] == "finished", job
    assert job["model_name"] == registry.registered_name(STYLE) and job["model_version"] == "1"
    assert job["progress"]["done"] == 12 and job["progress"]["total"] == 12
    assert job["result_url"] == created["result_url"]

    whole = fetch_result(client, created["result_url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    assert f'filename="{created["id"]}.mp4"' in whole.headers["content-disposition"]
    size = len(whole.content)
    out = tmp_path / "out.mp4"
    out.write_bytes(whole.content)
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 12
        assert container.streams.audio

    part = fetch_result(client, created["result_url"], headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 100-1099/{size}"
    assert part.content == whole.content[100:1100]
    suffix = fetch_result(client, created["result_url"], headers={"Range": "bytes=-50"})
    assert suffix.status_code == 206 and suffix.content == whole.content[-50:]
    beyond = fetch_result(client, created["result_url"], headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416


def test_queued_jobs_report_their_position(client, serving, clip):
    first = upload(client, clip.read_bytes()).json()
    second = upload(client, clip.read_bytes()).json()
    assert client.get(first["status_url"]).json()["queue_position"] == 0
    assert client.get(second["status_url"]).json()["queue_position"] == 1
    run_queued_jobs(serving)
    done = client.get(second["status_url"]).json()
    assert done["status"] == "finished" and done["queue_position"] is None


def test_result_streams_through_its_signed_link_without_a_header(backend, clip):
    serving = backend
    auth = {"Authorization": "Bearer s3cret"}
    with make_client(serving, api_token="s3cret") as c:
        first = c.post(
            "/v1/jobs",
            data={"style": STYLE, "max_side": "32"},
            files={"file": ("c.mp4", clip.read_bytes())},
            headers=auth,
        ).json()
        other = c.post(
            "/v1/jobs",
            data={"style": STYLE, "max_side": "32"},
            files={"file": ("c.mp4", clip.read_bytes())},
            headers=auth,
        ).json()
        assert c.get(first["status_url"], headers=auth).json()["stream_url"] is None  # no result yet
        run_queued_jobs(serving)
        job = c.get(first["status_url"], headers=auth).json()
        link = job["stream_url"]
        assert link.startswith(f"{first['result_url']}?expires=") and "s3cret" not in link
        whole = fetch_result(c, first["result_url"], headers=auth).content
        # What a <video> element sends: no Authorization (with a bucket it follows the 307 to a presigned URL).
        part = fetch_result(c, link, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == whole[:100]
        assert c.get(first["result_url"]).status_code == 401
        # The signature binds the job and the deadline.
        assert c.get(link.replace(first["id"], other["id"])).status_code == 401
        expires = int(re.search(r"expires=(\d+)", link)[1])
        assert c.get(link.replace(f"expires={expires}", f"expires={expires + 1}")).status_code == 401
    with make_client(serving, api_token="s3cret", result_link_seconds=-1) as c:
        stale = c.get(first["status_url"], headers=auth).json()["stream_url"]
        refused = c.get(stale)
        assert refused.status_code == 401 and "expired" in refused.json()["detail"]
    with make_client(serving) as c:  # no token configured: the plain URL is the stream URL
        assert c.get(first["status_url"]).json()["stream_url"] == first["result_url"]


def test_delete_cancels_a_queued_job_and_its_files(bclient, backend, clip):
    client = bclient
    created = upload(client, clip.read_bytes()).json()
    kept = upload(client, clip.read_bytes()).json()
    assert client.delete(f"/v1/jobs/{created['id']}").status_code == 204
    assert client.get(created["status_url"]).json()["status"] == "cancelled"
    assert queue_of(backend).job_ids == [kept["id"]]
    assert stored(backend) == [kept["id"]]  # only the deleted job's files are gone


def test_unknown_or_malformed_job_ids(client):
    assert client.get(f"/v1/jobs/{uuid.uuid4()}").status_code == 404
    assert client.get("/v1/jobs/not-a-uuid").status_code == 422
    assert client.delete(f"/v1/jobs/{uuid.uuid4()}").status_code == 404


def test_auth_on_rejects_missing_and_wrong_tokens(serving, clip):
    with make_client(serving, api_token="s3cret") as c:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic czNjcmV0"}):
            assert c.get("/v1/models", headers=headers).status_code == 401
            r = c.post("/v1/jobs", data={"style": STYLE}, files={"file": ("c.mp4", clip.read_bytes())}, headers=headers)
            assert r.status_code == 401
            assert c.get(f"/v1/jobs/{uuid.uuid4()}", headers=headers).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get(f"/v1/jobs/{uuid.uuid4()}", headers=ok).status_code == 404
        assert c.get("/healthz").status_code == 200  # probes stay open
    assert queue_of(serving).count == 0


def test_auth_off_needs_no_token(client):
    assert client.get("/v1/models").status_code == 200


def test_models_list_and_cached_preview(client, serving):
    models = client.get("/v1/models").json()["models"]
    tiny = next(m for m in models if m["name"] == STYLE)
    assert tiny["registered_name"] == "clipmorph-tiny" and tiny["champion_version"] == "1"
    assert tiny["preview_url"] == f"/v1/models/{STYLE}/preview?v=1"
    first = client.get(tiny["preview_url"])
    assert first.status_code == 200 and first.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(first.content)).size[0] <= 512
    assert (serving.var_dir / "previews" / "clipmorph-tiny" / "1.jpg").exists()
    assert client.get(tiny["preview_url"]).content == first.content
    assert client.get("/v1/models/nosuchstyle/preview").status_code == 404


def test_models_list_describes_each_style_in_words_and_serves_its_painting(client, serving):
    quality = {"640x360": {"ours": {"content": 1.2, "style": 0.45, "artefact": 3.0}, "warping_max": {"ours_stab": 2.4}}}
    register_tiny_model(serving, "painted", painting="starrynight", quality=quality)
    painted = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "painted")
    words = {t["aspect"]: t["words"] for t in painted["traits"]}
    assert words["strength"].startswith("A clear repaint") and "small blobs" in words["strength"]
    assert words["steadiness"] == "Steady, with a slight shimmer on moving things."
    assert words["speed"] == "Its speed on a CPU has not been measured yet."
    figures = {f["name"]: f["value"] for f in painted["figures"]}
    assert figures == {"content_distance": 1.2, "style_distance": 0.45, "artefact_score": 3.0, "warping_ratio": 2.4}

    assert painted["painting_url"] == "/v1/models/painted/painting?v=1"
    thumb = client.get(painted["painting_url"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    painting = Image.open(serving.styles_dir / "starrynight.jpg")
    small = Image.open(io.BytesIO(thumb.content))
    assert max(small.size) == 320 and small.size[0] / small.size[1] == pytest.approx(
        painting.width / painting.height, 0.02
    )
    # The tiny model's config names no painting: no URL, and the route says so.
    tiny = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == STYLE)
    assert tiny["painting_url"] is None
    assert client.get(f"/v1/models/{STYLE}/painting").status_code == 404
    assert client.get("/v1/models/..%2Fetc/painting").status_code in (404, 422)


def test_preview_is_rendered_again_for_a_new_champion(client, serving):
    register_tiny_model(serving, "repainted")
    first = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "repainted")
    before = client.get(first["preview_url"]).content
    register_tiny_model(serving, "repainted")  # version 2 (other random weights) becomes champion
    second = next(m for m in client.get("/v1/models").json()["models"] if m["name"] == "repainted")
    assert second["preview_url"] != first["preview_url"]
    after = client.get(second["preview_url"])
    assert after.status_code == 200 and after.content != before
    assert (serving.var_dir / "previews" / "clipmorph-repainted" / "2.jpg").exists()


def test_image_is_stylized_synchronously(client, serving):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, "PNG")
    r = client.post(
        "/v1/images", data={"style": STYLE, "strength": "0.8"}, files={"file": ("a.png", buffer.getvalue())}
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-model-version"] == "1"
    assert Image.open(io.BytesIO(r.content)).size == (40, 30)
    bad = client.post("/v1/images", data={"style": STYLE}, files={"file": ("a.png", b"not an image")})
    assert bad.status_code == 422
    assert list((serving.var_dir / "uploads").iterdir()) == []
    with make_client(serving, max_image_upload_bytes=100) as c:
        big = c.post("/v1/images", data={"style": STYLE}, files={"file": ("a.png", buffer.getvalue())})
    assert big.status_code == 413


def test_health_readiness_metrics_docs_and_page(client, serving):
    assert client.get("/healthz").json() == {"status": "ok"}
    worker = build_worker(serving)
    worker.register_birth()  # ready needs a live worker
    assert client.get("/readyz").json()["status"] == "ok"
    worker.register_death()
    metrics = client.get("/metrics").text
    assert 'clipmorph_jobs{state="queued"}' in metrics
    assert "clipmorph_queue_length" in metrics and "clipmorph_frames_stylized" in metrics
    assert 'clipmorph_http_requests_total{method="GET",route="/readyz",status="200"} 1.0' in metrics
    assert "/v1/jobs" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_the_app(client, page):
    # Offline machines cannot reach a CDN: every script, style sheet and icon must come from the app.
    html = client.get(page).text
    assert not re.search(r"https?:|[\"'(]//", html), "the page references another host"
    urls = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)""", html)
    assert any(u.endswith(".js") for u in urls) and urls
    for url in urls:
        assert url.startswith("/"), url
        r = client.get(url)
        assert r.status_code == 200 and r.content, url
    assert client.get("/openapi.json").status_code == 200


def test_promote_goes_through_the_gate_and_needs_an_admin_token(serving):
    register_tiny_model(serving, "promo")
    candidate = register_tiny_model(serving, "promo", champion=False)
    admins = {"alice": "adm1n-tok"}
    with make_client(serving, api_token="s3cret", admin_tokens=admins) as c:
        url = "/v1/models/promo/promote"
        assert c.post(url, json={"version": candidate}).status_code == 401
        # The upload token may read and upload, not promote.
        upload = {"Authorization": "Bearer s3cret"}
        denied = c.post(url, json={"version": candidate, "force": True, "reason": "x"}, headers=upload)
        assert denied.status_code == 403 and "admin token" in denied.json()["detail"]
        auth = {"Authorization": "Bearer adm1n-tok"}
        refused = c.post(url, json={"version": candidate}, headers=auth)
        assert refused.status_code == 409
        body = refused.json()
        assert body["promoted"] is False and body["previous"] == "1" and "no metrics" in body["message"]
        assert "candidate_metrics" in body and "champion_metrics" in body
        assert c.post(url, json={"version": candidate, "force": True}, headers=auth).status_code == 422
        # A client-supplied actor is ignored: the audit trail names the token's owner.
        forced = c.post(
            url, json={"version": candidate, "force": True, "reason": "test", "actor": "mallory"}, headers=auth
        )
        assert forced.status_code == 200, forced.text
        assert forced.json()["promoted"] is True and forced.json()["changed"] is True
        tags = registry.configure(serving).get_model_version(registry.registered_name("promo"), candidate).tags
        assert tags["promotion.by"] == "alice"
        models = c.get("/v1/models", headers=auth).json()["models"]
        assert next(m for m in models if m["name"] == "promo")["champion_version"] == candidate
        assert c.post(url, json={"version": "99"}, headers=auth).status_code == 404


def test_promotion_is_off_without_admin_tokens(serving):
    register_tiny_model(serving, "promo2")
    with make_client(serving, api_token="s3cret") as c:
        r = c.post("/v1/models/promo2/promote", json={"version": "1"}, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 403 and "CLIPMORPH_ADMIN_TOKENS" in r.json()["detail"]


def test_expired_job_folders_are_purged(tmp_path):
    jobs = tmp_path / "jobs"
    old, running, fresh = (jobs / str(uuid.uuid4()) for _ in range(3))
    for folder in (old, running, fresh):
        folder.mkdir(parents=True)
        (folder / "input.mp4").write_bytes(b"x")
    for folder in (old, running):
        for path in (folder, folder / "input.mp4"):
            os.utime(path, (1000, 1000))
    assert purge_expired(jobs, ttl_seconds=3600, keep={running.name}) == 1
    assert not old.exists() and running.exists() and fresh.exists()


def test_job_of_a_dead_worker_fails_with_a_reason_when_no_retries_are_left(serving, clip):
    """A worker that took the job and then died (no heartbeats): a status request settles it, no worker needed."""
    quick = {"job_retries": 0, "worker_heartbeat_seconds": 1, "worker_heartbeat_grace_seconds": 1}
    with make_client(serving, **quick) as c:
        created = upload(c, clip.read_bytes()).json()
        worker = build_worker(type(serving)(**{**serving.model_dump(), **quick}))
        worker.register_birth()
        job = queue_of(serving).fetch_job(created["id"])
        worker.prepare_execution(job)  # what a worker does right before running it; then it "dies"
        worker.prepare_job_execution(job)
        partial = serving.jobs_dir / job.id / ".output.k1ll3d.partial.mp4"
        partial.write_bytes(b"half")  # what it was writing when it died
        assert c.get(created["status_url"]).json()["status"] == "running"
        deadline = time.monotonic() + 30  # the heartbeat TTL is 1 + 1 s
        while (job := c.get(created["status_url"]).json())["status"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
    assert job["status"] == "failed"
    assert "stopped responding" in job["error"]
    assert not partial.exists()  # the failure callback, run where the job was found abandoned (here, the API)


def test_model_cache_follows_the_champion_alias(serving):
    client = registry.configure(serving)
    register_tiny_model(serving, "moving")
    cache = ModelCache(device="cpu", client=client)
    first = cache.get("moving")
    assert (first.name, first.version) == ("clipmorph-moving", "1")
    assert cache.get("moving") is first  # same version: not reloaded
    register_tiny_model(serving, "moving")  # version 2 becomes champion
    second = cache.get("moving")
    assert second.version == "2" and second is not first
    assert len(cache) == 1  # the superseded version was dropped


# ---------------------------------------------------------------- hardening (issue #15)


def with_env(monkeypatch, **values) -> Settings:
    """The test's settings with some values changed, for the API and the in-process worker alike."""
    for key, value in values.items():
        monkeypatch.setenv(f"CLIPMORPH_{key.upper()}", str(value))
    get_settings.cache_clear()
    return get_settings()


def no_server_details(text: str) -> bool:
    return "/" not in text and "\\" not in text and "input." not in text and "Error" not in text


def attempts(settings) -> int:
    """Runs the queued jobs with a burst worker here; -> how many times it ran one (a retry runs again)."""
    worker = build_worker(settings)
    runs = []
    perform = worker.perform_job
    worker.perform_job = lambda job, queue, execution: runs.append(job.id) or perform(job, queue, execution)
    worker.work(burst=True)
    return len(runs)


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        ({"max_frame_pixels": 64 * 48 - 1}, "more pixels than the limit of 3071 per frame"),
        ({"max_video_side": 60}, "larger than the limit of 60 pixels a side"),
        ({"max_video_frames": 11}, "more frames than the limit of 11"),
        ({"max_video_seconds": 0.5}, "longer than the limit of 0.5 seconds"),
    ],
)
def test_upload_over_a_limit_the_probe_sees_is_413(serving, clip, limits, words):
    with make_client(serving, **limits) as c:
        r = upload(c, clip.read_bytes())
    assert r.status_code == 413, r.text
    assert words in r.json()["detail"] and no_server_details(r.json()["detail"])
    assert queue_of(serving).count == 0 and job_dirs(serving) == []


def test_a_4096_square_upload_is_refused_with_default_limits(client, serving, tmp_path):
    r = upload(client, make_flat_clip(tmp_path / "huge.mp4", (4096, 4096), 4).read_bytes())
    assert r.status_code == 413, r.text
    assert "4096x4096 frames are larger than the limit of 3840 pixels a side" in r.json()["detail"]
    assert queue_of(serving).count == 0 and job_dirs(serving) == []


def test_a_long_tiny_video_is_refused_by_the_frame_cap(serving, tmp_path):
    data = make_flat_clip(tmp_path / "long.mp4", (16, 16), 400, fps=1000).read_bytes()  # 0.4 s, under the duration cap
    with make_client(serving, max_video_frames=300) as c:
        r = upload(c, data)
    assert r.status_code == 413 and "more frames than the limit of 300" in r.json()["detail"]


def test_frames_that_grow_mid_stream_fail_the_job_once_with_the_limit_message(serving, monkeypatch, tmp_path):
    """The probe reads the header and the first frame (64x48); the worker's decode loop meets 96x72."""
    settings = with_env(monkeypatch, max_frame_pixels=64 * 48, job_retries=1)
    data = make_resizing_clip(tmp_path / "grows.ts", [((64, 48), 50), ((96, 72), 5)]).read_bytes()
    with make_client(settings) as c:
        created = upload(c, data, filename="grows.ts", max_side=32)
        assert created.status_code == 202, created.text
        assert attempts(settings) == 1  # not retried
        job = c.get(created.json()["status_url"]).json()
    assert job["status"] == "failed" and job["retries_left"] == 0
    assert job["error"] == "video too large: 96x72 frames have more pixels than the limit of 3072 per frame"
    assert [p.name for p in (settings.jobs_dir / job["id"]).iterdir()] == ["input.ts"]  # no .partial


def test_a_resolution_change_within_the_limits_is_stylized(client, serving, tmp_path):
    data = make_resizing_clip(tmp_path / "resize.ts", [((64, 48), 50), ((96, 72), 5)]).read_bytes()
    created = upload(client, data, filename="resize.ts", max_side=32, strength=0.5).json()
    run_queued_jobs(serving)
    job = client.get(created["status_url"]).json()
    assert job["status"] == "finished", job
    out = tmp_path / "out.mp4"
    out.write_bytes(client.get(created["result_url"]).content)
    with av.open(str(out)) as container:
        assert [(f.width, f.height) for f in container.decode(video=0)] == [(64, 48)] * 55


def test_bad_input_found_by_the_worker_is_not_retried_and_leaves_no_partial(backend, monkeypatch, clip):
    settings = with_env(monkeypatch, job_retries=2)
    with make_client(settings) as c:
        created = upload(c, clip.read_bytes()).json()
        put_stored(settings, created["id"], "input.mp4", b"garbage, not a video\n" * 100)  # the probed file is gone
        partial = plant_partial(settings, created["id"])  # as a killed attempt leaves it
        assert attempts(settings) == 1
        job = c.get(created["status_url"]).json()
    assert job["status"] == "failed" and job["retries_left"] == 0
    assert job["error"].startswith("not a usable video: not a readable video") and no_server_details(job["error"])
    assert stored(settings, created["id"]) == ["input.mp4"]
    assert not partial.exists() and local_leftovers(settings) == []


def test_a_stale_partial_is_removed_when_the_job_runs_again(bclient, backend, clip):
    created = upload(bclient, clip.read_bytes(), max_side=32).json()
    partial = plant_partial(backend, created["id"])
    run_queued_jobs(backend)
    assert bclient.get(created["status_url"]).json()["status"] == "finished"
    assert stored(backend, created["id"]) == ["input.mp4", "output.mp4"]
    assert not partial.exists() and local_leftovers(backend) == []


def test_the_sweep_deletes_expired_jobs_but_not_running_ones(bclient, backend, clip):
    """A worker's maintenance pass: jobs untouched for the TTL go, whatever the storage; a running one stays."""
    old, running = (upload(bclient, clip.read_bytes()).json()["id"] for _ in range(2))
    # A TTL of 2 s once swept the fresh job too on a loaded machine: S3 truncates modification times to the
    # second, and the upload and the sweep took the rest. 5 s leaves the fresh job 3 s of margin.
    worker = build_worker(backend.model_copy(update={"job_ttl_seconds": 5}))
    worker.register_birth()
    job = queue_of(backend).fetch_job(running)
    worker.prepare_execution(job)  # what a worker does right before running a job: it is in the started registry
    worker.prepare_job_execution(job)
    time.sleep(6.1)  # past the TTL (S3 keeps modification times to the second)
    fresh = upload(bclient, clip.read_bytes()).json()["id"]
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("CLIPMORPH_JOB_TTL_SECONDS", "5")
            get_settings.cache_clear()
            worker.run_maintenance_tasks()
    finally:
        get_settings.cache_clear()
        worker.register_death()
    assert stored(backend) == sorted([running, fresh])
    assert old not in stored(backend)


def test_an_internal_error_keeps_its_retries_and_shows_no_exception_text(backend, monkeypatch, clip):
    import worker.jobs

    def broken(*args, **kwargs):
        raise RuntimeError("cv2.error at /srv/secret/path.py")

    monkeypatch.setattr(worker.jobs, "stylize_video", broken)
    settings = with_env(monkeypatch, job_retries=1)
    with make_client(settings) as c:
        created = upload(c, clip.read_bytes()).json()
        assert attempts(settings) == 2  # the first attempt and its retry
        job = c.get(created["status_url"]).json()
    assert job["status"] == "failed" and "internal error" in job["error"] and no_server_details(job["error"])
    assert stored(settings, created["id"]) == ["input.mp4"] and local_leftovers(settings) == []


def test_image_errors_name_no_server_path(serving, monkeypatch):
    settings = with_env(monkeypatch, max_image_pixels=100)
    with make_client(settings) as c:
        bad = c.post("/v1/images", data={"style": STYLE}, files={"file": ("a.png", b"not an image at all")})
        buffer = io.BytesIO()
        Image.new("RGB", (20, 20)).save(buffer, "PNG")
        big = c.post("/v1/images", data={"style": STYLE}, files={"file": ("a.png", buffer.getvalue())})
    assert bad.status_code == 422 and no_server_details(bad.json()["detail"])
    assert "tmp" not in bad.json()["detail"] and "upload" not in bad.json()["detail"]
    assert big.status_code == 413 and big.json()["detail"] == "image too large: more than 100 pixels"


def test_redis_down_is_503_with_retry_after(serving, clip):
    with make_client(serving, redis_url=f"redis://127.0.0.1:{closed_port()}/0") as c:
        answers = [
            upload(c, clip.read_bytes()),
            c.get(f"/v1/jobs/{uuid.uuid4()}"),
            c.get(f"/v1/jobs/{uuid.uuid4()}/result"),
            c.delete(f"/v1/jobs/{uuid.uuid4()}"),
        ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit() and r.headers["content-type"] == "application/json"
        assert r.json() == {"detail": "the job queue is unavailable; try again shortly"}
    assert job_dirs(serving) == []


def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_readiness_reports_each_dependency_and_needs_a_live_worker(client, serving):
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "redis": True, "registry": True, "workers": False, "storage": True}
    worker = build_worker(serving)
    worker.register_birth()
    try:
        r = client.get("/readyz")
        assert r.status_code == 200
        assert r.json() == {"status": "ok", "redis": True, "registry": True, "workers": True, "storage": True}
    finally:
        worker.register_death()
    assert client.get("/readyz").json()["workers"] is False


def test_readiness_without_redis_has_no_exception_text(serving):
    with make_client(serving, redis_url=f"redis://127.0.0.1:{closed_port()}/0") as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"status": "unavailable", "redis": False, "registry": True, "workers": False, "storage": True}


def test_delete_after_the_finish_is_refused_and_the_result_stays(client, serving, clip):
    """The worker's finish wins: the DELETE gets 409, the job stays finished, its result readable."""
    created = upload(client, clip.read_bytes()).json()
    job, redis = queue_of(serving).fetch_job(created["id"]), queue_of(serving).connection
    job.set_status(JobStatus.STARTED)
    assert settle.finish(redis, job.id, 60) == settle.FINISHED  # what the worker does after writing the output
    (serving.jobs_dir / job.id / "output.mp4").write_bytes(clip.read_bytes())
    r = client.delete(f"/v1/jobs/{job.id}")
    assert r.status_code == 409 and "already finished" in r.json()["detail"]
    job.set_status(JobStatus.FINISHED)  # RQ's own success handling, right after
    assert client.get(created["status_url"]).json()["status"] == "finished"
    assert client.get(created["result_url"]).status_code == 200


def test_delete_before_the_finish_wins_and_the_job_stays_cancelled(client, serving, clip):
    """The DELETE wins: 204, and the job reads cancelled from then on (never finished, never 410)."""
    created = upload(client, clip.read_bytes()).json()
    job, redis = queue_of(serving).fetch_job(created["id"]), queue_of(serving).connection
    job.set_status(JobStatus.STARTED)  # running (its worker is not reachable: the stop command has nowhere to go)
    assert client.delete(f"/v1/jobs/{job.id}").status_code == 204
    assert client.get(created["status_url"]).json()["status"] == "cancelled"
    assert settle.finish(redis, job.id, 60) == settle.CANCELLED  # the worker's finish comes second: refused
    job.set_status(JobStatus.FAILED)  # how RQ records the job the worker then ends
    assert client.get(created["status_url"]).json()["status"] == "cancelled"
    assert client.get(created["result_url"]).status_code == 409
    assert client.delete(f"/v1/jobs/{job.id}").status_code == 204  # idempotent


def test_a_worker_whose_job_was_cancelled_meanwhile_keeps_nothing(bclient, backend, clip):
    """The DELETE's mark reaches a worker that never got the stop command: the job ends cancelled, once."""
    created = upload(bclient, clip.read_bytes()).json()
    outcome = settle.cancel(queue_of(backend).connection, created["id"], 60)  # as DELETE, minus the RQ cancel
    assert outcome == settle.CancelOutcome(settle.CANCELLED, True)
    assert attempts(backend) == 1
    job = bclient.get(created["status_url"]).json()
    assert job["status"] == "cancelled" and job["retries_left"] == 0 and job["error"] is None
    assert stored(backend) == [] and local_leftovers(backend) == []


def test_job_timeout_scales_with_pixels_times_frames(client, serving, clip):
    s = serving.model_copy(
        update={
            "job_seconds_per_megapixel_frame": 10.0,
            "job_min_frame_pixels": 320 * 240,
            "job_min_timeout_seconds": 300,
        }
    )
    assert job_timeout(1000, 1920, 1080, s) == 20_736  # 1000 x 2.0736 MP x 10 s
    assert job_timeout(100, 3840, 2160, s) == 8_295
    assert job_timeout(30_000, 16, 16, s) == 23_040  # tiny frames count as 320x240
    assert job_timeout(10, 64, 48, s) == 300  # the minimum
    created = upload(client, clip.read_bytes()).json()
    assert queue_of(serving).fetch_job(created["id"]).timeout == job_timeout(12, 64, 48, serving)


def test_queued_jobs_name_the_workers_functions(client, serving, clip):
    # The API enqueues by dotted name (it never imports the worker); RQ must resolve it to the real job.
    import worker.jobs

    created = upload(client, clip.read_bytes()).json()
    job = queue_of(serving).fetch_job(created["id"])
    assert job.func is worker.jobs.stylize_job
    assert job.failure_callback is remove_partials


@pytest.mark.parametrize(("value", "expected"), [("", None), ("0", 0), ("32", 32)])
def test_max_side_empty_means_the_models_frame_side_and_zero_full_size(value, expected):
    from api.schemas import StyleForm

    assert StyleForm(style="kandinsky", max_side=value).max_side == expected


def test_max_side_between_1_and_15_is_refused():
    from pydantic import ValidationError

    from api.schemas import StyleForm

    with pytest.raises(ValidationError, match="0 \\(full size\\) or at least 16"):
        StyleForm(style="kandinsky", max_side=8)


def test_upload_refused_with_507_when_the_disk_would_fill(backend, clip):
    with make_client(backend, min_free_disk_bytes=10**18) as c:  # more free space than any disk has
        r = upload(c, clip.read_bytes())
        assert r.status_code == 507 and "disk space" in r.json()["detail"]
    assert stored(backend) == [] and local_leftovers(backend) == []  # refused before any folder was made


@pytest.mark.parametrize("epilogue", [b"\r\n", b"\r\nJUNK-AFTER-THE-END" * 1000])
def test_nothing_but_line_breaks_may_follow_the_closing_boundary(client, clip, epilogue):
    boundary = "cmboundary42"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="style"\r\n\r\n{STYLE}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + clip.read_bytes()
        + f"\r\n--{boundary}--".encode()
        + epilogue
    )
    r = client.post("/v1/jobs", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if epilogue.strip():
        assert r.status_code == 400 and "after the end of the multipart body" in r.json()["detail"]
    else:
        assert r.status_code == 202, r.text


def test_an_upload_slower_than_the_deadline_gets_408(tmp_path):
    """A client that dribbles its body holds a connection and a partial file: the deadline ends it."""
    import anyio
    from fastapi import HTTPException
    from starlette.requests import Request

    from api.uploads import receive_form

    boundary = b"slowb"
    chunks = [b'--slowb\r\nContent-Disposition: form-data; name="file"; filename="a.mp4"\r\n\r\n', b"x" * 10]

    async def receive() -> dict:
        await anyio.sleep(0.3)  # every chunk comes slowly, and the closing boundary never does
        return {"type": "http.request", "body": chunks.pop(0) if chunks else b"x", "more_body": True}

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + boundary)],
    }

    async def main() -> None:
        with (tmp_path / "upload").open("wb") as sink:
            await receive_form(Request(scope, receive), "file", sink, 1 << 20, deadline_seconds=1.0)

    with pytest.raises(HTTPException) as caught:
        anyio.run(main)
    assert caught.value.status_code == 408 and "longer than 1 s" in caught.value.detail


def test_the_api_refuses_a_public_address_without_a_token(serving):
    from api.main import exposure_error

    with pytest.raises(RuntimeError, match="without an API token"):
        make_client(serving, api_host="0.0.0.0")
    assert exposure_error("127.0.0.1", serving) is None
    with make_client(serving, api_host="0.0.0.0", api_token="s3cret") as c:  # a token makes it fine
        assert c.get("/healthz").status_code == 200


def test_serve_refuses_a_public_address_without_a_token(settings):
    from typer.testing import CliRunner

    from clipmorph.cli import app

    result = CliRunner().invoke(app, ["serve", "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "without an API token" in result.output


def test_stabilisation_has_one_default_for_the_api_the_page_and_the_cli():
    from api.schemas import JobForm
    from clipmorph.video.inference import DEFAULT_STABILIZE, StylizeOptions

    assert StylizeOptions().stabilize == DEFAULT_STABILIZE == "flow"
    assert JobForm(style="kandinsky").stabilize == DEFAULT_STABILIZE
    assert JobForm(style="kandinsky", stabilize="true").stabilize == DEFAULT_STABILIZE  # the page's checkbox
    assert JobForm(style="kandinsky", stabilize="false").stabilize == "none"
    assert JobForm(style="kandinsky", stabilize="both").stabilize == "both"
