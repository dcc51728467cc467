"""Long videos in segments: where to cut them, and how to join the stylized pieces without re-encoding.

A video longer than settings.segment_seconds is cut at keyframes of the input into segments of
about that length (`plan_segments`). Each segment is stylized on its own (clipmorph.video.pipeline
with `segment=`, by any worker), video only, with the input's own timestamps; `stitch` then joins
the pieces by remuxing their packets (no decode, no re-encode) and adds the input's audio, as the
unsegmented path does.

Why cut at keyframes: a segment's decoding starts by seeking to a keyframe, so the frames each
segment decodes and throws away are few. Why warm-up frames: the flow stabiliser and the
instance-norm smoothing carry state from frame to frame, and a segment that started cold would
show a jump at its first frame. Each segment therefore decodes and stylizes `warmup` frames before
its first (through the stabiliser, as usual) and drops them before the encoder.

Why `stitch` rewrites the decoding timestamps (dts): each piece's encoder starts its dts a few
frames before its first pts (B-frame reordering), so two pieces joined as they are can go back in
dts at the join, which muxers refuse (and with a variable frame rate the overlap is not even a
whole frame). The presentation timestamps (pts) are kept, and every dts is set the way x264 sets
it: the pts of the frame `delay` places earlier in presentation order, `delay` being the largest
reordering any piece has. That keeps dts strictly increasing and never after its pts.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from clipmorph.video.probe import VideoError, open_input, reason, video_stream
from clipmorph.video.writer import AudioCopier


@dataclass(frozen=True)
class Segment:
    """One piece of a video, in the input video stream's timestamps (its time_base)."""

    index: int
    start_pts: int  # its first frame (a keyframe of the input)
    end_pts: int | None  # the next segment's first frame; None for the last segment
    warm_pts: int  # the first warm-up frame: stylized, then dropped (== start_pts when there is none)
    seek_pts: int  # the keyframe at or before warm_pts where decoding starts
    frames: int  # frames the segment writes

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Segment:
        return cls(**data)


def plan_segments(path: Path, seconds: float, warmup: int) -> list[Segment]:
    """Segments of about `seconds` each, cut at keyframes; [] when the video should not be split.

    Not split: `seconds` <= 0, a video not longer than `seconds`, packets without timestamps (the
    cuts are found by pts), or no keyframe to cut at. The last segment is never shorter than half
    of `seconds` (its would-be cut is skipped). Reads packets only (no decoding).
    """
    if seconds <= 0:
        return []
    path = Path(path)
    with open_input(path) as container:
        stream = video_stream(container, path)
        time_base = stream.time_base
        packets = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    return []
                packets.append((packet.pts, packet.is_keyframe))
        except av.error.FFmpegError:
            return []  # the probe already vetted the file; the worker's decode reports the problem
    if not packets or time_base is None:
        return []
    pts = sorted(p for p, _ in packets)
    if len(set(pts)) != len(pts):
        return []  # duplicate timestamps: frames could not be assigned to segments by pts
    keys = sorted(p for p, key in packets if key)
    span = Fraction(seconds).limit_denominator(1000) / time_base
    end = pts[-1]
    if end - pts[0] <= span:
        return []
    starts = [pts[0]]
    for key in keys:
        if key - starts[-1] >= span and end - key >= span / 2:
            starts.append(key)
    if len(starts) < 2:
        return []
    rank = {p: i for i, p in enumerate(pts)}
    segments = []
    for index, start in enumerate(starts):
        stop = starts[index + 1] if index + 1 < len(starts) else None
        first = rank[start]
        warm = pts[max(0, first - warmup)]
        seek = max((k for k in keys if k <= warm), default=pts[0])
        frames = (rank[stop] if stop is not None else len(pts)) - first
        segments.append(Segment(index, start, stop, warm, seek, frames))
    return segments


def part_name(index: int) -> str:
    """The file name of segment `index`'s stylized piece."""
    return f"part-{index:04d}.mp4"


def _decode_delay(order: list[int]) -> int:
    """How many places at most a packet comes before its frame's place in presentation order."""
    rank = {p: i for i, p in enumerate(sorted(order))}
    return max(0, *(i - rank[p] for i, p in enumerate(order)))


def _scan(parts: list[Path]) -> tuple[Fraction, list[int]]:
    """(the pieces' video time_base, the pts of every video packet in decoding order, piece after piece)."""
    order: list[int] = []
    ends: list[int] = []  # where each piece's packets end in `order`
    time_base: Fraction | None = None
    extradata: bytes | None = None
    for part in parts:
        with open_input(part) as container:
            stream = video_stream(container, part)
            if time_base is None:
                time_base, extradata = stream.time_base, stream.codec_context.extradata
            # Pieces come from one encoder configuration; another one could not share the output's header.
            if stream.time_base != time_base or stream.codec_context.extradata != extradata:
                raise VideoError(f"{part.name}: the piece was encoded differently from the first one")
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    raise VideoError(f"{part.name}: a video packet has no timestamp")
                order.append(packet.pts)
        ends.append(len(order))
    if time_base is None or not order:
        raise VideoError("nothing to stitch")
    # Each piece must end before the next begins (and hold no pts twice): the joined stream is then in order.
    pieces = [order[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True) if b > a]
    if any(max(a) >= min(b) for a, b in itertools.pairwise(pieces)) or len(set(order)) != len(order):
        raise VideoError("the pieces overlap in time")
    return time_base, order


@contextlib.contextmanager
def _closing_audio(src: Path, out: av.container.OutputContainer) -> Iterator[AudioCopier]:
    """The input's audio for `out`; its input file is closed however the stitch ends."""
    audio = AudioCopier(src, out)
    try:
        yield audio
    except BaseException:
        with contextlib.suppress(Exception):
            audio._input.close()  # close() would mux the rest first: not into a failed output
        raise


def stitch(parts: list[Path], src: Path, dst: Path) -> None:
    """Join the stylized pieces (in order) into `dst` with `src`'s audio, by remuxing: no re-encode.

    `dst` is written to a hidden temporary file beside it and renamed when complete.
    Raises VideoError when the pieces cannot be joined (different encodings, overlapping timestamps).
    """
    parts, src, dst = [Path(p) for p in parts], Path(src), Path(dst)
    time_base, order = _scan(parts)
    delay = _decode_delay(order)
    ranked = sorted(order)
    lead = ranked[min(delay, len(ranked) - 1)] - ranked[0]
    fd, name = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".partial{dst.suffix}", dir=dst.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with contextlib.ExitStack() as stack, av.open(str(tmp), "w") as out, open_input(parts[0]) as first:
            template = video_stream(first, parts[0])
            video = out.add_stream_from_template(template)
            video.time_base = time_base
            audio = stack.enter_context(_closing_audio(src, out))
            i = 0
            for part in parts:
                with open_input(part) as container:
                    stream = video_stream(container, part)
                    for packet in container.demux(stream):
                        if packet.size == 0:
                            continue
                        # x264's own rule (see the module docstring): the pts `delay` frames back.
                        packet.dts = ranked[i - delay] if i >= delay else ranked[i] - lead
                        audio.mux_until(float(packet.dts * time_base))
                        packet.stream = video
                        out.mux(packet)
                        i += 1
            audio.close()
        os.replace(tmp, dst)
    except av.error.FFmpegError as e:
        raise VideoError(f"{dst.name}: the pieces could not be joined ({reason(e)})") from None
    finally:
        tmp.unlink(missing_ok=True)
