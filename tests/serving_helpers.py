"""Helpers for the serving tests: tiny clips encoded with PyAV, a tiny registered model."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import mlflow
import numpy as np
import pytest

from clipmorph import registry
from clipmorph.model.artifact import CONFIG, ModelInfo, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.settings import Settings, get_settings


def make_clip(
    path: Path, frames: int = 12, size: tuple[int, int] = (64, 48), fps: int = 12, audio: bool = True
) -> Path:
    """An H.264 clip of a moving gradient, with a sine tone (AAC) when `audio`."""
    width, height = size
    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
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
