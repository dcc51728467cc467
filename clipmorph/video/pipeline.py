"""Stylizing videos: decode, stylize and encode in overlapping threads.

    decode thread     PyAV demux + decode -> RGB frames (+ the network-sized copy)
    motion thread     DIS optical flow between consecutive inputs (only for flow stabilisation)
    inference thread  batches through the network
    calling thread    stabilise, scale back, blend, encode (libx264) and mux, with the audio copied

Stages are joined by bounded queues, so memory stays flat for any length.

The output keeps what the input had: one output frame per decoded frame with the
same presentation timestamps (variable frame rates stay variable), the same
display size and display matrix (rotation), and every audio stream (packets
copied when the output container accepts the codec, else transcoded to AAC).
Even sizes are encoded as yuv420p. H.264 can only crop 4:2:0 pictures in
2-pixel steps (x264: "crop-rect not divisible by 2x2") and PyAV cannot write a
container crop (mp4 `clap`), so an odd width or height is encoded as yuv444p
(High 4:4:4) at the exact size instead of stretching or padding it; nearly all
camera footage has even sizes. Subtitle and data streams are not copied.

The output is written to a hidden temporary file beside `dst` and renamed only
when complete, so a failure or a cancellation never leaves a partial file.

Inputs are held to the limits in settings (VideoLimits: frame side and pixels,
frame count, duration): `probe` checks what the container says and the first
frame, and the decode loop checks every frame again, because a stream can grow
mid-file. A frame whose size differs from the first is scaled to the first
frame's size (the output has one size), as ffmpeg does. Memory is bounded by
design: frames are batched up to settings.batch_pixels network pixels, a frame
larger than that on its own is stylized in tiles of settings.tile_pixels, and
the queues between the stages hold a few batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import queue
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import av.error
import cv2
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from clipmorph.model.network import Stylizer
from clipmorph.settings import Settings, get_settings
from clipmorph.video.inference import (
    DEFAULT_NORM_SMOOTHING,
    StylizeOptions,
    blend,
    network_size,
    resize,
    stylize_array,
    stylize_frames,
)
from clipmorph.video.stabilize import FlowStabilizer, Motion, MotionTracker

log = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
FALLBACK_AUDIO_CODEC = "aac"
# How often (seconds) progress is reported and cancellation polled.
REPORT_INTERVAL = 0.5


class VideoError(ValueError):
    """The input cannot be stylized as a video; the message says why."""


class VideoLimitError(VideoError):
    """The input is over one of the configured limits (frame size, frame count, duration)."""


@dataclass(frozen=True)
class VideoLimits:
    """What a video may be at most; `from_settings()` reads the configured limits."""

    max_side: int
    max_pixels: int
    max_frames: int
    max_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> VideoLimits:
        s = settings or get_settings()
        return cls(s.max_video_side, s.max_frame_pixels, s.max_video_frames, s.max_video_seconds)

    def check_size(self, width: int, height: int) -> None:
        if max(width, height) > self.max_side:
            raise VideoLimitError(f"{width}x{height} frames are larger than the limit of {self.max_side} pixels a side")
        if width * height > self.max_pixels:
            raise VideoLimitError(
                f"{width}x{height} frames have more pixels than the limit of {self.max_pixels} per frame"
            )

    def check_frames(self, frames: int) -> None:
        if frames > self.max_frames:
            raise VideoLimitError(f"the video has more frames than the limit of {self.max_frames}")

    def check_seconds(self, seconds: float) -> None:
        if seconds > self.max_seconds:
            raise VideoLimitError(f"the video is longer than the limit of {self.max_seconds:g} seconds")


def public_message(error: VideoError, path: Path) -> str:
    """The error's message without the file name it starts with (a server-side name, for clients)."""
    return str(error).removeprefix(f"{Path(path).name}: ")


class StylizeCancelled(RuntimeError):
    """`should_cancel` returned True; no output was written."""


@dataclass
class VideoInfo:
    width: int  # stored frame size; `rotation` says how it is displayed
    height: int
    frames: int | None
    duration: float | None  # seconds, from the timestamps (not the container's claim)
    fps: float | None  # nominal (average) frame rate
    rotation: int  # degrees counter-clockwise from the display matrix, 0..359
    has_audio: bool
    codec: str


@dataclass
class Progress:
    done: int
    total: int | None
    fps: float
    eta_seconds: float | None


