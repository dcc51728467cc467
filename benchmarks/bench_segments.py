"""Scaling one long video over workers: N worker processes x T threads each, on one 60 s clip.

The clip is built from the sample videos (bikes, bigbuckbunny, carphone, tree, one after the other
and again, scaled to 640x360 at 25 fps, with a 440 Hz AAC tone). A private redis-server and var
dir are used; for each configuration N `clipmorph worker` processes are started with
OMP_NUM_THREADS=T (torch and onnxruntime follow it), each is warmed up with a short job (the model
is loaded and its ONNX graph built once per worker), then the clip is queued as the API queues it
(api.routers.jobs.plan_upload + enqueue_stylize) and timed from the enqueue to the video job's end,
with each segment's and the stitch's own time from RQ's started_at/ended_at.

    python benchmarks/bench_segments.py [--configs 1x2:0,1x2,2x1,2x1:10] [--rounds 2] [--seconds 60] [--style kanagawa]

A configuration is NxT[:S]: N workers, T threads each, S = CLIPMORPH_SEGMENT_SECONDS (default 20;
0: the whole video as one job). Results go to bench-results/segments.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from redis import Redis
from rq import Queue, Worker
from rq.job import Job, JobStatus

from clipmorph.settings import REPO_ROOT, Settings

RESULTS = REPO_ROOT / "bench-results" / "segments.json"
SIZE = (640, 360)
FPS = 25
SOURCES = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "tree.avi")


def build_clip(assets: Path, path: Path, seconds: float) -> Path:
    """The sample videos one after another (and again) at 640x360, 25 fps, x264 veryfast, with a tone."""
    total = round(seconds * FPS)
    width, height = SIZE
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=FPS)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "20"}
        sound = out.add_stream("aac", rate=16000)
        n = 0
        while n < total:
            for name in SOURCES:
                with av.open(str(assets / "videos" / name)) as inp:
                    for frame in inp.decode(video=0):
                        if n == total:
                            break
                        small = frame.reformat(width, height, "yuv420p")
                        small.pts, small.time_base = n, Fraction(1, FPS)
                        out.mux(video.encode(small))
                        n += 1
        out.mux(video.encode(None))
        t = np.arange(16000 * total // FPS) / 16000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time so far of these processes (all their threads): what the load around us disturbs
    least, unlike the wall time."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the whole line)
    return total / ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def queue_video(settings: Settings, queue: Queue, clip: Path, style: str) -> str:
    """Store the clip as a job's input and queue it the way POST /v1/jobs does."""
    from api.routers.jobs import plan_upload
    from clipmorph import registry
    from clipmorph.jobs.files import JobFiles
    from clipmorph.jobs.queue import enqueue_stylize
    from clipmorph.video.probe import probe

    job_id = str(uuid.uuid4())
    files = JobFiles.of(settings.jobs_dir, job_id)
    files.dir.mkdir(parents=True)
    shutil.copy(clip, files.input("mp4"))
    info = probe(files.input("mp4"))
    version = registry.get_version(registry.configure(settings), style)
    segments = plan_upload(files.input("mp4"), info, settings)
    options = {"max_side": None, "strength": 1.0, "stabilize": "flow"}
    enqueue_stylize(queue, job_id, style, options, info, settings, segments, (version.name, str(version.version)))
    return job_id


def wait_for(job: Job, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while job.get_status(refresh=True) not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED):
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job.id} did not end in {timeout:.0f} s")
        time.sleep(0.2)
    if job.get_status() != JobStatus.FINISHED:
        raise RuntimeError(f"job {job.id} ended {job.get_status()}: {job.meta.get('error')}")


