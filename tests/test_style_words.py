"""The plain words the web page shows for a style, from its quality block or its run metrics."""

from __future__ import annotations

from api.style_words import describe


def _words(config: dict, metrics: dict) -> dict[str, str]:
    return {t.aspect: t.words for t in describe(config, metrics)[0]}


def test_the_quality_block_comes_before_the_run_metrics():
    config = {"quality": {"640x360": {"ours": {"content": 0.8}, "warping_max": {"ours_stab": 1.2}}}}
    words = _words(config, {"content_distance": 2.5, "warping_ratio": 30.0, "fps_cpu_640x360": 15.0})
    assert words["strength"] == "A light touch: the video stays clearly recognisable."
    assert words["steadiness"] == "Very steady: about as calm as the original video."
    assert words["speed"] == "About 2.0 minutes per minute of video on a CPU at 640x360."


def test_run_metrics_alone_are_enough():
    metrics = {"content_distance": 2.3, "style_distance": 0.6, "warping_ratio": 30.6, "fps_cpu_640x360": 40.0}
    traits, figures = describe({}, metrics | {"fps_cuda_640x360": 300.0})
    words = {t.aspect: t.words for t in traits}
    assert (
        words["strength"]
        == "A bold repaint: details give way to the painting's strokes, loosely inspired by the painting."
    )
    assert words["steadiness"] == "Flickers noticeably on moving scenes."
    assert words["speed"].startswith("Faster than real time on a CPU at 640x360 (about 40 frames a second).")
    assert words["speed"].endswith("A GPU does about 300 frames a second.")
    assert [f.name for f in figures] == [
        "content_distance",
        "style_distance",
        "warping_ratio",
        "fps_cpu_640x360",
        "fps_cuda_640x360",
    ]


def test_nothing_measured_says_so():
    words = _words({"quality": {"640x360": {"ours": {"content": "n/a"}}}}, {})
    assert all("not been measured yet" in w for w in words.values())