# ---------------------------------------------------------------- probing


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[av.container.InputContainer]:
    """av.open for reading, with every failure turned into a VideoError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path.name}: no such file")
    try:
        container = av.open(str(path), "r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path.name}: not a readable video ({_reason(e)})") from None
    try:
        yield container
    finally:
        container.close()


def _reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{Path(path).name}: the file has no video stream")
    return container.streams.video[0]


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Limit errors raised inside get the file's name in front, like every other VideoError."""
    try:
        yield
    except VideoLimitError as e:
        raise VideoLimitError(f"{Path(path).name}: {e}") from None


def _scan_packets(container: av.container.InputContainer, stream, path: Path) -> tuple[int, Fraction | None]:
    """(number of video packets, span of their timestamps in seconds); raises on a truncated file."""
    count, first, end = 0, None, None
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            if packet.is_corrupt:
                raise VideoError(f"{Path(path).name}: the file is truncated or corrupt (video packet {count + 1})")
            count += 1
            if packet.pts is not None:
                first = packet.pts if first is None else min(first, packet.pts)
                stop = packet.pts + (packet.duration or 0)
                end = stop if end is None else max(end, stop)
    except av.error.FFmpegError as e:
        raise VideoError(f"{Path(path).name}: the file is truncated or corrupt ({_reason(e)})") from None
    span = (end - first) * stream.time_base if first is not None and stream.time_base else None
    return count, span


def _decoded(container: av.container.InputContainer, stream, path: Path) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as e:
        raise VideoError(f"{Path(path).name}: the video cannot be decoded ({_reason(e)})") from None


def frame_rate(stream) -> Fraction | None:
    """The nominal frame rate as an exact fraction (30000/1001 stays 29.97)."""
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return Fraction(rate) if rate else None


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The frame's DISPLAYMATRIX side data (9 int32), copied as-is so flips survive too."""
    try:
        data = bytes(frame.side_data[SideDataType.DISPLAYMATRIX])
    except (KeyError, IndexError):
        return None
    return struct.unpack("<9i", data[:36]) if len(data) >= 36 else None


def probe(path: Path, max_side: int | None = None, limits: VideoLimits | None = None) -> VideoInfo:
    """Check that `path` is a stylizable video and describe it.

    limits: what the video may be at most (None: the settings; `max_side` overrides their side limit).
    Raises VideoError when the file is not a video, has no video stream, is
    truncated, or has no decodable frame, and VideoLimitError when the header,
    the first frame, the packet count or the timestamps are over a limit.
    Frames after the first are not decoded here: the decode loop checks them.
    """
    path = Path(path)
    limits = limits or VideoLimits.from_settings()
    if max_side:
        limits = dataclasses.replace(limits, max_side=max_side)
    with open_input(path) as container, _naming(path):
        stream = _video_stream(container, path)
        if stream.codec_context.width and stream.codec_context.height:
            limits.check_size(stream.codec_context.width, stream.codec_context.height)
        frames, span = _scan_packets(container, stream, path)
        limits.check_frames(frames)
        has_audio = bool(container.streams.audio)
        codec = stream.codec_context.name
        rate = frame_rate(stream)
        container_duration = container.duration / av.time_base if container.duration else None
    if frames == 0:
        raise VideoError(f"{path.name}: the video stream has no frames")
    with open_input(path) as container:
        first = next(_decoded(container, _video_stream(container, path), path), None)
    if first is None:
        raise VideoError(f"{path.name}: no frame of the video can be decoded")
    duration = float(span) if span else container_duration
    with _naming(path):
        limits.check_size(first.width, first.height)
        limits.check_seconds(duration or 0.0)
    return VideoInfo(
        width=first.width,
        height=first.height,
        frames=frames,
        duration=duration,
        fps=float(rate) if rate else None,
        rotation=round(first.rotation) % 360,
        has_audio=has_audio,
        codec=codec,
    )


# ---------------------------------------------------------------- pipeline plumbing

_END = object()


class _Stopped(Exception):
    """The pipeline is shutting down; raised in a stage waiting on its input."""


