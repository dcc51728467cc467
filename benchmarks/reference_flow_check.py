"""Does a reference flow grade texture that moves with a surface as steadier than texture fixed to the screen?

The warping ratio (clipmorph.evaluation.quality) is only as right as the flow it warps with. This paints the
same texture on each sample clip three ways and grades them with each candidate flow:
  * carried: the texture moves from frame to frame along the stabiliser's own DIS flow (what the stabiliser
    does at blend 1), fresh texture where DIS finds a pixel newly visible;
  * screen: the same texture stays put on the screen while the picture moves under it ("shower door");
  * fresh: new texture every frame (flicker).
A usable reference flow scores carried < screen < fresh on every clip. Farneback fails on bikes.mp4, whose
flat bus roof it reads as still (docs/training.md, sixth round).

    python benchmarks/reference_flow_check.py [--frames 12] [--amplitude 0.5] [--flows farneback,deepflow,pcaflow]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import av
import cv2
import numpy as np

from clipmorph.evaluation import quality
from clipmorph.settings import Settings, get_settings
from clipmorph.training.data import resolve_style_path
from clipmorph.video import flow as of
from clipmorph.video.stabilize import MotionTracker

SIZE = (640, 360)
TEXTURE_SIGMA = 8.0  # the painting's detail: the picture minus its blur at this sigma (stroke-sized)


def _grey(a: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)


def _farneback(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # the metric's flow until 2026-12
    return cv2.calcOpticalFlowFarneback(_grey(a), _grey(b), None, 0.5, 5, 15, 3, 5, 1.2, 0)


def _opencv(create: Callable[[], cv2.DenseOpticalFlow]) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    algorithm = create()
    return lambda a, b: algorithm.calc(_grey(a), _grey(b), None)


FLOWS = {
    "farneback": lambda: _farneback,
    "deepflow": lambda: quality.reference_flow,
    "pcaflow": lambda: _opencv(cv2.optflow.createOptFlow_PCAFlow),
}


def read_frames(path: Path, count: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(cv2.resize(frame.to_ndarray(format="rgb24"), SIZE, interpolation=cv2.INTER_AREA))
            if len(frames) == count:
                break
    return frames


def texture_source(painting: Path) -> Callable[[int], np.ndarray]:
    """texture(seed): the painting's detail at a random offset, frame-sized, float32 around 0."""
    w, h = SIZE
    image = cv2.cvtColor(cv2.imread(str(painting)), cv2.COLOR_BGR2RGB)
    image = cv2.resize(image, (2 * w, 2 * h)).astype(np.float32)

    def texture(seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        y, x = rng.integers(0, h), rng.integers(0, w)
        patch = image[y : y + h, x : x + w]
        return patch - cv2.GaussianBlur(patch, (0, 0), TEXTURE_SIGMA)

    return texture


def paintings(frames: list[np.ndarray], texture: Callable[[int], np.ndarray], amplitude: float) -> dict:
    w, h = SIZE
    renderings: dict[str, list[np.ndarray]] = {}
    for mode in ("carried", "screen", "fresh"):
        tracker, tex, out = MotionTracker(), texture(1), []
        for i, frame in enumerate(frames):
            motion = tracker(frame)
            if mode == "carried" and motion is not None:
                grid = of.pixel_grid(h, w) + motion.flow
                moved = cv2.remap(tex, grid, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
                visible = motion.visible[..., None]
                tex = visible * moved + (1 - visible) * texture(100 + i)
            elif mode == "fresh" and i > 0:
                tex = texture(100 + i)
            out.append(np.clip(frame * 0.7 + 40 + amplitude * tex, 0, 255).astype(np.uint8))
        renderings[mode] = out
    return renderings


def painting_path(name: str, settings: Settings) -> Path:
    return resolve_style_path(name, settings.style_dirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--amplitude", type=float, default=0.5, help="texture strength, 1 = the painting's own")
    parser.add_argument("--flows", default=",".join(FLOWS))
    parser.add_argument("--painting", default="kanagawa")
    args = parser.parse_args()
    settings = get_settings()
    texture = texture_source(painting_path(args.painting, settings))
    print("| clip | reference flow | carried along DIS | fixed to the screen | fresh every frame | order right |")
    print("|---|---|---|---|---|---|")
    for clip in sorted(settings.videos_dir.glob("*")):
        if clip.name.startswith("carphone_distorted"):
            continue  # the same scene as carphone_pristine
        frames = read_frames(clip, args.frames)
        renderings = paintings(frames, texture, args.amplitude)
        for name in args.flows.split(","):
            original, quality.reference_flow = quality.reference_flow, FLOWS[name]()
            try:
                ratios = quality.warping_ratio(frames, renderings)
            finally:
                quality.reference_flow = original
            r = [ratios[f"{mode}_warping_ratio"] for mode in ("carried", "screen", "fresh")]
            ok = "yes" if r[0] < r[1] < r[2] else "NO"
            print(f"| {clip.stem} | {name} | {r[0]:.2f} | {r[1]:.2f} | {r[2]:.1f} | {ok} |", flush=True)


if __name__ == "__main__":
    main()
