"""Optical flow, warping and the temporal warping error (Lai et al. 2018).

Flow comes from OpenCV's DIS (no learned weights). Images are float32 HxWx3 in
[0, 1] (numpy) unless said otherwise. `flow(a, b)` maps each pixel of `a` to its
position in `b`: a[y, x] ~ b[y + f[..., 1], x + f[..., 0]].
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence

import cv2
import numpy as np


def gray(img: np.ndarray) -> np.ndarray:
    """HxWx3 RGB (uint8, or float in [0, 1]) or HxW -> HxW uint8 luma."""
    u8 = img if img.dtype == np.uint8 else (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY) if u8.ndim == 3 else u8


_gray = gray  # the earlier private name
# One DIS object per thread and preset: a DISOpticalFlow keeps buffers between calls, so two threads
# (the video engine's motion stage and an evaluation, say) must not share one.
_DIS = threading.local()


def dis(preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> cv2.DISOpticalFlow:
    """This thread's DIS optical flow object for `preset`."""
    cache = _DIS.__dict__.setdefault("by_preset", {})
    if preset not in cache:
        cache[preset] = cv2.DISOpticalFlow_create(preset)
    return cache[preset]


def flow(a: np.ndarray, b: np.ndarray, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> np.ndarray:
    """Dense flow from frame a to frame b, HxWx2 float32 (dx, dy)."""
    return dis(preset).calc(gray(a), gray(b), None)


@functools.lru_cache(maxsize=8)
def pixel_grid(h: int, w: int) -> np.ndarray:
    """HxWx2 float32 (x, y) of every pixel, read-only (cached: a video has one or two frame sizes)."""
    grid = np.empty((h, w, 2), np.float32)
    grid[..., 0] = np.arange(w, dtype=np.float32)
    grid[..., 1] = np.arange(h, dtype=np.float32)[:, None]
    grid.flags.writeable = False
    return grid


def warp(img: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Sample `img` at (x, y) + f: with f = flow(a, b), warp(b, f) lines b up with a."""
    h, w = f.shape[:2]
    where = pixel_grid(h, w) + f
    return cv2.remap(img, where, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _squared_norm(v: np.ndarray) -> np.ndarray:
    """HxWx2 -> HxW x**2 + y**2; the same numbers as (v**2).sum(-1), which numpy computes several times slower."""
    sq = v * v
    return sq[..., 0] + sq[..., 1]


def visible_mask(fwd: np.ndarray, bwd: np.ndarray, alpha: float = 0.01, beta: float = 0.5) -> np.ndarray:
    """Forward-backward consistency (Sundaram et al. 2010): True where a pixel of `a` is seen in `b`.

    fwd = flow(a, b), bwd = flow(b, a). A pixel is occluded when going there and
    back does not return close to where it started, or when it leaves the frame.
    """
    h, w = fwd.shape[:2]
    bwd_at_target = warp(bwd, fwd)
    round_trip = fwd + bwd_at_target
    err = _squared_norm(round_trip)
    tolerance = alpha * (_squared_norm(fwd) + _squared_norm(bwd_at_target)) + beta
    grid = pixel_grid(h, w)
    tx, ty = grid[..., 0] + fwd[..., 0], grid[..., 1] + fwd[..., 1]
    inside = (tx >= 0) & (tx <= w - 1) & (ty >= 0) & (ty <= h - 1)
    return (err <= tolerance) & inside


def pair_flow(in_a: np.ndarray, in_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flow from in_a to in_b and the mask of in_a's pixels visible in in_b."""
    fwd, bwd = flow(in_a, in_b), flow(in_b, in_a)
    return fwd, visible_mask(fwd, bwd)


def masked_warp_mse(out_a: np.ndarray, out_b: np.ndarray, fwd: np.ndarray, mask: np.ndarray) -> float:
    """MSE between out_a and out_b warped onto it along `fwd`, over the visible pixels."""
    if not mask.any():
        return 0.0
    diff = (out_a.astype(np.float32) - warp(out_b.astype(np.float32), fwd)) ** 2
    return float(diff[mask].mean())


def pair_warping_error(in_a: np.ndarray, in_b: np.ndarray, out_a: np.ndarray, out_b: np.ndarray) -> float:
    """Masked MSE between out_a and out_b warped onto a, with flow and occlusions from the inputs."""
    return masked_warp_mse(out_a, out_b, *pair_flow(in_a, in_b))


def warping_error(inputs: list[np.ndarray], outputs: list[np.ndarray]) -> float:
    """Mean over consecutive pairs of the occlusion-masked warping error of `outputs`.

    Flow is always computed on `inputs`, so passing inputs as outputs gives the
    input's own error (the baseline a stylized video is compared with).
    """
    return warping_errors(inputs, [outputs])[0]


def warping_errors(inputs: list[np.ndarray], outputs: Sequence[list[np.ndarray]]) -> list[float]:
    """warping_error of several renderings of the same inputs, computing each pair's flow once."""
    if len(inputs) < 2 or any(len(o) != len(inputs) for o in outputs):
        raise ValueError("need the same number (>= 2) of input and output frames")
    sums = [0.0] * len(outputs)
    for t in range(len(inputs) - 1):
        fwd, mask = pair_flow(inputs[t], inputs[t + 1])
        for i, out in enumerate(outputs):
            sums[i] += masked_warp_mse(out[t], out[t + 1], fwd, mask)
    return [total / (len(inputs) - 1) for total in sums]
