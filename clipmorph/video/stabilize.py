"""Flow-guided temporal stabilisation of stylized video frames.

A feed-forward stylizer sees every frame on its own, so small changes in the
input (noise, compression, motion) become large changes in the brush strokes:
flicker. Here the previous *output* frame is carried along the input's optical
flow to the current frame and blended in where the pixel was visible in the
previous frame (forward-backward consistency), so static and smoothly moving
regions keep their texture and disoccluded regions take the fresh stylization.
Flow is computed on the input frames only, so it can run ahead of inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from clipmorph.video import flow as of

# Weight of the warped previous output on visible pixels. Warping error on carphone (random `fast` net,
# unstabilised 0.0095): 0.4 -> 0.0034, 0.6 -> 0.0017, 0.8 -> 0.0007; mean change vs the per-frame
# stylization 0.022 / 0.031 / 0.043. Higher blends remember ~1/(1-blend) frames and start to ghost.
# With the rt_bn starrynight model (Farneback warping ratio, worst of the 4 sample clips at 640x360):
# 0.6 -> 2.7, 0.8 -> 2.0, 0.9 -> 1.9 (unstabilised 8.3); 0.8 is the knee.
DEFAULT_BLEND = 0.8
# Flow is estimated on grey frames downscaled to this long side and scaled back up: DIS cost grows with
# the pixel count, and the motion of brush-stroke-sized structures does not need more resolution.
# On the rt_bn kanagawa model (quality.py warping ratio on bikes, its worst clip, 640x360, 24 frames) and
# CPU time of the whole motion stage per 640x360 frame: 480 px DIS medium 1.86 and ~30 ms (the earlier
# default), 480 fast 1.95, 360 fast 1.95, 320 fast 2.10 (~4 ms), 320 medium 1.79 and ~9 ms.
FLOW_MAX_SIDE = 320
FLOW_PRESET = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM
# Soft mask edges: a hard cut between blended and fresh pixels would itself show as a seam.
MASK_BLUR_SIGMA = 1.5
# Where the input itself did not change (the previous grey frame, carried along the flow, matches the current
# one to within noise), the network's output should not change either: what differs there is amplified
# sensor and codec noise. There the warped previous output weighs HOLD_BLEND instead of DEFAULT_BLEND. "Within
# noise" is a soft threshold: weight exp(-(difference / STILL_LEVELS)²), difference in grey levels (0-255)
# after a blur of MASK_BLUR_SIGMA.
HOLD_BLEND = 0.95
STILL_LEVELS = 3.0
# What is carried over from the previous output is its detail only (the picture minus a blur of this sigma, in
# network pixels); the coarse light and colour come from the current frame. Blending whole pictures made a fade
# lag: 7-8 grey levels behind on a fade of 2 levels a frame at blend 0.8.
CARRY_DETAIL_SIGMA = 16.0


@dataclass
class Motion:
    """How frame t relates to frame t-1 (both at the network's resolution)."""

    flow: np.ndarray  # HxWx2: pixel (x, y) of frame t sits at (x, y) + flow in frame t-1
    visible: np.ndarray  # HxW float32 in [0, 1]: 1 where the pixel of t was visible in t-1
    still: np.ndarray | None = None  # HxW float32 in [0, 1]: 1 where the input is unchanged along the flow


def flow_frame(img: np.ndarray, max_side: int = FLOW_MAX_SIDE) -> np.ndarray:
    """What the flow is computed on: the frame in grey (uint8), downscaled to at most max_side."""
    grey = of.gray(img)
    h, w = grey.shape
    scale = min(1.0, max_side / max(h, w))
    if scale == 1.0:
        return grey
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def motion_between(
    prev: np.ndarray, cur: np.ndarray, size: tuple[int, int], dis: cv2.DISOpticalFlow | None = None
) -> Motion:
    """Motion from flow frame `prev` (t-1) to `cur` (t) (see flow_frame), scaled to size (w, h)."""
    dis = dis or of.dis(FLOW_PRESET)
    to_prev = dis.calc(cur, prev, None)
    to_cur = dis.calc(prev, cur, None)
    visible = of.visible_mask(to_prev, to_cur).astype(np.float32)
    visible = cv2.GaussianBlur(visible, (0, 0), MASK_BLUR_SIGMA)
    change = cv2.absdiff(of.warp(prev, to_prev), cur).astype(np.float32)
    change = cv2.GaussianBlur(change, (0, 0), MASK_BLUR_SIGMA) * np.float32(1 / STILL_LEVELS)
    still = np.exp(-(change * change))
    h, w = cur.shape
    if (w, h) == tuple(size):
        return Motion(to_prev, visible, still)
    flow = cv2.resize(to_prev, size, interpolation=cv2.INTER_LINEAR)
    flow *= np.float32(size[0] / w), np.float32(size[1] / h)
    resized = [cv2.resize(m, size, interpolation=cv2.INTER_LINEAR) for m in (visible, still)]
    return Motion(flow, *resized)


def estimate_motion(prev: np.ndarray, cur: np.ndarray, max_side: int = FLOW_MAX_SIDE) -> Motion:
    """Motion from input frame `prev` (t-1) to `cur` (t), both HxWx3 of the same size."""
    h, w = cur.shape[:2]
    return motion_between(flow_frame(prev, max_side), flow_frame(cur, max_side), (w, h))


class MotionTracker:
    """Motion of each frame of a video from the one before; every frame is reduced to grey once."""

    def __init__(self, max_side: int = FLOW_MAX_SIDE, preset: int = FLOW_PRESET) -> None:
        self.max_side = max_side
        self._dis = cv2.DISOpticalFlow_create(preset)  # this tracker's own: DIS keeps state between calls
        self._previous: np.ndarray | None = None
        self._previous_size: tuple[int, int] | None = None

    def __call__(self, frame: np.ndarray) -> Motion | None:
        """Motion from the previous frame to `frame` (HxWx3); None for the first or after a size change."""
        h, w = frame.shape[:2]
        small = flow_frame(frame, self.max_side)
        motion = None
        if self._previous is not None and self._previous_size == (w, h):
            motion = motion_between(self._previous, small, (w, h), self._dis)
        self._previous, self._previous_size = small, (w, h)
        return motion


def _coarse_difference(a: np.ndarray, b: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (sigma) of a - b, computed at 1/8 size: the same low-pass at ~1/50 of the cost."""
    h, w = a.shape[:2]
    small = (max(1, w // 8), max(1, h // 8))
    diff = cv2.resize(a, small, interpolation=cv2.INTER_AREA) - cv2.resize(b, small, interpolation=cv2.INTER_AREA)
    diff = cv2.GaussianBlur(diff, (0, 0), sigma / 8)
    return cv2.resize(diff, (w, h), interpolation=cv2.INTER_LINEAR)


class FlowStabilizer:
    """Blends each stylized frame with the previous result warped along the input's flow."""

    def __init__(
        self, blend: float = DEFAULT_BLEND, hold: float = HOLD_BLEND, detail_sigma: float = CARRY_DETAIL_SIGMA
    ) -> None:
        self.blend = blend
        self.hold = hold  # the weight where the input is unchanged (Motion.still)
        self.detail_sigma = detail_sigma  # 0: carry the whole previous picture
        self._previous: np.ndarray | None = None

    def reset(self) -> None:
        self._previous = None

    def __call__(self, stylized: np.ndarray, motion: Motion | None) -> np.ndarray:
        """stylized: HxWx3 uint8 for frame t; motion: t-1 -> t, or None at the first frame / a cut."""
        current = stylized.astype(np.float32)
        if motion is not None and self._previous is not None and self._previous.shape == current.shape:
            warped = of.warp(self._previous, motion.flow)
            if self.detail_sigma > 0:  # the current frame's coarse light and colour, the previous one's detail
                warped += _coarse_difference(current, warped, self.detail_sigma)
                np.clip(warped, 0, 255, out=warped)  # a dark detail under brighter light can dip below 0
            weight = np.float32(self.blend)
            if motion.still is not None:
                weight = weight + np.float32(self.hold - self.blend) * motion.still
            alpha = motion.visible * weight
            # (alpha * warped + (1 - alpha) * current), per pixel, in one pass over the frame.
            current = cv2.blendLinear(warped, current, alpha, 1.0 - alpha)
        self._previous = current
        return cv2.convertScaleAbs(current)  # rounded and saturated to uint8 (values are never negative)
