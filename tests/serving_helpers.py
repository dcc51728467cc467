"""Helpers for the serving tests: tiny clips encoded with PyAV, a tiny registered model, what a job storage holds."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import av
import httpx
import mlflow
import numpy as np
import pytest

from clipmorph import registry
from clipmorph.model.artifact import CONFIG, ModelInfo, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.settings import Settings, get_settings

if TYPE_CHECKING:
    from fastapi.testclient import TestClient


def make_client(settings: Settings, **overrides: Any) -> TestClient:
    """An in-process client of an app built from `settings` with some fields replaced."""
    from fastapi.testclient import TestClient

    from api.main import create_app

    return TestClient(create_app(type(settings)(**{**settings.model_dump(), **overrides})))


def make_clip(
    path: Path,
    frames: int = 12,
    size: tuple[int, int] = (64, 48),
    fps: int = 12,
    audio: bool = True,
    pix_fmt: str = "yuv420p",
) -> Path:
    """An H.264 clip of a moving gradient, with a sine tone (AAC) when `audio` (yuv444p for odd sizes)."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, pix_fmt
        video.options = {"preset": "ultrafast"}
        sound = container.add_stream("aac", rate=16000) if audio else None
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xx * 4 + i * 8) % 256, (yy * 4) % 256, np.full_like(xx, (i * 20) % 256)], axis=-1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            container.mux(video.encode(frame))
        container.mux(video.encode(None))
        if sound is not None:
            samples_total = int(16000 * frames / fps)
            t = np.arange(samples_total) / 16000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, samples_total, 1024):
                chunk = tone[start : start + 1024][None]
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
                container.mux(sound.encode(frame))
            container.mux(sound.encode(None))
    return path


def register_tiny_model(
    settings: Settings,
    style: str = "tiny",
    champion: bool = True,
    painting: str | None = None,
    quality: dict | None = None,
) -> str:
    """An untrained `fast` stylizer registered as clipmorph-<style>; -> its version.

    `painting`: a style image name its config records (as training does); `quality`: a quality block
    for its config.json (as `make quality --record` writes).
    """
    client = registry.configure(settings)
    folder = settings.var_dir / f"model-{style}"
    images = [{"name": painting, "weight": 1.0}] if painting else []
    save_model(build("fast"), ModelInfo(net=PRESETS["fast"], style={"name": style, "images": images}), folder)
    if quality is not None:
        config = json.loads((folder / CONFIG).read_text())
        (folder / CONFIG).write_text(json.dumps(config | {"quality": quality}))
    with mlflow.start_run() as run:
        version = registry.register_model_dir(client, folder, style, run.info.run_id)
    if champion:
        client.set_registered_model_alias(registry.registered_name(style), settings.champion_alias, version.version)
    return str(version.version)


@contextlib.contextmanager
def tiny_registry(root: Path, assets: Path, redis_url: str, style: str) -> Iterator[Path]:
    """Settings pointing at an MLflow registry under `root` holding a tiny champion for `style`
    (for a module-scoped fixture: creating a registry costs seconds)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPMORPH_VAR_DIR", str(root / "var"))
        mp.setenv("CLIPMORPH_MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.setenv("CLIPMORPH_MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
        mp.setenv("CLIPMORPH_ASSETS_DIR", str(assets))
        mp.setenv("CLIPMORPH_REDIS_URL", redis_url)
        mp.setenv("WANDB_MODE", "disabled")
        mp.delenv("CLIPMORPH_API_TOKEN", raising=False)
        get_settings.cache_clear()
        register_tiny_model(get_settings(), style)
        yield root
    get_settings.cache_clear()


def make_flat_clip(path: Path, size: tuple[int, int], frames: int, fps: int = 25) -> Path:
    """Flat grey frames, libx264 ultrafast: a few KB and quick to encode even at 4096x4096."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), i % 256, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_resizing_clip(path: Path, parts: list[tuple[tuple[int, int], int]], fps: int = 25) -> Path:
    """An MPEG-TS H.264 clip whose frame size changes mid-stream: one part per (size, frames).

    PyAV's encoder rescales every frame to its own size, so each part gets its own libx264
    encoder and all their packets go into the one stream (TS carries the new SPS in-band;
    joining separate TS files instead breaks the continuity counters: "corrupt" packets).
    The first part should run a couple of seconds, so the probe's header is the first size.
    """
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=fps)
        start = 0
        for i, ((width, height), frames) in enumerate(parts):
            encoder = stream.codec_context if i == 0 else av.CodecContext.create("libx264", "w")
            if i:
                encoder.framerate, encoder.time_base = Fraction(fps), stream.codec_context.time_base
            encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
            encoder.options = {"preset": "ultrafast"}
            for n in [*range(start, start + frames), None]:
                frame = None
                if n is not None:
                    frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), n * 7 % 256, np.uint8), "rgb24")
                    frame.pts, frame.time_base = n, Fraction(1, fps)
                for packet in encoder.encode(frame):
                    packet.stream = stream
                    container.mux(packet)
            start += frames
    return path