class _Stage(threading.Thread):
    """Runs a generator in a thread and hands what it yields over a bounded queue.

    Iterating the stage (from the next stage's thread) yields those items and,
    at the end, re-raises whatever the generator raised.
    """

    def __init__(self, name: str, produce: Callable[[], Iterator], maxsize: int, stop: threading.Event) -> None:
        super().__init__(name=f"clipmorph-{name}", daemon=True)
        self.queue: queue.Queue = queue.Queue(maxsize)
        self._produce = produce
        self._halt = stop
        self.error: BaseException | None = None

    def run(self) -> None:
        items = self._produce()
        try:
            for item in items:
                if not self._put(item):
                    return
        except _Stopped:
            pass
        except BaseException as e:
            self.error = e
        finally:
            items.close()
            self._put(_END)

    def _put(self, item: object) -> bool:
        while not self._halt.is_set():
            with contextlib.suppress(queue.Full):
                self.queue.put(item, timeout=0.1)
                return True
        return False

    def __iter__(self) -> Iterator:
        while True:
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                if self._halt.is_set():
                    raise _Stopped from None
                continue
            if item is _END:
                if self.error is not None:
                    raise self.error
                return
            yield item


def _batched(items: Iterable, n: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, n)):
        yield batch


@dataclass
class _Frame:
    index: int
    pts: int | None
    duration: int | None
    original: np.ndarray  # HxWx3 uint8 at the input size
    net_in: np.ndarray  # the same frame at the size the network sees
    matrix: tuple[int, ...] | None = None  # display matrix (first frame only)
    colors: dict = field(default_factory=dict)  # colour tags (first frame only)
    motion: Motion | None = None
    stylized: np.ndarray | None = None


_COLOR_TAGS = ("color_primaries", "color_trc", "colorspace")


def _check_frame(frame: av.VideoFrame, index: int, start: float | None, limits: VideoLimits) -> None:
    """Limits on one decoded frame, before it is converted: its size, its number, its time since the first."""
    limits.check_size(frame.width, frame.height)
    limits.check_frames(index + 1)
    if start is not None and frame.time is not None:
        limits.check_seconds(frame.time - start)


def _decode_frames(
    src: Path, size: tuple[int, int], net_size: tuple[int, int], limits: VideoLimits
) -> Iterator[_Frame]:
    """Decoded frames at `size` (the first frame's), each checked against `limits` as it comes."""
    with open_input(src) as container, _naming(src):
        stream = _video_stream(container, src)
        stream.thread_type = "AUTO"
        start = None
        for i, frame in enumerate(_decoded(container, stream, src)):
            start = frame.time if start is None else start
            _check_frame(frame, i, start, limits)
            # A resolution change mid-stream: the output has one size, so later sizes are scaled to it.
            rgb = resize(frame.to_ndarray(format="rgb24"), size)
            item = _Frame(i, frame.pts, frame.duration, rgb, resize(rgb, net_size))
            if i == 0:
                item.matrix = display_matrix(frame)
                item.colors = {k: getattr(frame, k) for k in _COLOR_TAGS}
            yield item


def _with_motion(frames: Iterable[_Frame]) -> Iterator[_Frame]:
    track = MotionTracker()
    for f in frames:
        f.motion = track(f.net_in)
        yield f


