"""Writing the stylized video: libx264 in the input's container timing, with the input's audio.

One output frame per input frame, with its timestamps; the display matrix (rotation) and colour
tags of the first frame; every audio stream copied packet for packet when the output container
accepts its codec, else transcoded to AAC. Video is encoded yuv420p (H.264 High), what every
browser, phone and hardware decoder plays.

An odd width or height cannot be kept exactly in 4:2:0 H.264: the SPS crop counts in units of
the chroma subsampling (H.264 7.4.2.1.1: CropUnitX = SubWidthC = 2, CropUnitY = 2 for 4:2:0),
so a 322x242 picture can be cropped to 320x240 but never to 321x241. FFmpeg's `h264_metadata`
bitstream filter refuses `crop_right=1` ("must be a multiple of 2"), x264 refuses the crop
("crop-rect not divisible by 2x2"), and PyAV cannot write a container crop (mp4 `clap`), which
FFmpeg's decoders would not apply anyway. So `odd_video_size` (settings) chooses: "pad" (the
default) adds one column and/or row, a copy of the last one, at the right and bottom of the
stored picture and encodes that even size in yuv420p: it plays everywhere, and every header and
decoder reports the padded size. "exact" encodes yuv444p (High 4:4:4) at the exact size, which
many players and hardware decoders refuse (Debian's Chromium, decoding with FFmpeg, plays it).
Nearly all camera footage has even sizes.
"""

from __future__ import annotations

import contextlib
import logging
from fractions import Fraction
from pathlib import Path

import av
import av.error
import cv2
import numpy as np

from clipmorph.settings import get_settings
from clipmorph.video.probe import VideoError, reason

log = logging.getLogger(__name__)

VIDEO_CODEC = "libx264"
FALLBACK_AUDIO_CODEC = "aac"
_AAC_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 8: "7.1"}


def _can_copy(codec: str, out: av.container.OutputContainer) -> bool:
    # FFmpeg's mp4 muxer accepts raw PCM, but almost no player reads PCM from MP4.
    if codec.startswith("pcm_") and "mp4" in out.format.name.split(","):
        return False
    return codec in out.supported_codecs


class AudioCopier:
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


class VideoWriter:
    """libx264 encoder + muxer for one output file; set up from the first frame."""

    def __init__(
        self,
        path: Path,
        src: Path,
        size: tuple[int, int],
        colors: dict[str, object],
        matrix: tuple[int, ...] | None,
        rate: Fraction | None,
        time_base: Fraction,
        crf: int,
        audio: bool = True,
    ):
        width, height = size
        try:
            self.out = av.open(str(path), "w")
        except (av.error.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot write {path.suffix} files ({reason(e)})") from None
        try:
            self.stream = self.out.add_stream(VIDEO_CODEC, rate=rate or Fraction(25))
        except ValueError:
            self.out.close()
            raise VideoError(f"the {path.suffix} format cannot hold H.264 video; use .mp4, .mov or .mkv") from None
        # 4:2:0 needs even sizes; see the module docstring.
        settings = get_settings()
        exact = settings.odd_video_size == "exact" and (width % 2 == 1 or height % 2 == 1)
        self._pad = (0, 0) if exact else (width % 2, height % 2)  # columns, rows to add
        self.stream.width, self.stream.height = width + self._pad[0], height + self._pad[1]
        self.stream.pix_fmt = "yuv444p" if exact else "yuv420p"
        self.stream.time_base = time_base
        self.stream.codec_context.time_base = time_base
        self.stream.options = {"crf": str(crf), "preset": settings.x264_preset}
        for tag, value in colors.items():
            with contextlib.suppress(AttributeError, ValueError, TypeError):
                setattr(self.stream.codec_context, tag, value)
        if matrix is not None:
            self.stream.set_display_matrix(matrix)
        # audio=False: a segment's piece (clipmorph.video.segments), whose stitch adds the audio once.
        self.audio = AudioCopier(src, self.out) if audio else None
        self.time_base = time_base
        self._last_pts: int | None = None

    def write(self, rgb: np.ndarray, pts: int | None, duration: int | None) -> None:
        step = duration or 1
        # Encoders need strictly increasing timestamps; only a broken input needs this repair.
        if pts is None or (self._last_pts is not None and pts <= self._last_pts):
            pts = 0 if self._last_pts is None else self._last_pts + step
        self._last_pts = pts
        if any(self._pad):
            rgb = cv2.copyMakeBorder(rgb, 0, self._pad[1], 0, self._pad[0], cv2.BORDER_REPLICATE)
        if self.stream.pix_fmt == "yuv420p":
            # OpenCV's BT.601 limited-range conversion: what swscale does inside encode (within 2 levels
            # of chroma), at about a third of the CPU time.
            frame = av.VideoFrame.from_ndarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        else:
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        if duration:
            frame.duration = duration
        if self.audio is not None:
            self.audio.mux_until(float(pts * self.time_base))
        self.out.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.out.mux(self.stream.encode(None))
        if self.audio is not None:
            self.audio.close()
        self.out.close()

    def abort(self) -> None:
        if self.audio is not None:
            with contextlib.suppress(Exception):
                self.audio._input.close()
        with contextlib.suppress(Exception):
            self.out.close()
