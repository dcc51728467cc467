"""Stylizing videos: decode, stylize and encode in overlapping threads.

    decode thread     PyAV demux + decode -> RGB frames (+ the network-sized copy)
    motion thread     DIS optical flow between consecutive inputs (only for flow stabilisation)
    inference thread  batches through the network
    calling thread    stabilise, scale back, blend, encode and mux (clipmorph.video.writer)

Stages are joined by bounded queues, so memory stays flat for any length. The input is
checked by clipmorph.video.probe first, and every decoded frame again against the same limits,
because a stream can grow mid-file. A frame whose size differs from the first is scaled to the
first frame's size (the output has one size), as ffmpeg does. Memory is bounded by design:
frames are batched up to settings.batch_pixels network pixels, a frame larger than that on its
own is stylized in tiles of settings.tile_pixels, and the queues hold a few batches.

The output keeps what the input had (see clipmorph.video.writer). It is written to a hidden
temporary file beside `dst` and renamed only when complete, so a failure or a cancellation
never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error
import numpy as np

from clipmorph.model.network import Stylizer
from clipmorph.settings import get_settings
from clipmorph.video.contrast import TemporalClahe
from clipmorph.video.inference import (
    DEFAULT_NORM_SMOOTHING,
    StylizeOptions,
    blend,
    network_size,
    resize,
    stylize_array,
    stylize_frames,
)
from clipmorph.video.probe import (
    VideoError,
    VideoInfo,
    VideoLimits,
    decoded_frames,
    display_matrix,
    frame_rate,
    named_errors,
    open_input,
    probe,
    reason,
    video_stream,
)
from clipmorph.video.segments import Segment
from clipmorph.video.stabilize import FlowStabilizer, Motion, MotionTracker
from clipmorph.video.writer import VideoWriter

# How often (seconds) progress is reported and cancellation polled.
REPORT_INTERVAL = 0.5


class StylizeCancelled(RuntimeError):
    """`should_cancel` returned True; no output was written."""


@dataclass
class Progress:
    done: int
    total: int | None
    fps: float
    eta_seconds: float | None


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
    warmup: bool = False  # a segment's warm-up frame: stabilised, then dropped before the encoder


_COLOR_TAGS = ("color_primaries", "color_trc", "colorspace")


def _check_frame(frame: av.VideoFrame, index: int, start: float | None, limits: VideoLimits) -> None:
    """Limits on one decoded frame, before it is converted: its size, its number, its time since the first."""
    limits.check_size(frame.width, frame.height)
    limits.check_frames(index + 1)
    if start is not None and frame.time is not None:
        limits.check_seconds(frame.time - start)


def _decode_frames(
    src: Path, size: tuple[int, int], net_size: tuple[int, int], limits: VideoLimits, segment: Segment | None = None
) -> Iterator[_Frame]:
    """Decoded frames at `size` (the first frame's), each checked against `limits` as it comes.

    segment: only its frames (by pts), after its warm-up frames (marked `warmup`), decoding from its keyframe.
    """
    with open_input(src) as container, named_errors(src):
        stream = video_stream(container, src)
        stream.thread_type = "AUTO"
        if segment is not None and segment.index > 0:
            container.seek(segment.seek_pts, stream=stream, backward=True, any_frame=False)
        start = None
        i = 0
        for frame in decoded_frames(container, stream, src):
            if segment is not None:
                # The decoder hands frames over in presentation order, so the first one past the end ends it.
                if frame.pts is None or frame.pts < segment.warm_pts:
                    continue
                if segment.end_pts is not None and frame.pts >= segment.end_pts:
                    break
            start = frame.time if start is None else start
            _check_frame(frame, i, start, limits)
            # A resolution change mid-stream: the output has one size, so later sizes are scaled to it.
            rgb = resize(frame.to_ndarray(format="rgb24"), size)
            item = _Frame(i, frame.pts, frame.duration, rgb, resize(rgb, net_size))
            item.warmup = segment is not None and frame.pts < segment.start_pts
            if i == 0:
                item.matrix = display_matrix(frame)
                item.colors = {k: getattr(frame, k) for k in _COLOR_TAGS}
            yield item
            i += 1


def _with_motion(frames: Iterable[_Frame]) -> Iterator[_Frame]:
    track = MotionTracker()
    for f in frames:
        f.motion = track(f.net_in)
        yield f


def batch_size_for(size: tuple[int, int], requested: int, batch_pixels: int) -> int:
    """Frames of `size` (w, h) per batch: at most `requested` and `batch_pixels` pixels together, at least 1."""
    return max(1, min(requested, batch_pixels // max(1, size[0] * size[1])))


# The network input as it is: stylize_array then only tiles (net_in already has the network's size and,
# when asked for, its contrast).
_AS_IS = StylizeOptions(max_side=0, contrast=0.0)


def _stylized(
    frames: Iterable[_Frame], model: Stylizer, batch_size: int, batch_pixels: int, contrast_limit: float = 0.0
) -> Iterator[_Frame]:
    # In frame order, so the contrast mapping is held steady from frame to frame (TemporalClahe).
    equalise = TemporalClahe(contrast_limit) if contrast_limit > 0 else None
    for batch in _batched(frames, batch_size):
        inputs = [equalise(f.net_in) if equalise else f.net_in for f in batch]
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
    segment: Segment | None = None,
) -> VideoInfo:
    """Stylize `src` into `dst` (container from dst's extension); returns the output's VideoInfo.

    The model runs on whatever device it is on (see inference.load_stylizer).
    limits: what the input may be at most (None: the settings), checked on every frame.
    segment: only that piece of the video (clipmorph.video.segments), video only (`stitch` adds the audio),
    its warm-up frames stylized and stabilised but not written; progress counts its frames.
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
        report = _Reporter(segment.frames if segment else info.frames, progress, should_cancel)
        _run_pipeline(src, tmp, info, model, options, use_flow, limits, report, segment)
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
    segment: Segment | None = None,
) -> None:
    size = (info.width, info.height)
    net_size = network_size(*size, options.max_side, model)
    settings = get_settings()
    batch = batch_size_for(net_size, options.batch_size, settings.batch_pixels)
    # Each queued frame holds the full-size original too: the queues shrink with the larger of the two.
    depth = 2 * batch_size_for(max(size, net_size, key=lambda s: s[0] * s[1]), batch, settings.batch_pixels)
    stop = threading.Event()
    decode = _Stage("decode", lambda: _decode_frames(src, size, net_size, limits, segment), depth, stop)
    stages = [decode]
    if use_flow:
        stages.append(_Stage("motion", lambda: _with_motion(decode), depth, stop))
    upstream = stages[-1]
    limit = options.contrast_for(video=True)
    inference = _Stage(
        "inference", lambda: _stylized(upstream, model, batch, settings.batch_pixels, limit), depth, stop
    )
    stages.append(inference)
    stabilizer = FlowStabilizer() if use_flow else None
    with open_input(src) as container:
        stream = video_stream(container, src)
        rate, time_base = frame_rate(stream), stream.time_base
    writer: VideoWriter | None = None
    done = 0
    for stage in stages:
        stage.start()
    try:
        for f in stages[-1]:
            if writer is None:
                writer = VideoWriter(
                    tmp, src, size, f.colors, f.matrix, rate, time_base, options.crf, audio=segment is None
                )
            out = stabilizer(f.stylized, f.motion) if stabilizer else f.stylized
            if f.warmup:
                continue  # it has warmed up the stabiliser (and the norm statistics, in the network)
            out = blend(resize(out, (info.width, info.height)), f.original, options.strength)
            writer.write(out, f.pts, f.duration)
            done += 1
            report(done)
        if writer is None:
            raise VideoError(f"{src.name}: no frame of the video can be decoded")
        if segment is not None and done != segment.frames:
            # The plan counted packets; frames that do not decode (or lack a pts) would shift the joins.
            raise VideoError(f"{src.name}: segment {segment.index} decoded {done} of its {segment.frames} frames")
        writer.close()
        writer = None
        report(done, final=True)
    except av.error.FFmpegError as e:
        raise VideoError(f"{src.name}: stylization failed while writing ({reason(e)})") from None
    finally:
        stop.set()
        if writer is not None:
            writer.abort()
        for stage in stages:
            stage.join()
