"""Long videos split across workers: the API queues one job per segment and a stitch job, real RQ workers
(StylizeWorker, in burst mode in this process) run them, against a real redis-server, a real MLflow
registry and each job storage (local folder, S3 bucket on moto's server)."""

from __future__ import annotations

import uuid
from fractions import Fraction

import av
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import Queue
from rq.job import Job, JobStatus
from serving_helpers import fetch_result, local_leftovers, stored, tiny_registry
from test_segments import DURATIONS, make_vfr_clip

import worker.jobs as worker_jobs
from api.main import create_app
from clipmorph.jobs.queue import SEGMENT_JOB, STITCH_JOB, segment_job_id, video_of
from clipmorph.settings import get_settings
from clipmorph.video.probe import VideoLimitError
from worker.runner import build_worker

STYLE = "tiny"
FRAMES = len(DURATIONS)


@pytest.fixture(scope="module")
def registry_env(tmp_path_factory, assets, redis_url):
    root = tmp_path_factory.mktemp("segment-registry")
    with tiny_registry(root, assets, redis_url, STYLE):
        yield root


@pytest.fixture
def serving(registry_env, tmp_path, monkeypatch):
    """This test's var dir and queue; videos over half a second are split (the clip has a keyframe every 8 frames)."""
    monkeypatch.setenv("CLIPMORPH_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("CLIPMORPH_QUEUE_NAME", f"test-{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("CLIPMORPH_SEGMENT_SECONDS", "0.5")
    monkeypatch.setenv("CLIPMORPH_SEGMENT_WARMUP_FRAMES", "4")
    monkeypatch.setenv("CLIPMORPH_X264_PRESET", "veryfast")  # B-frames in the pieces too
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def client(backend):
    with TestClient(create_app(backend)) as c:
        yield c


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_vfr_clip(tmp_path_factory.mktemp("clips") / "long.mp4")


def upload(client, clip) -> dict:
    r = client.post(
        "/v1/jobs", data={"style": STYLE, "max_side": "64"}, files={"file": ("long.mp4", clip.read_bytes())}
    )
    assert r.status_code == 202, r.text
    return r.json()


def queue_of(settings) -> Queue:
    return Queue(settings.queue_name, connection=Redis.from_url(settings.redis_url))


def segment_jobs(settings, video_id: str) -> list[Job]:
    video = Job.fetch(video_id, connection=queue_of(settings).connection)
    return [Job.fetch(i, connection=video.connection) for i in video.meta["segments"]]


def run_jobs(settings, max_jobs: int | None = None) -> None:
    build_worker(settings).work(burst=True, max_jobs=max_jobs)


def test_a_long_video_runs_in_segments_and_comes_back_whole(client, backend, clip, tmp_path):
    created = upload(client, clip)
    video_id = created["id"]
    segments = segment_jobs(backend, video_id)
    assert len(segments) >= 3
    assert [s.id for s in segments] == [segment_job_id(video_id, i) for i in range(len(segments))]
    assert all(s.func_name == SEGMENT_JOB and s.retries_left == backend.job_retries for s in segments)
    # Every segment is on the queue for any worker; the video's own job waits for all of them.
    assert queue_of(backend).job_ids == [s.id for s in segments]
    video = Job.fetch(video_id, connection=segments[0].connection)
    assert video.func_name == STITCH_JOB and video.get_status() == JobStatus.DEFERRED
    assert sum(s.meta["frames"] for s in segments) == FRAMES
    job = client.get(created["status_url"]).json()
    assert job["status"] == "queued" and job["progress"] is None and job["queue_position"] == 0
    assert (job["model_name"], job["model_version"]) == ("clipmorph-tiny", "1")  # pinned at upload

    run_jobs(backend)
    job = client.get(created["status_url"]).json()
    assert job["status"] == "finished", job
    assert job["progress"]["done"] == job["progress"]["total"] == FRAMES
    result = fetch_result(client, job["stream_url"])
    assert result.status_code == 200
    out = tmp_path / "out.mp4"
    out.write_bytes(result.content)
    with av.open(str(out)) as c, av.open(str(clip)) as src:
        assert [f.pts * f.time_base for f in c.decode(video=0)] == [f.pts * f.time_base for f in src.decode(video=0)]
        assert c.streams.audio and c.streams.video[0].codec_context.name == "h264"
    # The pieces are deleted once stitched; nothing is left on local disk with a bucket.
    assert stored(backend, video_id) == ["input.mp4", "output.mp4"]
    assert local_leftovers(backend) == []


def test_progress_sums_the_segments_and_the_video_runs_once_one_has(client, backend, clip):
    created = upload(client, clip)
    run_jobs(backend, max_jobs=1)  # one segment, by one worker
    first = segment_jobs(backend, created["id"])[0]
    assert first.get_status() == JobStatus.FINISHED
    job = client.get(created["status_url"]).json()
    assert job["status"] == "running"
    assert job["progress"]["done"] == first.meta["frames"] < FRAMES
    assert job["progress"]["total"] == FRAMES
    run_jobs(backend)
    assert client.get(created["status_url"]).json()["status"] == "finished"


def test_delete_cancels_every_segment_of_the_video(client, backend, clip):
    created = upload(client, clip)
    run_jobs(backend, max_jobs=1)
    assert client.delete(f"/v1/jobs/{created['id']}").status_code == 204
    segments = segment_jobs(backend, created["id"])
    assert segments[0].get_status() == JobStatus.FINISHED  # it had ended: left as it is
    assert all(s.get_status() == JobStatus.CANCELED for s in segments[1:])
    assert queue_of(backend).job_ids == []
    run_jobs(backend)  # nothing is left to run
    assert all(s.get_status() == JobStatus.CANCELED for s in segment_jobs(backend, created["id"])[1:])
    assert client.get(created["status_url"]).json()["status"] == "cancelled"
    assert stored(backend, created["id"]) == []


def test_a_failed_segment_is_retried_alone(client, serving, clip, monkeypatch):
    calls: list[int] = []
    real = worker_jobs.stylize_video

    def flaky(*args, segment=None, **kwargs):
        calls.append(segment.index)
        if segment.index == 1 and calls.count(1) == 1:
            raise RuntimeError("a transient failure")
        return real(*args, segment=segment, **kwargs)

    monkeypatch.setattr(worker_jobs, "stylize_video", flaky)
    created = upload(client, clip)
    run_jobs(serving)
    count = len(segment_jobs(serving, created["id"]))
    assert sorted(calls) == sorted([*range(count), 1])  # segment 1 twice, every other once
    assert segment_jobs(serving, created["id"])[1].retries_left == 0
    assert client.get(created["status_url"]).json()["status"] == "finished"


def test_bad_input_in_a_segment_fails_the_video_with_its_message(client, serving, clip, monkeypatch):
    real = worker_jobs.stylize_video

    def too_large(src, *args, segment=None, **kwargs):
        if segment.index == 1:
            raise VideoLimitError(f"{src.name}: 4000x4000 frames are larger than the limit of 3840 pixels a side")
        return real(src, *args, segment=segment, **kwargs)

    monkeypatch.setattr(worker_jobs, "stylize_video", too_large)
    created = upload(client, clip)
    run_jobs(serving)
    job = client.get(created["status_url"]).json()
    assert job["status"] == "failed"
    assert job["error"] == "video too large: 4000x4000 frames are larger than the limit of 3840 pixels a side"
    assert segment_jobs(serving, created["id"])[1].retries_left == 0  # bad input: not retried
    assert client.get(created["result_url"]).status_code == 409


def test_a_short_video_stays_one_job(client, serving, tmp_path):
    short = make_vfr_clip(tmp_path / "short.mp4", durations=[40] * 10)  # 0.4 s: under the threshold
    created = upload(client, short)
    job = Job.fetch(created["id"], connection=queue_of(serving).connection)
    assert job.func_name == "worker.jobs.stylize_job" and "segments" not in job.meta
    assert queue_of(serving).job_ids == [created["id"]]
    assert Fraction(created["input"]["duration"]).limit_denominator(100) == Fraction(2, 5)


def test_a_segment_job_id_leads_back_to_its_video_and_nothing_else_does():
    video = str(uuid.uuid4())
    assert video_of(segment_job_id(video, 12)) == video
    assert video_of(video) == video  # a video's or an image's own job
    for other in ("abc-s0001", f"{video}-sx", f"{video}-s"):
        assert video_of(other) == other
