"""The video engine on real PyAV encodes: sample clips and synthetic ones made here."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from serving_helpers import make_resizing_clip
from typer.testing import CliRunner

import clipmorph.video.pipeline as video_module
from clipmorph.cli import app
from clipmorph.model.artifact import ModelInfo, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.video.contrast import TemporalClahe
from clipmorph.video.flow import warping_error
from clipmorph.video.inference import StylizeOptions
from clipmorph.video.pipeline import Progress, StylizeCancelled, batch_size_for, stylize_video
from clipmorph.video.probe import VideoError, VideoLimitError, VideoLimits, probe

FAST = {"max_side": 96, "stabilize": "none", "batch_size": 4}


@pytest.fixture
def video_settings(settings, monkeypatch):
    """Isolated settings with the fastest x264 preset (these tests check structure, not compression)."""
    from clipmorph.settings import get_settings

    monkeypatch.setenv("CLIPMORPH_X264_PRESET", "ultrafast")
    get_settings.cache_clear()
    return get_settings()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("fast").eval()


def make_clip(
    path: Path,
    size: tuple[int, int] = (64, 48),
    pts: list[int] | None = None,
    time_base: Fraction = Fraction(1, 25),
    rotation: int | None = None,
    audio: str | None = None,
    pix_fmt: str = "yuv420p",
) -> Path:
    """A clip of moving noise; `audio` is an audio codec name for a 440 Hz tone."""
    pts = list(range(10)) if pts is None else pts
    w, h = size
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w + len(pts), 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = w, h, pix_fmt
        video.time_base = video.codec_context.time_base = time_base
        if rotation is not None:
            video.set_display_rotation(rotation)
        sound = out.add_stream(audio, rate=16000) if audio else None
        for i, p in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(base[:, i : i + w]), format="rgb24")
            frame.pts, frame.time_base = p, time_base
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            seconds = float((pts[-1] + 1) * time_base)
            t = np.arange(int(16000 * seconds)) / 16000
            samples = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, 0
            out.mux(sound.encode(frame))
            out.mux(sound.encode(None))
    return path


def cut_clip(src: Path, dst: Path, seconds: float) -> Path:
    """Copy (no re-encoding) every packet of every stream that starts before `seconds`."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in ("video", "audio")}
        for packet in inp.demux(*[inp.streams[i] for i in streams]):
            if packet.size and packet.pts is not None and packet.pts * packet.time_base < seconds:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    return dst


def frame_times(path: Path) -> list[Fraction]:
    with av.open(str(path)) as c:
        return [f.pts * f.time_base for f in c.decode(video=0)]


def audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return []
        return [bytes(p) for p in c.demux(audio=0) if p.size]


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as c:
        return next(c.decode(video=0))


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_audio_clip_keeps_frames_timestamps_size_and_audio_bits(video_settings, model, assets, tmp_path):
    src = cut_clip(assets / "videos" / "bigbuckbunny.mp4", tmp_path / "bbb.mp4", 0.6)
    seen: list[Progress] = []
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST), progress=seen.append)
    assert (info.width, info.height) == (1280, 720)  # stylized at 96 px, scaled back
    assert frame_times(tmp_path / "out.mp4") == frame_times(src)
    assert info.frames == len(frame_times(src)) == 15
    assert info.has_audio
    assert audio_packets(tmp_path / "out.mp4") == audio_packets(src)
    assert seen[-1].done == seen[-1].total == 15


def test_ntsc_rate_stays_29_97(video_settings, model, assets, tmp_path):
    src = assets / "videos" / "carphone_distorted.mp4"
    assert probe(src).fps == pytest.approx(30000 / 1001)
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert info.fps == pytest.approx(29.97, abs=0.01)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].average_rate == Fraction(30000, 1001)
    assert frame_times(tmp_path / "out.mp4") == frame_times(src)
    assert not info.has_audio


def test_avi_with_lying_duration(video_settings, model, assets, tmp_path):
    src = assets / "videos" / "tree.avi"
    info = probe(src)
    assert info.frames == 68 and info.codec == "cinepak"
    out = stylize_video(src, tmp_path / "tree.mp4", model, StylizeOptions(**FAST))
    assert out.frames == 68
    assert frame_times(tmp_path / "tree.mp4") == frame_times(src)


