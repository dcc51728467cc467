"""Reading a video: is it one we can stylize, within the limits, and what is it (VideoInfo).

Inputs are held to the limits in settings (VideoLimits: frame side and pixels, frame count,
duration): `probe` checks what the container says and the first frame; the decode loop
(clipmorph.video.pipeline) checks every frame again with the same VideoLimits, because a stream
can grow mid-file. Every failure is a VideoError whose message starts with the file's name
(`public_message` drops it for clients).
"""

from __future__ import annotations

import contextlib
import dataclasses
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import av.error
from av.sidedata.sidedata import Type as SideDataType

from clipmorph.settings import Settings, get_settings


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


@contextlib.contextmanager
def open_input(path: Path) -> Iterator[av.container.InputContainer]:
    """av.open for reading, with every failure turned into a VideoError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path.name}: no such file")
    try:
        container = av.open(str(path), "r", metadata_errors="ignore")
    except av.error.FFmpegError as e:
        raise VideoError(f"{path.name}: not a readable video ({reason(e)})") from None
    try:
        yield container
    finally:
        container.close()


def reason(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{Path(path).name}: the file has no video stream")
    return container.streams.video[0]


@contextlib.contextmanager
def named_errors(path: Path) -> Iterator[None]:
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
        raise VideoError(f"{Path(path).name}: the file is truncated or corrupt ({reason(e)})") from None
    span = (end - first) * stream.time_base if first is not None and stream.time_base else None
    return count, span


def decoded_frames(container: av.container.InputContainer, stream, path: Path) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.error.FFmpegError as e:
        raise VideoError(f"{Path(path).name}: the video cannot be decoded ({reason(e)})") from None


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
    with open_input(path) as container, named_errors(path):
        stream = video_stream(container, path)
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
        first = next(decoded_frames(container, video_stream(container, path), path), None)
    if first is None:
        raise VideoError(f"{path.name}: no frame of the video can be decoded")
    duration = float(span) if span else container_duration
    with named_errors(path):
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