def batch_size_for(size: tuple[int, int], requested: int, batch_pixels: int) -> int:
    """Frames of `size` (w, h) per batch: at most `requested` and `batch_pixels` pixels together, at least 1."""
    return max(1, min(requested, batch_pixels // max(1, size[0] * size[1])))


# The network input as it is: stylize_array then only tiles (net_in already has the network's size).
_AS_IS = StylizeOptions(max_side=0)


def _stylized(frames: Iterable[_Frame], model: Stylizer, batch_size: int, batch_pixels: int) -> Iterator[_Frame]:
    for batch in _batched(frames, batch_size):
        inputs = [f.net_in for f in batch]
        if inputs[0].shape[0] * inputs[0].shape[1] > batch_pixels:
            # Over the budget on its own (batch_size is then 1): untiled, the activations of a 4K frame take
            # gigabytes, so it goes in tiles of settings.tile_pixels. The tiles share the frame's norm
            # statistics, so norm smoothing does not carry across such frames.
            outputs = [stylize_array(model, x, _AS_IS) for x in inputs]
        else:
            outputs = stylize_frames(model, np.stack(inputs))
        for f, out in zip(batch, outputs, strict=True):
            f.stylized = out
            yield f


# ---------------------------------------------------------------- writing


# Channel layouts the AAC encoder accepts, by channel count; anything else is mixed down to stereo.
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 8: "7.1"}


def _can_copy(codec: str, out: av.container.OutputContainer) -> bool:
    # FFmpeg's mp4 muxer accepts raw PCM, but almost no player reads PCM from MP4.
    if codec.startswith("pcm_") and "mp4" in out.format.name.split(","):
        return False
    return codec in out.supported_codecs


class _AudioCopier:
    """Muxes the input's audio streams into the output, in step with the video."""

    def __init__(self, src: Path, out: av.container.OutputContainer) -> None:
        self._input = av.open(str(src), "r", metadata_errors="ignore")
        self._out = out
        self._map: dict[int, tuple[av.stream.Stream, bool]] = {}  # input index -> (output stream, copy?)
        for stream in self._input.streams.audio:
            codec = stream.codec_context.name
            if _can_copy(codec, out):
                self._map[stream.index] = (out.add_stream_from_template(stream), True)
            else:
                log.info("output %s cannot hold %s audio: transcoding to AAC", out.format.name, codec)
                layout = _AAC_LAYOUTS.get(stream.codec_context.channels, "stereo")
                # Decoders can report an "unspecified order" layout the resampler rejects; name it.
                if stream.codec_context.channels in _AAC_LAYOUTS:
                    stream.codec_context.layout = layout
                encoder = out.add_stream(FALLBACK_AUDIO_CODEC, rate=stream.codec_context.sample_rate, layout=layout)
                self._map[stream.index] = (encoder, False)
        streams = self._input.streams.audio
        self._packets = self._input.demux(*streams) if streams else iter(())
        self._held: av.Packet | None = None

    def mux_until(self, seconds: float | None) -> None:
        """Mux audio packets that start before `seconds` (all remaining when None)."""
        while True:
            packet = self._held or next(self._packets, None)
            self._held = None
            if packet is None:
                return
            if packet.size == 0:
                continue
            if seconds is not None and packet.pts is not None and packet.pts * packet.time_base > seconds:
                self._held = packet
                return
            self._mux(packet)

    def _mux(self, packet: av.Packet) -> None:
        out_stream, copy = self._map[packet.stream.index]
        if copy:
            packet.stream = out_stream
            self._out.mux(packet)
            return
        for frame in packet.decode():
            self._out.mux(out_stream.encode(frame))

    def close(self) -> None:
        self.mux_until(None)
        for out_stream, copy in self._map.values():
            if not copy:
                self._out.mux(out_stream.encode(None))
        self._input.close()


class _VideoWriter:
    """libx264 encoder + muxer for one output file; set up from the first frame."""

    def __init__(self, path: Path, src: Path, first: _Frame, rate: Fraction | None, time_base: Fraction, crf: int):
        height, width = first.original.shape[:2]
        try:
            self.out = av.open(str(path), "w")
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot write {path.suffix} files ({_reason(e)})") from None
        try:
            self.stream = self.out.add_stream(VIDEO_CODEC, rate=rate or Fraction(25))
        except ValueError:
            self.out.close()
            raise VideoError(f"the {path.suffix} format cannot hold H.264 video; use .mp4, .mov or .mkv") from None
        self.stream.width, self.stream.height = width, height
        # 4:2:0 needs even sizes; see the module docstring.
        self.stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = {"crf": str(crf), "preset": get_settings().x264_preset}
        for tag, value in first.colors.items():
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                setattr(self.stream.codec_context, tag, value)
        if first.matrix is not None:
            self.stream.set_display_matrix(first.matrix)
        self.audio = _AudioCopier(src, self.out)
        self.time_base = time_base
        self._last_pts: int | None = None

    def write(self, rgb: np.ndarray, pts: int | None, duration: int | None) -> None:
        step = duration or 1
        # Encoders need strictly increasing timestamps; only a broken input needs this repair.
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + step
        self._last_pts = pts
        if self.stream.pix_fmt == "yuv420p":
            # OpenCV's BT.601 limited-range conversion: what swscale does inside encode (within 2 levels
            # of chroma), at about a third of the CPU time.
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        else:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        if duration:
            frame.duration = duration
        self.audio.mux_until(float(pts * self.time_base))
        self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.out.mux(self.stream.encode(None))
        self.audio.close()
        self.out.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.audio._input.close()
        with contextlib.suppress(Exception):
            self.out.close()


# ---------------------------------------------------------------- stylize_video


def _temp_path(dst: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".partial{dst.suffix}", dir=dst.parent)
    os.close(fd)
    return Path(name)


class _Reporter:
    """Throttled progress callbacks and cancellation polling for the writing loop."""

    def __init__(self, total: int | None, progress, should_cancel) -> None:
        self.total, self._progress, self._should_cancel = total, progress, should_cancel
        self._start = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < REPORT_INTERVAL:
            return
        self._last = now
        if self._should_cancel is not None and not final and self._should_cancel():
            raise StylizeCancelled("stylization was cancelled")
        if self._progress is not None:
            elapsed = max(now - self._start, 1e-9)
            fps = done / elapsed
            eta = (self.total - done) / fps if self.total is not None and fps > 0 else None
            self._progress(Progress(done, self.total, fps, max(eta, 0.0) if eta is not None else None))


def stabilize_modes(mode: str) -> tuple[bool, bool]:
    """(norm smoothing?, flow blending?)"""
    return mode in ("norm", "both"), mode in ("flow", "both")


def stylize_video(
    src: Path,
    dst: Path,
    model: Stylizer,
    options: StylizeOptions,
    progress: Callable[[Progress], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    limits: VideoLimits | None = None,
) -> VideoInfo:
    """Stylize `src` into `dst` (container from dst's extension); returns the output's VideoInfo.

    The model runs on whatever device it is on (see inference.load_stylizer).
    limits: what the input may be at most (None: the settings), checked on every frame.
    Raises VideoError for bad input (VideoLimitError past a limit) and
    StylizeCancelled when cancelled; dst is then left untouched.
    """
    src, dst = Path(src), Path(dst)
    limits = limits or VideoLimits.from_settings()
    info = probe(src, limits=limits)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(dst)
    use_norm, use_flow = stabilize_modes(options.stabilize)
    previous_smoothing = model.norms()[0].smoothing if model.norms() else 0.0
    smoothing = options.norm_smoothing if options.norm_smoothing is not None else DEFAULT_NORM_SMOOTHING
    model.set_norm_smoothing(smoothing if use_norm else 0.0)
    try:
        report = _Reporter(info.frames, progress, should_cancel)
        _run_pipeline(src, tmp, info, model, options, use_flow, limits, report)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
        model.set_norm_smoothing(previous_smoothing)
    return probe(dst, limits=limits)


def _run_pipeline(
    src: Path,
    tmp: Path,
    info: VideoInfo,
    model: Stylizer,
    options: StylizeOptions,
    use_flow: bool,
    limits: VideoLimits,
    report: _Reporter,
) -> None:
    size = (info.width, info.height)
    net_size = network_size(*size, options.max_side, model)
    settings = get_settings()
    batch = batch_size_for(net_size, options.batch_size, settings.batch_pixels)
    # Each queued frame holds the full-size original too: the queues shrink with the larger of the two.
    depth = 2 * batch_size_for(max(size, net_size, key=lambda s: s[0] * s[1]), batch, settings.batch_pixels)
    stop = threading.Event()
    decode = _Stage("decode", lambda: _decode_frames(src, size, net_size, limits), depth, stop)
    stages = [decode]
    if use_flow:
        stages.append(_Stage("motion", lambda: _with_motion(decode), depth, stop))
    upstream = stages[-1]
    inference = _Stage("inference", lambda: _stylized(upstream, model, batch, settings.batch_pixels), depth, stop)
    stages.append(inference)
    stabilizer = FlowStabilizer() if use_flow else None
    with open_input(src) as container:
        stream = _video_stream(container, src)
        rate, time_base = frame_rate(stream), stream.time_base
    writer: _VideoWriter | None = None
    done = 0
    for stage in stages:
        stage.start()
    try:
        for f in stages[-1]:
            if writer is None:
                writer = _VideoWriter(tmp, src, f, rate, time_base, options.crf)
            out = stabilizer(f.stylized, f.motion) if stabilizer else f.stylized
            out = blend(resize(out, (info.width, info.height)), f.original, options.strength)
            writer.write(out, f.pts, f.duration)
            done += 1
            report(done)
        if writer is None:
            raise VideoError(f"{src.name}: no frame of the video can be decoded")
        writer.close()
        writer = None
        report(done, final=True)
    except av.error.FFmpegError as e:
        raise VideoError(f"{src.name}: stylization failed while writing ({_reason(e)})") from None
    finally:
        stop.set()
        if writer is not None:
            writer.abort()
        for stage in stages:
            stage.join()
