"""Long videos in segments (clipmorph.video.segments): the cuts, the stitched output against the
unsegmented one on a clip with B-frames, a variable frame rate, rotation and audio, and the
stabilisation across a cut."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

from clipmorph.evaluation.quality import pair_flows
from clipmorph.model.network import build
from clipmorph.video.flow import masked_warp_mse
from clipmorph.video.inference import StylizeOptions
from clipmorph.video.pipeline import stylize_video
from clipmorph.video.probe import VideoError, probe
from clipmorph.video.segments import Segment, part_name, plan_segments, stitch

# Frame durations (ms) of the variable-rate clip: runs of 40, 20 and 60 ms, so that cuts fall between
# frames of different lengths (where joining the pieces' own dts would go backwards).
DURATIONS = [40] * 14 + [20] * 10 + [60] * 8 + [40] * 12 + [20] * 6 + [40] * 10
GOP = 8  # a keyframe every 8 frames, so a 1-second segment has keyframes to be cut at


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("fast").eval()


def make_vfr_clip(path: Path, durations: list[int] = DURATIONS, size: tuple[int, int] = (96, 64)) -> Path:
    """H.264 with B-frames (x264 `veryfast`, 3 B-frames), pts in ms with uneven steps, 90° rotation,
    a 440 Hz AAC tone; the picture is noise sliding one pixel a frame (flow has something to follow)."""
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w + len(durations), 3), dtype=np.uint8)
    base = np.ascontiguousarray(np.repeat(np.repeat(base[::4, ::4], 4, 0), 4, 1)[:h])  # 4-px blocks
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.time_base = video.codec_context.time_base = tb
        video.options = {"preset": "veryfast", "bframes": "3", "g": str(GOP), "keyint_min": str(GOP)}
        video.set_display_rotation(90)
        sound = out.add_stream("aac", rate=16000)
        pts = 0
        for i, d in enumerate(durations):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i : i + w]), format="rgb24")
            frame.pts, frame.time_base = pts, tb
            pts += d
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(16 * pts) / 16000
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
            out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


def video_packets(path: Path) -> list[tuple[int, int, bool, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts, p.dts, p.is_keyframe, bytes(p)) for p in c.demux(video=0) if p.size]


def frames_of(path: Path) -> list[tuple[Fraction, np.ndarray]]:
    with av.open(str(path)) as c:
        return [(f.pts * f.time_base, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def audio_packets(path: Path) -> list[tuple[Fraction, bytes]]:
    with av.open(str(path)) as c:
        return [(p.pts * p.time_base, bytes(p)) for p in c.demux(audio=0) if p.size]


def rotation(path: Path) -> int:
    with av.open(str(path)) as c:
        return round(next(c.decode(video=0)).rotation) % 360


def stylize_in_segments(
    src: Path, out: Path, model, options: StylizeOptions, seconds: float, warmup: int
) -> list[Segment]:
    segments = plan_segments(src, seconds, warmup)
    parts = []
    for segment in segments:
        parts.append(out.parent / part_name(segment.index))
        stylize_video(src, parts[-1], model, options, segment=segment)
    stitch(parts, src, out)
    return segments


@pytest.fixture(scope="module")
def vfr(tmp_path_factory) -> Path:
    return make_vfr_clip(tmp_path_factory.mktemp("seg") / "vfr.mp4")


def test_the_source_clip_has_what_the_test_is_about(vfr):
    packets = video_packets(vfr)
    assert any(pts != dts for pts, dts, _, _ in packets), "no B-frames: pts never differ from dts"
    times = [t for t, _ in frames_of(vfr)]
    assert len({b - a for a, b in itertools.pairwise(times)}) == 3  # 20, 40 and 60 ms
    assert rotation(vfr) == 90 and audio_packets(vfr)


def test_cuts_fall_on_keyframes_and_cover_every_frame_once(vfr):
    keyframes = {pts for pts, _, key, _ in video_packets(vfr) if key}
    segments = plan_segments(vfr, 0.5, 4)
    assert len(segments) >= 3
    assert all(s.start_pts in keyframes and s.seek_pts in keyframes for s in segments)
    assert segments[0].start_pts == 0 and segments[-1].end_pts is None
    assert all(a.end_pts == b.start_pts for a, b in itertools.pairwise(segments))
    assert sum(s.frames for s in segments) == len(DURATIONS)
    # Four warm-up frames before every cut, none before the first frame.
    pts = sorted(p for p, *_ in video_packets(vfr))
    assert segments[0].warm_pts == 0
    assert all(pts.index(s.start_pts) - pts.index(s.warm_pts) == 4 for s in segments[1:])
    assert all(s.seek_pts <= s.warm_pts for s in segments)


def test_short_videos_and_zero_are_not_split(vfr):
    assert plan_segments(vfr, 60.0, 4) == []  # longer than the clip
    assert plan_segments(vfr, 0, 4) == []  # off


def test_stitched_output_keeps_what_the_unsegmented_output_keeps(vfr, model, tmp_path, settings):
    options = StylizeOptions(max_side=64, stabilize="flow")
    whole = tmp_path / "whole.mp4"
    stylize_video(vfr, whole, model, options)
    joined = tmp_path / "joined" / "out.mp4"
    joined.parent.mkdir()
    segments = stylize_in_segments(vfr, joined, model, options, 0.5, 4)
    assert len(segments) >= 3

    # Frame count, every timestamp (the variable rate), size, rotation: as the unsegmented output, as the input.
    source_times = [t for t, _ in frames_of(vfr)]
    assert [t for t, _ in frames_of(joined)] == [t for t, _ in frames_of(whole)] == source_times
    info, reference = probe(joined), probe(whole)
    assert (info.width, info.height, info.rotation, info.frames) == (96, 64, 90, len(DURATIONS))
    assert (info.width, info.height, info.rotation, info.frames) == (
        reference.width,
        reference.height,
        reference.rotation,
        reference.frames,
    )
    # Audio: the input's AAC packets, copied as the unsegmented path copies them.
    assert audio_packets(joined) == audio_packets(whole) == audio_packets(vfr)
    # A remux: the video packets are the pieces' packets, byte for byte, in order (nothing re-encoded).
    pieces = [p for s in segments for p in video_packets(joined.parent / part_name(s.index))]
    stitched = video_packets(joined)
    assert [(pts, key, data) for pts, _, key, data in stitched] == [(pts, key, data) for pts, _, key, data in pieces]
    dts = [d for _, d, _, _ in stitched]
    assert all(b > a for a, b in itertools.pairwise(dts))
    assert all(d <= p for p, d, _, _ in stitched)


def test_pieces_that_overlap_are_refused(vfr, model, tmp_path, settings):
    options = StylizeOptions(max_side=64, stabilize="none")
    segment = plan_segments(vfr, 0.5, 0)[0]
    folder = tmp_path / "pieces"
    folder.mkdir()
    part = folder / "a.mp4"
    stylize_video(vfr, part, model, options, segment=segment)
    with pytest.raises(VideoError, match="overlap"):
        stitch([part, part], vfr, folder / "out.mp4")
    assert sorted(p.name for p in folder.iterdir()) == ["a.mp4"]  # no partial output left


def pair_errors(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> list[float]:
    """Warping error of each consecutive pair of outputs (quality.py's flow and masked MSE)."""
    flows = pair_flows(inputs)
    out = [o.astype(np.float32) / 255 for o in outputs]
    return [masked_warp_mse(a, b, f.forward, f.visible) for a, b, f in zip(out[:-1], out[1:], flows, strict=True)]


def test_stabilisation_is_continuous_across_cuts(assets, model, tmp_path, settings):
    """Warping error of the pairs that straddle a cut: with the default 16 warm-up frames, about what the
    unsegmented output has on the same pairs and within what the other pairs have; without warm-up
    frames the same cuts stand out (so the check can fail).

    Encoded near-lossless (crf 4), so that what is measured is the stabilisation: at the default crf 18
    the keyframe every piece must start with adds ~25% on these pairs by itself (measured, 2 cuts).
    """
    src = tmp_path / "bikes.mp4"
    with av.open(str(assets / "videos" / "bikes.mp4")) as inp, av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 68, "yuv420p"
        stream.options = {"preset": "veryfast", "g": "10", "keyint_min": "10"}
        for i, frame in enumerate(inp.decode(video=0)):
            if i == 60:
                break
            small = frame.reformat(160, 68, "yuv420p")
            small.pts, small.time_base = i, Fraction(1, 25)
            out.mux(stream.encode(small))
        out.mux(stream.encode(None))
    options = StylizeOptions(max_side=160, stabilize="flow", crf=4)
    inputs = [f for _, f in frames_of(src)]
    whole = tmp_path / "whole.mp4"
    stylize_video(src, whole, model, options)
    reference = pair_errors(inputs, [f for _, f in frames_of(whole)])
    pts = sorted(p for p, *_ in video_packets(src))
    for warmup in (0, settings.segment_warmup_frames):
        folder = tmp_path / f"warm{warmup}"
        folder.mkdir()
        segments = stylize_in_segments(src, folder / "out.mp4", model, options, 0.6, warmup)
        starts = [pts.index(s.start_pts) for s in segments[1:]]
        assert len(starts) >= 2
        errors = pair_errors(inputs, [f for _, f in frames_of(folder / "out.mp4")])
        across = [errors[i - 1] for i in starts]  # pair (i-1, i): frame i is a segment's first
        same_pairs = [reference[i - 1] for i in starts]
        elsewhere = [e for i, e in enumerate(errors, 1) if i not in starts and i > 16]  # past the first warm-up
        if warmup:
            assert all(a <= 1.2 * b for a, b in zip(across, same_pairs, strict=True)), (across, same_pairs)
            assert max(across) <= max(elsewhere), (across, elsewhere)
        else:
            assert all(a > 3 * b for a, b in zip(across, same_pairs, strict=True)), (across, same_pairs)