def test_variable_frame_rate_is_kept(video_settings, model, tmp_path):
    pts = [0, 40, 80, 200, 210, 220, 500, 540, 541, 900]
    src = make_clip(tmp_path / "vfr.mp4", pts=pts, time_base=Fraction(1, 1000))
    stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert frame_times(tmp_path / "out.mp4") == [Fraction(p, 1000) for p in pts]


def track_header_size(path: Path) -> tuple[int, int]:
    """Width and height in the first mp4 track header (tkhd), the display size players start from."""
    data = path.read_bytes()
    box = data.index(b"tkhd") + 4  # version, flags, then times and ids: 20 bytes (version 0) or 32 (1)
    end = box + 4 + (32 if data[box] == 1 else 20) + 52  # reserved, layer, group, volume, matrix
    return int.from_bytes(data[end : end + 4]) >> 16, int.from_bytes(data[end + 4 : end + 8]) >> 16


@pytest.mark.parametrize(("size", "padded"), [((321, 241), (322, 242)), ((96, 47), (96, 48)), ((855, 481), (856, 482))])
def test_odd_size_is_padded_by_one_edge_pixel_in_yuv420p(video_settings, model, tmp_path, size, padded):
    """H.264 cannot crop 4:2:0 by one pixel (writer.py), so the size every header and decoder sees is the padded one."""
    pts = [0, 40, 80, 200, 210]  # variable frame rate
    src = make_clip(
        tmp_path / "odd.mp4",
        size=size,
        pts=pts,
        time_base=Fraction(1, 1000),
        rotation=90,
        audio="aac",
        pix_fmt="yuv444p",
    )
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert (info.width, info.height) == padded  # probed
    assert info.rotation == 90
    frame = first_frame(tmp_path / "out.mp4")
    assert (frame.width, frame.height, frame.format.name) == (*padded, "yuv420p")  # decoded
    assert track_header_size(tmp_path / "out.mp4") == padded
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].sample_aspect_ratio in (None, Fraction(1))  # no display-size stretch
    assert frame_times(tmp_path / "out.mp4") == frame_times(src) == [Fraction(p, 1000) for p in pts]
    assert audio_packets(tmp_path / "out.mp4") == audio_packets(src)
    # The added column/row repeats the picture's last one (up to coding loss), not black or a stretch.
    rgb = frame.to_ndarray(format="rgb24").astype(int)
    w, h = size
    if padded[0] > w:
        edge, inner = np.abs(rgb[:, w] - rgb[:, w - 1]).mean(), np.abs(rgb[:, w - 1] - rgb[:, w - 2]).mean()
        assert edge < inner / 4, (edge, inner)
    if padded[1] > h:
        edge, inner = np.abs(rgb[h] - rgb[h - 1]).mean(), np.abs(rgb[h - 1] - rgb[h - 2]).mean()
        assert edge < inner / 4, (edge, inner)


@pytest.mark.parametrize("size", [(321, 241), (855, 481)])
def test_odd_size_is_kept_exactly_in_yuv444p_when_asked(video_settings, model, tmp_path, monkeypatch, size):
    from clipmorph.settings import get_settings

    monkeypatch.setenv("CLIPMORPH_ODD_VIDEO_SIZE", "exact")
    get_settings.cache_clear()
    src = make_clip(tmp_path / "odd.mp4", size=size, pts=list(range(3)), pix_fmt="yuv444p")
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert (info.width, info.height) == size
    frame = first_frame(tmp_path / "out.mp4")
    assert (frame.width, frame.height, frame.format.name) == (*size, "yuv444p")
    assert track_header_size(tmp_path / "out.mp4") == size
    assert frame_times(tmp_path / "out.mp4") == frame_times(src)


def test_rotation_metadata_is_kept(video_settings, model, tmp_path):
    src = make_clip(tmp_path / "rot.mp4", rotation=90)
    assert probe(src).rotation == 90
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert info.rotation == 90
    assert first_frame(tmp_path / "out.mp4").rotation == 90
    assert (info.width, info.height) == (64, 48)  # stored size; the player rotates