def stop_processes(procs: Iterable[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM every process, then SIGKILL whichever has not exited after `grace` seconds."""
    procs = list(procs)
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- what a job storage holds (either backend)


def _bucket(settings: Settings) -> tuple[Any, str, str]:
    """(boto3 client, bucket, key prefix) of settings.storage_url, read here without clipmorph's storage code."""
    import boto3

    parts = urlsplit(settings.storage_url)
    prefix = parts.path.strip("/")
    return boto3.client("s3"), parts.netloc, f"{prefix}/" if prefix else ""


def stored(settings: Settings, job_id: str | None = None) -> list[str]:
    """What the job storage holds: a job's file names, or without `job_id` the ids of the jobs it holds."""
    if not settings.storage_url:
        folder = settings.jobs_dir / job_id if job_id else settings.jobs_dir
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    s3, bucket, prefix = _bucket(settings)
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + (f"{job_id}/" if job_id else "")
    )
    keys = [item["Key"].removeprefix(prefix) for page in pages for item in page.get("Contents", [])]
    return sorted({key.split("/")[1] if job_id else key.split("/")[0] for key in keys})


def put_stored(settings: Settings, job_id: str, name: str, data: bytes) -> None:
    """Replace one of a job's stored files, as something outside clipmorph could."""
    if not settings.storage_url:
        (settings.jobs_dir / job_id / name).write_bytes(data)
        return
    s3, bucket, prefix = _bucket(settings)
    s3.put_object(Bucket=bucket, Key=f"{prefix}{job_id}/{name}", Body=data)


def plant_partial(settings: Settings, job_id: str) -> Path:
    """A half-written output where a killed worker's attempt leaves it: in the job's folder (local storage)
    or in the worker's local workspace (a bucket never holds half an object)."""
    root = settings.jobs_dir if not settings.storage_url else settings.var_dir / "scratch"
    (root / job_id).mkdir(parents=True, exist_ok=True)
    path = root / job_id / ".output.dead01.partial.mp4"
    path.write_bytes(b"half")
    return path


def local_leftovers(settings: Settings) -> list[Path]:
    """What a bucket-backed API or worker left on local disk (staged uploads, workspaces); always [] when local."""
    return sorted(p for folder in ("staging", "scratch") for p in (settings.var_dir / folder).rglob("*"))


def fetch_result(client: Any, url: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """GET a job's result as a browser would: following the API's 307 to the bucket's presigned URL, Range and all."""
    first = client.get(url, headers=headers or {}, follow_redirects=False)
    if first.status_code != 307:
        return first
    location = first.headers["location"]
    assert location.startswith(os.environ["AWS_ENDPOINT_URL"]), "redirected somewhere else than the bucket"
    # A client drops Authorization on a redirect to another host (browsers, httpx): the presigned query is the key.
    return httpx.get(location, headers={k: v for k, v in (headers or {}).items() if k.lower() != "authorization"})
