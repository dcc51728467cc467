"""Job storage in an S3-compatible bucket (clipmorph/jobs/storage.py), against a real S3 endpoint: moto's
server on a free port (tests/conftest.py). The flows both storages share run in tests/test_api.py and
tests/test_image_jobs.py for each of them; here is what only a bucket has: its keys, presigned
links, its endpoint failing, objects that are not a job's."""

from __future__ import annotations

import socket
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from serving_helpers import fetch_result, local_leftovers, make_clip, stored, tiny_registry

from api.main import create_app
from clipmorph.jobs.storage import UNAVAILABLE, LocalStorage, S3Location, S3Storage, open_storage
from clipmorph.settings import Settings, get_settings
from worker.runner import build_worker

STYLE = "tiny"
PREFIX = "clipmorph/"  # the prefix of the s3_bucket fixture's CLIPMORPH_STORAGE_URL


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, assets, redis_url):
    root = tmp_path_factory.mktemp("storage-registry")
    with tiny_registry(root, assets, redis_url, STYLE):
        yield root


@pytest.fixture
def serving(registry_env, tmp_path, monkeypatch, s3_bucket) -> Settings:
    """This test's var dir and queue, the module's registry, jobs kept in a fresh bucket."""
    monkeypatch.setenv("CLIPMORPH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLIPMORPH_QUEUE_NAME", f"test-{uuid.uuid4().hex[:8]}")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", frames=6)


def client_for(settings: Settings, **overrides) -> TestClient:
    return TestClient(create_app(type(settings)(**{**settings.model_dump(), **overrides})))


def upload(client, data: bytes, **fields):
    form = {"style": STYLE, **{k: str(v) for k, v in fields.items()}}
    return client.post("/v1/jobs", data=form, files={"file": ("../my holiday.mp4", data, "video/mp4")})


def keys(bucket: str) -> list[str]:
    return sorted(item["Key"] for item in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", []))


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def no_storage_details(text: str, bucket: str) -> bool:
    return all(word not in text for word in (bucket, "127.0.0.1", "clipmorph/", "input.", "botocore", "Error"))


def test_storage_url_picks_the_backend_and_bad_urls_are_refused(settings):
    assert isinstance(open_storage(settings), LocalStorage)  # the default: the local jobs folder, as before
    assert S3Location.parse("s3://media/jobs/clipmorph/") == S3Location("media", "jobs/clipmorph/")
    assert S3Location.parse("s3://media") == S3Location("media", "")
    for bad in ("media/jobs", "http://media/jobs", "s3:///jobs", "s3://media/jobs?x=1"):
        with pytest.raises(ValueError, match="s3://bucket"):
            S3Location.parse(bad)
    with pytest.raises(ValueError, match="CLIPMORPH_STORAGE_URL"):
        create_app(settings.model_copy(update={"storage_url": "gs://media"}))  # refused at start, not per request


def test_a_job_is_kept_under_its_uuid_with_fixed_names(serving, s3_bucket, clip):
    with client_for(serving) as c:
        created = upload(c, clip.read_bytes(), max_side=32)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        assert keys(s3_bucket) == [f"{PREFIX}{job_id}/input.mp4"]  # the client's file name is in no key
        build_worker(serving).work(burst=True)
        assert keys(s3_bucket) == [f"{PREFIX}{job_id}/input.mp4", f"{PREFIX}{job_id}/output.mp4"]
        head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=f"{PREFIX}{job_id}/output.mp4")
        assert head["ContentType"] == "video/mp4"
        assert local_leftovers(serving) == []
        assert not (serving.jobs_dir / job_id).exists()  # nothing went to the local jobs folder


def test_result_is_a_redirect_to_a_presigned_link_behind_the_apis_own_checks(serving, clip):
    auth = {"Authorization": "Bearer s3cret"}
    with client_for(serving, api_token="s3cret", result_link_seconds=600) as c:
        form = {"style": STYLE, "max_side": "32"}
        created = c.post("/v1/jobs", data=form, files={"file": ("c.mp4", clip.read_bytes())}, headers=auth).json()
        build_worker(serving).work(burst=True)
        assert c.get(created["result_url"], follow_redirects=False).status_code == 401  # no token, no link
        moved = c.get(created["result_url"], headers=auth, follow_redirects=False)
        assert moved.status_code == 307
        link = moved.headers["location"]
        query = parse_qs(urlsplit(link).query)
        assert query["X-Amz-Expires"] == ["600"]  # as long as the API's own signed links
        assert "s3cret" not in link
        whole = httpx.get(link)
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        stream_url = c.get(created["status_url"], headers=auth).json()["stream_url"]
        part = fetch_result(c, stream_url, headers={"Range": "bytes=10-19"})  # as a <video> element: no header
        assert part.status_code == 206 and part.content == whole.content[10:20]


