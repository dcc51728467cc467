"""A style's measurements in plain words, for people who do not read loss values.

Numbers come from the model's own config.json `quality` block (written by `make quality
--record`: measured the way the service renders, stabilisation on, worst of four clips)
and, where that block is missing, from the metrics `clipmorph evaluate` logged on the
version's run (the same definitions, clipmorph/evaluation/quality.py). Frames/s only exist as run
metrics. Every figure is optional: a style with no measurement says so.

The thresholds below are presentation, not a gate: they split the range the shipped
models span (README, Results) into a few words.
"""

from __future__ import annotations

from dataclasses import dataclass

from api.schemas import Figure, StyleTrait
from clipmorph.evaluation.metric_names import ARTEFACT, CONTENT, CPU_FPS, CUDA_FPS, STYLE, WARPING

# The frame size the quality block's figures are quoted at: the web page's default processing size.
QUALITY_SIZE = "640x360"
# Content distance (VGG features, relative to the input): how far the picture moves from the video.
LIGHT_CONTENT, STRONG_CONTENT = 1.0, 2.0
# Style distance (Gram matrices, relative to the painting): how close the textures and colours come.
CLOSE_STYLE, LOOSE_STYLE = 0.35, 0.55
# Warping ratio: temporal error of the output over the input's own (1 = as steady as the input).
STEADY_WARP, SHIMMER_WARP, FLICKER_WARP = 1.5, 4.0, 15.0
# Artefact score, % of flat area with blobs or halos: the promotion gate's threshold.
ARTEFACT_LIMIT = 1.0
# Frames per second at 640x360 on a CPU; video is usually 25-30 frames/s.
REALTIME_FPS, TYPICAL_VIDEO_FPS = 24.0, 30.0

MEANINGS = {
    CONTENT: "distance of the result's features from the video's (higher: repainted more)",
    STYLE: "distance of the result's textures and colours from the painting's (lower: closer to the painting)",
    ARTEFACT: "% of flat areas with blobs or halos (lower is cleaner; above 1 is visible)",
    WARPING: "flicker between frames relative to the video's own (1: as steady as the original)",
    CPU_FPS: "frames stylized per second at 640x360 on a CPU",
    CUDA_FPS: "frames stylized per second at 640x360 on a GPU",
}


@dataclass(frozen=True)
class Measures:
    """The figures the words come from; None when not measured."""

    content: float | None = None
    style: float | None = None
    artefact: float | None = None
    warping: float | None = None
    fps_cpu: float | None = None
    fps_cuda: float | None = None

    def as_figures(self) -> list[Figure]:
        values = {
            CONTENT: self.content,
            STYLE: self.style,
            ARTEFACT: self.artefact,
            WARPING: self.warping,
            CPU_FPS: self.fps_cpu,
            CUDA_FPS: self.fps_cuda,
        }
        return [Figure(name=k, value=round(v, 3), meaning=MEANINGS[k]) for k, v in values.items() if v is not None]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def measures(config: dict, metrics: dict[str, float]) -> Measures:
    """The model's quality block first (as served, with stabilisation), then its run metrics."""
    quality = (config.get("quality") or {}).get(QUALITY_SIZE) or {}
    ours = quality.get("ours") or {}
    warping = (quality.get("warping_max") or {}).get("ours_stab")

    def pick(recorded: object, key: str) -> float | None:
        found = _number(recorded)
        return found if found is not None else _number(metrics.get(key))

    return Measures(
        content=pick(ours.get("content"), CONTENT),
        style=pick(ours.get("style"), STYLE),
        artefact=pick(ours.get("artefact"), ARTEFACT),
        warping=pick(warping, WARPING),
        fps_cpu=_number(metrics.get(CPU_FPS)),
        fps_cuda=_number(metrics.get(CUDA_FPS)),
    )


def strength_words(m: Measures) -> str:
    if m.content is None:
        return "How strongly it repaints has not been measured yet."
    if m.content < LIGHT_CONTENT:
        words = "A light touch: the video stays clearly recognisable"
    elif m.content < STRONG_CONTENT:
        words = "A clear repaint: shapes stay, surfaces take the painting's strokes"
    else:
        words = "A bold repaint: details give way to the painting's strokes"
    if m.style is not None:
        if m.style < CLOSE_STYLE:
            words += ", close to the painting's colours and textures"
        elif m.style < LOOSE_STYLE:
            words += ", with the painting's palette and brushwork"
        else:
            words += ", loosely inspired by the painting"
    if m.artefact is not None and m.artefact > ARTEFACT_LIMIT:
        words += ". Flat areas such as sky may show small blobs"
    return words + "."


def steadiness_words(m: Measures) -> str:
    if m.warping is None:
        return "How steady it is from frame to frame has not been measured yet."
    if m.warping <= STEADY_WARP:
        return "Very steady: about as calm as the original video."
    if m.warping <= SHIMMER_WARP:
        return "Steady, with a slight shimmer on moving things."
    if m.warping <= FLICKER_WARP:
        return "Some flicker on busy, moving scenes."
    return "Flickers noticeably on moving scenes."


def speed_words(m: Measures) -> str:
    gpu = f" A GPU does about {m.fps_cuda:.0f} frames a second." if m.fps_cuda else ""
    if m.fps_cpu is None:
        return ("Its speed on a CPU has not been measured yet." + gpu).strip()
    if m.fps_cpu >= REALTIME_FPS:
        return f"Faster than real time on a CPU at 640x360 (about {m.fps_cpu:.0f} frames a second).{gpu}"
    # What someone waits for: minutes of work per minute of ordinary video.
    minutes = TYPICAL_VIDEO_FPS / m.fps_cpu
    return f"About {minutes:.1f} minutes per minute of video on a CPU at 640x360.{gpu}"


def describe(config: dict, metrics: dict[str, float]) -> tuple[list[StyleTrait], list[Figure]]:
    """-> (traits in words, the figures behind them) for a champion's config.json and run metrics."""
    m = measures(config, metrics)
    traits = [
        StyleTrait(aspect="strength", words=strength_words(m)),
        StyleTrait(aspect="steadiness", words=steadiness_words(m)),
        StyleTrait(aspect="speed", words=speed_words(m)),
    ]
    return traits, m.as_figures()