def test_no_audio_in_no_audio_out(video_settings, model, tmp_path):
    src = make_clip(tmp_path / "silent.mp4")
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert not info.has_audio
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert len(c.streams.audio) == 0


def test_audio_the_container_cannot_hold_is_transcoded_to_aac(video_settings, model, tmp_path):
    src = make_clip(tmp_path / "pcm.mkv", audio="pcm_s16le")
    stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        assert sum(1 for p in c.demux(audio=0) if p.size) > 0


def test_strength_zero_reproduces_the_input(video_settings, model, assets, tmp_path):
    src = assets / "videos" / "carphone_pristine.mp4"
    src = cut_clip(src, tmp_path / "car.mp4", 0.3)
    stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(strength=0.0, stabilize="none"))
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        for fa, fb in zip(a.decode(video=0), b.decode(video=0), strict=True):
            diff = fa.to_ndarray(format="rgb24").astype(float) - fb.to_ndarray(format="rgb24")
            assert 10 * np.log10(255**2 / np.mean(diff**2)) > 30  # PSNR: only the re-encode differs


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("text.mp4", b"this is not a video\n" * 50),
        ("empty.mp4", b""),
    ],
)
def test_not_a_video_is_a_clear_error_and_no_output(video_settings, model, tmp_path, name, content):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(VideoError, match="not a readable video"):
        stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert leftovers(tmp_path, {name, "var", "runs"}) == []