def test_links_can_name_the_endpoint_as_clients_reach_it(serving, s3_endpoint, clip):
    """Behind docker-compose the API reaches http://minio:9000, browsers a published port: the link signs that."""
    public = s3_endpoint.replace("127.0.0.1", "localhost")
    with client_for(serving, storage_public_endpoint=public) as c:
        created = upload(c, clip.read_bytes(), max_side=32).json()
        build_worker(serving).work(burst=True)
        moved = c.get(created["result_url"], follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"].startswith(public + "/")
        assert httpx.get(moved.headers["location"], headers={"Range": "bytes=0-3"}).status_code == 206


def test_an_unreachable_bucket_is_503_with_a_fixed_sentence(serving, s3_bucket, clip, monkeypatch):
    with client_for(serving) as c:
        finished = upload(c, clip.read_bytes(), max_side=32).json()
        build_worker(serving).work(burst=True)
        queued = upload(c, clip.read_bytes()).json()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")  # nothing listens there
    with client_for(serving) as c:
        answers = [
            upload(c, clip.read_bytes()),
            c.get(finished["result_url"], follow_redirects=False),
            c.delete(f"/v1/jobs/{queued['id']}"),
        ]
    for r in answers:
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"].isdigit() and r.json() == {"detail": UNAVAILABLE}
        assert no_storage_details(r.text, s3_bucket)
    assert local_leftovers(serving) == []  # the refused upload's staged copy is gone


def test_a_missing_bucket_is_503_and_names_no_bucket(serving, s3_bucket, clip, monkeypatch):
    boto3.client("s3").delete_bucket(Bucket=s3_bucket)
    with client_for(serving) as c:
        r = upload(c, clip.read_bytes())
    assert r.status_code == 503 and r.json() == {"detail": UNAVAILABLE}
    assert no_storage_details(r.text, s3_bucket)
    assert Queue(serving.queue_name, connection=Redis.from_url(serving.redis_url)).count == 0
    with client_for(serving) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["storage"] is False and r.json()["redis"] is True
    assert no_storage_details(r.text, s3_bucket)


def test_a_job_whose_input_vanished_fails_once_with_a_clear_message(serving, s3_bucket, clip):
    with client_for(serving, job_retries=2) as c:
        created = upload(c, clip.read_bytes()).json()
        boto3.client("s3").delete_object(Bucket=s3_bucket, Key=f"{PREFIX}{created['id']}/input.mp4")
        build_worker(serving.model_copy(update={"job_retries": 2})).work(burst=True)
        job = c.get(created["status_url"]).json()
    assert job["status"] == "failed" and job["retries_left"] == 0
    assert job["error"] == "the job's video is gone (deleted or expired)"
    assert stored(serving) == [] and local_leftovers(serving) == []


def test_the_sweep_leaves_what_is_not_a_job_and_local_leftovers_go_too(serving, s3_bucket):
    s3 = boto3.client("s3")
    old = str(uuid.uuid4())
    for key in (f"{PREFIX}{old}/input.mp4", f"{PREFIX}{old}/output.mp4", f"{PREFIX}notes.txt", "elsewhere/x"):
        s3.put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    running = str(uuid.uuid4())
    s3.put_object(Bucket=s3_bucket, Key=f"{PREFIX}{running}/input.mp4", Body=b"x")
    # A killed API's staged upload and a killed worker's workspace, on this machine's disk.
    for folder in ("staging", "scratch"):
        (serving.var_dir / folder / old).mkdir(parents=True)
        (serving.var_dir / folder / old / "input.mp4").write_bytes(b"x")
    storage = open_storage(serving)
    assert isinstance(storage, S3Storage)
    assert storage.purge_expired(3600, keep={running}) == 0  # nothing is an hour old yet
    assert storage.purge_expired(3600, keep={running}, now=time.time() + 7200) == 1
    assert keys(s3_bucket) == sorted([f"{PREFIX}notes.txt", f"{PREFIX}{running}/input.mp4", "elsewhere/x"])
    assert local_leftovers(serving) == []


def test_a_large_input_goes_up_in_parts_and_comes_back_whole(serving, s3_bucket):
    """Past boto3's multipart threshold (8 MiB) an upload is several parts, visible only once completed."""
    storage = open_storage(serving)
    job_id = str(uuid.uuid4())
    staged = storage.staging(job_id)
    staged.dir.mkdir(parents=True)
    data = np.random.default_rng(0).integers(0, 256, 9 * 1024 * 1024 + 17, dtype=np.uint8).tobytes()
    staged.input("mkv").write_bytes(data)
    storage.store_input(job_id, staged)
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key=f"{PREFIX}{job_id}/input.mkv")
    assert head["ContentLength"] == len(data) and "-" in head["ETag"]  # a multipart object's ETag: <md5>-<parts>
    assert not staged.dir.exists()
    work = storage.workspace(job_id)
    fetched = storage.fetch_input(job_id, work)
    assert fetched.name == "input.mkv" and fetched.read_bytes() == data
    assert sorted(p.name for p in work.dir.iterdir()) == ["input.mkv"]  # no half-downloaded file beside it
    storage.release(work)
    assert local_leftovers(serving) == []
    storage.delete(job_id)
    assert keys(s3_bucket) == []


def test_compose_keeps_jobs_in_a_minio_bucket_it_creates_before_the_api_and_workers_start():
    import yaml

    from clipmorph.settings import REPO_ROOT

    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["minio"]["image"].startswith("minio/minio") and "minio-data" in compose["volumes"]
    init = services["minio-init"]
    assert init["image"].startswith("minio/mc") and init["restart"] == "no"
    assert init["depends_on"] == {"minio": {"condition": "service_healthy"}}
    for name in ("api", "worker"):
        env = services[name]["environment"]
        default = env["CLIPMORPH_STORAGE_URL"].removeprefix("${CLIPMORPH_STORAGE_URL-").removesuffix("}")
        bucket = S3Location.parse(default).bucket
        assert f"mb --ignore-existing clipmorph/{bucket}" in init["command"][0]  # the bucket the URL names
        assert env["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL:-http://minio:9000}"
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env)
        assert services[name]["depends_on"]["minio-init"] == {"condition": "service_completed_successfully"}
