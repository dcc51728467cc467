"""The network's input contrast: CLAHE with histograms held steady over time (clipmorph.video.contrast)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from clipmorph.model.network import build
from clipmorph.video.contrast import IMAGE_CONTRAST, VIDEO_CONTRAST, TemporalClahe
from clipmorph.video.inference import StylizeOptions, prepare, stylize_array


def pale_scene(seed: int = 0, h: int = 360, w: int = 640) -> np.ndarray:
    """A low-contrast picture: smooth shading plus faint texture, all within ~40 grey levels."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 20 * np.sin(x / 17.0) + 10 * np.cos(y / 11.0)
    texture = cv2.GaussianBlur(rng.normal(0, 6, (h, w)), (0, 0), 1.5)
    grey = np.clip(base + texture, 0, 255)
    return np.stack([grey, grey * 0.95, grey * 0.9], -1).astype(np.uint8)


def opencv_clahe(rgb: np.ndarray, limit: float) -> np.ndarray:
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    lab[..., 0] = cv2.createCLAHE(clipLimit=limit, tileGridSize=(8, 8)).apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def test_without_history_it_is_opencvs_clahe():
    picture = pale_scene()
    ours, theirs = TemporalClahe(2.0, memory=0.0)(picture), opencv_clahe(picture, 2.0)
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2.0
    # and it does what it is for: more contrast in a pale picture
    assert ours.std() > 1.5 * picture.std()


def test_only_the_lightness_changes():
    picture = pale_scene()
    before = cv2.cvtColor(picture, cv2.COLOR_RGB2LAB).astype(int)
    after = cv2.cvtColor(TemporalClahe(3.0)(picture), cv2.COLOR_RGB2LAB).astype(int)
    assert np.abs(after[..., 0] - before[..., 0]).mean() > 5
    assert np.abs(after[..., 1:] - before[..., 1:]).mean() < 1.5  # colour: rounding through RGB only


def test_a_static_scene_keeps_its_mapping():
    picture, equalise = pale_scene(), TemporalClahe(2.0, memory=0.9)
    first = equalise(picture)
    for _ in range(5):
        assert np.array_equal(equalise(picture), first)


def test_something_entering_a_tile_changes_its_surroundings_gradually():
    """A dark object appears in one corner: per-frame CLAHE remaps the whole tile at once; with memory 0.9
    the pixels around it that did not change move by a tenth as much in that first frame."""
    before = pale_scene()
    after = before.copy()
    after[:30, :50] = 10  # inside the top-left tile (45x80 pixels)
    unchanged = np.ones(before.shape[:2], bool)
    unchanged[:30, :50] = False

    def jump(memory: float) -> float:
        equalise = TemporalClahe(2.0, memory=memory)
        first, second = equalise(before), equalise(after)
        return float(np.abs(second.astype(int) - first.astype(int))[unchanged].max())

    assert jump(0.0) >= 10
    assert jump(0.9) <= 0.2 * jump(0.0)


def test_a_new_size_or_a_reset_starts_afresh():
    equalise = TemporalClahe(2.0, memory=0.9)
    equalise(pale_scene(1))
    other = pale_scene(2)
    equalise.reset()
    assert np.array_equal(equalise(other), TemporalClahe(2.0, memory=0.0)(other))
    small = pale_scene(3, 180, 320)
    assert np.array_equal(equalise(small), TemporalClahe(2.0, memory=0.0)(small))


@pytest.mark.parametrize("limit, memory", [(0.0, 0.5), (-1.0, 0.5), (2.0, 1.0), (2.0, -0.1)])
def test_bad_settings_are_refused(limit, memory):
    with pytest.raises(ValueError):
        TemporalClahe(limit, memory)


def test_images_get_contrast_by_default_videos_do_not():
    assert StylizeOptions().contrast_for(video=False) == IMAGE_CONTRAST > 0
    assert StylizeOptions().contrast_for(video=True) == VIDEO_CONTRAST == 0
    assert StylizeOptions(contrast=3.0).contrast_for(video=True) == 3.0
    with pytest.raises(ValueError, match="contrast"):
        StylizeOptions(contrast=9.0)
    # stylize_array (one picture) applies the image default: the same as equalising first, then none.
    torch.manual_seed(0)  # an untrained network: some seeds clamp every pixel to black
    model = prepare(build("rt_bn"), "cpu")
    picture = pale_scene(4)
    default = stylize_array(model, picture, StylizeOptions(max_side=0))
    by_hand = stylize_array(model, TemporalClahe(IMAGE_CONTRAST, 0.0)(picture), StylizeOptions(max_side=0, contrast=0))
    plain = stylize_array(model, picture, StylizeOptions(max_side=0, contrast=0))
    assert plain.std() > 1  # not a constant picture, which would make the comparisons below vacuous
    assert np.array_equal(default, by_hand)
    assert not np.array_equal(default, plain)