def test_truncated_files_are_rejected_without_output(video_settings, model, assets, tmp_path):
    whole = (assets / "videos" / "tree.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(whole[: len(whole) // 2])
    faststart = tmp_path / "fs.mp4"
    with av.open(str(faststart), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    data = faststart.read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "nomoov.mp4").write_bytes((assets / "videos" / "bikes.mp4").read_bytes()[:200_000])
    for name in ("cut.avi", "cut.mp4", "nomoov.mp4"):
        with pytest.raises(VideoError, match=r"truncated or corrupt|not a readable video"):
            stylize_video(tmp_path / name, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert not (tmp_path / "out.mp4").exists()
    assert [p for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_audio_only_and_frameless_files_are_rejected(video_settings, model, tmp_path):
    with av.open(str(tmp_path / "sound.m4a"), "w") as out:
        sound = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 16000), np.int16), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    with pytest.raises(VideoError, match="no video stream"):
        probe(tmp_path / "sound.m4a")
    with av.open(str(tmp_path / "frameless.mp4"), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    with pytest.raises(VideoError):
        stylize_video(tmp_path / "frameless.mp4", tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert not (tmp_path / "out.mp4").exists()


def test_too_large_is_rejected(video_settings, model, tmp_path, monkeypatch):
    src = make_clip(tmp_path / "big.mp4", size=(64, 48))
    with pytest.raises(VideoError, match="larger than the limit"):
        probe(src, max_side=32)
    monkeypatch.setenv("CLIPMORPH_MAX_VIDEO_SIDE", "60")
    from clipmorph.settings import get_settings

    get_settings.cache_clear()
    with pytest.raises(VideoError, match="larger than the limit"):
        stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST))
    assert not (tmp_path / "out.mp4").exists()


def test_cancel_leaves_no_output(video_settings, model, assets, tmp_path):
    src = assets / "videos" / "carphone_distorted.mp4"
    with pytest.raises(StylizeCancelled):
        stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST), should_cancel=lambda: True)
    assert not (tmp_path / "out.mp4").exists()
    assert [p for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_stabilization_lowers_the_warping_error(video_settings, model, assets, tmp_path):
    src = cut_clip(assets / "videos" / "carphone_pristine.mp4", tmp_path / "car.mp4", 0.4)
    with av.open(str(src)) as c:
        inputs = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    errors = {}
    for mode in ("none", "flow", "both"):
        stylize_video(src, tmp_path / f"{mode}.mp4", model, StylizeOptions(stabilize=mode))
        with av.open(str(tmp_path / f"{mode}.mp4")) as c:
            outputs = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        errors[mode] = warping_error([i / 255 for i in inputs], [o / 255 for o in outputs])
    assert errors["flow"] < errors["none"]
    assert errors["both"] < errors["none"]


def test_cli_stylizes_a_video_and_fails_cleanly(video_settings, model, assets, tmp_path):
    save_model(model, ModelInfo(net=PRESETS["fast"]), tmp_path / "model")
    runner = CliRunner()
    src = assets / "videos" / "carphone_distorted.mp4"
    args = ["--model", str(tmp_path / "model"), "--max-side", "96", "--stabilize", "norm"]
    result = runner.invoke(app, ["stylize", str(src), str(tmp_path / "out.mp4"), *args])
    assert result.exit_code == 0, result.output
    assert probe(tmp_path / "out.mp4").frames == 120
    (tmp_path / "bad.mp4").write_text("not a video")
    result = runner.invoke(app, ["stylize", str(tmp_path / "bad.mp4"), str(tmp_path / "bad-out.mp4"), *args])
    assert result.exit_code != 0
    assert "not a readable video" in result.output
    assert not (tmp_path / "bad-out.mp4").exists()


# ---------------------------------------------------------------- limits (issue #15)

LIMITS = VideoLimits(max_side=3840, max_pixels=3840 * 2160, max_frames=72_000, max_seconds=1200.0)


def test_probe_refuses_frames_frame_counts_and_durations_over_the_limits(video_settings, tmp_path):
    src = make_clip(tmp_path / "clip.mp4", size=(64, 48), pts=list(range(50)))  # 2 s at 25 fps
    assert probe(src, limits=LIMITS).frames == 50
    cases = {
        "larger than the limit of 60 pixels a side": replace(LIMITS, max_side=60),
        "more pixels than the limit of 3071 per frame": replace(LIMITS, max_pixels=64 * 48 - 1),
        "more frames than the limit of 49": replace(LIMITS, max_frames=49),
        "longer than the limit of 1.5 seconds": replace(LIMITS, max_seconds=1.5),
    }
    for words, limits in cases.items():
        with pytest.raises(VideoLimitError, match=words):
            probe(src, limits=limits)


def test_a_4096_square_video_is_refused_by_the_default_limits(video_settings, tmp_path):
    src = tmp_path / "huge.mp4"
    with av.open(str(src), "w") as out:  # two flat frames: a few KB, quick to encode
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 4096, 4096, "yuv420p"
        stream.options = {"preset": "ultrafast"}
        for i in range(2):
            frame = av.VideoFrame.from_ndarray(np.full((4096, 4096, 3), i * 90, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(VideoLimitError, match="4096x4096 frames are larger than the limit of 3840"):
        probe(src)


def test_resolution_change_mid_stream_is_scaled_to_the_first_size(video_settings, model, tmp_path):
    """The probe sees 64x48; the last frames are 96x72. strength < 1 blends at the input size (was a cv2.error)."""
    src = make_resizing_clip(tmp_path / "resize.ts", [((64, 48), 50), ((96, 72), 5)])
    assert (probe(src).width, probe(src).height) == (64, 48)
    info = stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST, strength=0.5))
    assert (info.width, info.height, info.frames) == (64, 48, 55)
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert {(f.width, f.height) for f in c.decode(video=0)} == {(64, 48)}


def test_a_frame_over_the_limit_mid_stream_fails_in_the_decode_loop(video_settings, model, tmp_path):
    src = make_resizing_clip(tmp_path / "grows.ts", [((64, 48), 50), ((96, 72), 5)])
    limits = replace(LIMITS, max_pixels=64 * 48)
    assert probe(src, limits=limits).frames == 55  # the probe cannot tell
    with pytest.raises(VideoLimitError, match="96x72 frames have more pixels than the limit of 3072"):
        stylize_video(src, tmp_path / "out.mp4", model, StylizeOptions(**FAST), limits=limits)
    assert leftovers(tmp_path, {"grows.ts", "var", "runs"}) == []  # no output, no .partial


def test_frame_count_and_duration_are_checked_while_decoding(video_settings, tmp_path):
    """Packets can undercount frames (and lie about time): the decode loop counts what it decodes."""
    src = make_clip(tmp_path / "clip.mp4", size=(16, 16), pts=list(range(30)))
    decode = video_module._decode_frames
    assert len(list(decode(src, (16, 16), (16, 16), LIMITS))) == 30
    with pytest.raises(VideoLimitError, match="more frames than the limit of 29"):
        list(decode(src, (16, 16), (16, 16), replace(LIMITS, max_frames=29)))
    with pytest.raises(VideoLimitError, match="longer than the limit of 1 seconds"):
        list(decode(src, (16, 16), (16, 16), replace(LIMITS, max_seconds=1.0)))


def test_batch_size_shrinks_with_frame_area():
    budget = 4 * 1280 * 720  # the default
    assert batch_size_for((1280, 720), 4, budget) == 4
    assert batch_size_for((1920, 1080), 4, budget) == 1
    assert batch_size_for((3840, 2160), 4, budget) == 1  # never 0
    assert batch_size_for((16, 16), 4, 10**9) == 4  # never above what was asked


def test_batches_stay_within_the_pixel_budget_and_big_frames_are_tiled(video_settings, model, tmp_path, monkeypatch):
    from clipmorph.settings import get_settings

    batches: list[tuple] = []
    tiled: list[tuple] = []
    real_frames, real_array = video_module.stylize_frames, video_module.stylize_array
    monkeypatch.setattr(video_module, "stylize_frames", lambda m, x: batches.append(x.shape) or real_frames(m, x))
    monkeypatch.setattr(video_module, "stylize_array", lambda m, x, o: tiled.append(x.shape) or real_array(m, x, o))
    src = make_clip(tmp_path / "clip.mp4", size=(64, 48), pts=list(range(7)))
    options = StylizeOptions(max_side=0, stabilize="none", batch_size=4)

    monkeypatch.setenv("CLIPMORPH_BATCH_PIXELS", str(2 * 64 * 48))
    get_settings.cache_clear()
    stylize_video(src, tmp_path / "a.mp4", model, options)
    assert [shape[0] for shape in batches] == [2, 2, 2, 1] and not tiled

    batches.clear()  # a frame over the batch budget on its own: tiled
    monkeypatch.setenv("CLIPMORPH_BATCH_PIXELS", str(32 * 32))
    monkeypatch.setenv("CLIPMORPH_TILE_PIXELS", str(32 * 32))
    get_settings.cache_clear()
    stylize_video(src, tmp_path / "b.mp4", model, options)
    assert not batches and tiled == [(48, 64, 3)] * 7  # one frame at a time, through the tiler


def test_contrast_is_off_for_videos_by_default_and_held_steady_when_asked(
    video_settings, model, assets, tmp_path, monkeypatch
):
    """Default: the network sees the frames as they are. With --contrast the frames are equalised in order by one
    TemporalClahe (so its mapping carries from frame to frame), and frame count and timing are kept."""
    src = cut_clip(assets / "videos" / "carphone_pristine.mp4", tmp_path / "car.mp4", 0.4)
    seen: list[np.ndarray] = []
    real = video_module.stylize_frames

    def spy(net, frames):
        seen.extend(frames)
        return real(net, frames)

    monkeypatch.setattr(video_module, "stylize_frames", spy)
    outputs = {}
    for limit in (None, 2.0):
        seen.clear()
        out = tmp_path / f"out-{limit}.mp4"
        stylize_video(src, out, model, StylizeOptions(max_side=0, stabilize="none", contrast=limit))
        outputs[limit] = list(seen)
        assert frame_times(out) == frame_times(src)
    with av.open(str(src)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert all(np.array_equal(a, b) for a, b in zip(outputs[None], frames, strict=True))
    equalise = TemporalClahe(2.0)
    expected = [equalise(f) for f in frames]  # one mapping carried through the frames, in order
    assert all(np.array_equal(a, b) for a, b in zip(outputs[2.0], expected, strict=True))
    assert not np.array_equal(outputs[2.0][0], outputs[None][0])