def run_config(workers: int, threads: int, segment_seconds: float, args, root: Path, redis_url: str, clip: Path):
    var = root / f"var-{workers}x{threads}-{segment_seconds:g}"
    env = {
        **os.environ,
        "CLIPMORPH_VAR_DIR": str(var),
        "CLIPMORPH_REDIS_URL": redis_url,
        "CLIPMORPH_QUEUE_NAME": f"bench-{uuid.uuid4().hex[:8]}",
        "CLIPMORPH_SEGMENT_SECONDS": str(segment_seconds),
        "OMP_NUM_THREADS": str(threads),
        "WANDB_MODE": "disabled",
    }
    settings = Settings(
        var_dir=var,
        redis_url=redis_url,
        queue_name=env["CLIPMORPH_QUEUE_NAME"],
        segment_seconds=segment_seconds,
    )
    # The registry is filled by the first worker (built-in models); the others find it filled.
    os.environ.update({k: env[k] for k in ("CLIPMORPH_VAR_DIR", "CLIPMORPH_REDIS_URL", "CLIPMORPH_QUEUE_NAME")})
    from clipmorph.settings import get_settings

    get_settings.cache_clear()
    connection = Redis.from_url(redis_url)
    queue = Queue(settings.queue_name, connection=connection)
    exe = Path(sys.executable).parent / "clipmorph"
    procs = []
    try:
        for i in range(workers):
            log = (root / f"worker-{workers}x{threads}-{segment_seconds:g}-{i}.log").open("wb")
            procs.append(subprocess.Popen([str(exe), "worker"], env=env, stdout=log, stderr=subprocess.STDOUT))
            if i == 0:
                time.sleep(8)  # let the first register the built-in models alone
        while Worker.count(queue=queue) < workers:
            time.sleep(0.2)
        # Warm-up: one short job per worker, queued together so that each worker takes one (model loading,
        # the ONNX export); then the measured video.
        warm = [queue_video(settings, queue, args.warmup_clip, args.style) for _ in range(workers)]
        for job_id in warm:
            wait_for(Job.fetch(job_id, connection=connection), 600)
        warmed = {Job.fetch(j, connection=connection).worker_name for j in warm}
        cpu_before = cpu_seconds([p.pid for p in procs])
        load_before = os.getloadavg()[0]
        start = time.time()
        video_id = queue_video(settings, queue, clip, args.style)
        queued = time.time() - start
        video = Job.fetch(video_id, connection=connection)
        wait_for(video, 3600)
        wall = time.time() - start
        cpu = cpu_seconds([p.pid for p in procs]) - cpu_before
        ids = video.meta.get("segments") or []
        parts = []
        for sid in ids:
            job = Job.fetch(sid, connection=connection)
            parts.append(
                {
                    "id": sid,
                    "frames": job.meta.get("frames"),
                    "worker": job.worker_name,
                    "seconds": (job.ended_at - job.started_at).total_seconds(),
                    "started_after": job.started_at.timestamp() - start,
                }
            )
        video.refresh()
        result = {
            "workers": workers,
            "threads": threads,
            "segment_seconds": segment_seconds,
            "wall_seconds": round(wall, 2),
            "enqueue_seconds": round(queued, 3),
            "frames": video.result["frames"] if video.result else None,
            "fps": round((video.result or {}).get("frames", 0) / wall, 2),
            "last_job_seconds": round((video.ended_at - video.started_at).total_seconds(), 2),
            "worker_cpu_seconds": round(cpu, 1),
            "load_average_before": round(load_before, 2),
            "load_average_after": round(os.getloadavg()[0], 2),
            "segments": parts,
            "workers_warmed": len(warmed),
        }
        print(json.dumps(result), flush=True)
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="1x2:0,1x2,2x1,2x1:10")
    parser.add_argument("--rounds", type=int, default=1, help="run every configuration this many times, in turn")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--style", default="kanagawa")
    args = parser.parse_args()
    assets = Settings().assets_dir
    root = Path(tempfile.mkdtemp(prefix="bench-segments-"))
    redis_exe = shutil.which("redis-server")
    if redis_exe is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    redis = subprocess.Popen(
        [redis_exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(root)],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        clip = build_clip(assets, root / "long.mp4", args.seconds)
        args.warmup_clip = build_clip(assets, root / "warm.mp4", 1.0)
        results = []
        for config in args.configs.split(",") * args.rounds:
            shape, _, seconds = config.partition(":")
            workers, threads = (int(x) for x in shape.split("x"))
            results.append(
                run_config(workers, threads, float(seconds or 20), args, root, f"redis://127.0.0.1:{port}/0", clip)
            )
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps({"clip_seconds": args.seconds, "size": SIZE, "runs": results}, indent=2))
        print(f"written to {RESULTS}")
    finally:
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
