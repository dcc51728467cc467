"""Quality metrics of the benchmark on images whose answer is known (small, so the file runs in seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from clipmorph.evaluation import quality
from clipmorph.settings import get_settings
from clipmorph.training.data import find_images, load_rgb, load_style_tensor

H, W = 180, 320


@pytest.fixture(scope="module")
def vgg(assets):
    return quality.load_project_vgg()


@pytest.fixture(scope="module")
def painting(assets):
    return get_settings().styles_dir / "kandinsky.jpg"


def gradient() -> np.ndarray:
    """A clean, flat-looking picture: a gentle diagonal colour ramp (a wall, a sky)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    ramp = 0.3 + 0.3 * (x / W) + 0.1 * (y / H)
    return np.stack([ramp, ramp * 0.9 + 0.05, ramp * 0.8 + 0.1], -1)


def with_spots(img: np.ndarray, sigma: float = 6.0, amplitude: float = 0.35) -> np.ndarray:
    """Dark round Gaussian spots, like the droplets of an instance-norm network."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float32)
    out = img.copy()
    for cy, cx in ((50, 70), (120, 200), (60, 260)):
        out -= amplitude * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2))[..., None]
    return np.clip(out, 0, 1)


def with_strokes(img: np.ndarray, count: int = 60, seed: int = 0) -> np.ndarray:
    """Thin, sharp, elongated dark strokes in every direction, like brush work."""
    import cv2

    rng = np.random.default_rng(seed)
    out = (img * 255).astype(np.uint8)
    for _ in range(count):
        x0, y0 = rng.integers(0, W), rng.integers(0, H)
        angle, length = rng.uniform(0, np.pi), rng.uniform(25, 60)
        x1, y1 = int(x0 + length * np.cos(angle)), int(y0 + length * np.sin(angle))
        colour = tuple(int(c) for c in rng.integers(20, 120, 3))
        cv2.line(out, (int(x0), int(y0)), (x1, y1), colour, thickness=2, lineType=cv2.LINE_AA)
    return out


def test_artefact_score_flags_spots_and_passes_clean_and_strokes():
    clean = gradient()
    assert quality.artefact_score(clean, clean) == 0.0
    assert quality.artefact_score(with_spots(clean), clean) > quality.ARTEFACT_MAX_PERCENT
    assert quality.artefact_score(with_strokes(clean), clean) < quality.ARTEFACT_MAX_PERCENT


def test_spots_the_input_already_has_are_not_artefacts():
    spotted = with_spots(gradient())
    assert quality.artefact_score(spotted, spotted) == 0.0


def test_artefact_map_marks_the_spots_at_the_output_size():
    clean = gradient()
    heat = quality.artefact_map(with_spots(clean), clean)
    assert heat.shape == (H, W) and heat.dtype == np.float32
    assert heat[50, 70] > 0 and heat[120, 200] > 0
    assert heat[150, 20] == 0  # far from every spot
    assert quality.artefact_overlay(with_spots(clean), clean).shape == (H, W, 3)


def test_style_distance_is_zero_for_the_painting_and_grows_for_a_photo(vgg, painting, one_torch_thread):
    own = load_style_tensor(painting, 128)[0].permute(1, 2, 0).numpy()
    self_distance = quality.style_distance(vgg, own, painting)
    assert set(self_distance) == {"style@1", "style@0.5", "style@0.25", "style"}
    assert self_distance["style"] < 1e-4
    assert quality.style_distance(vgg, small_photo(), painting)["style"] > 0.2


def small_photo() -> np.ndarray:
    """The first validation photo, longer side 128 px."""
    img = load_rgb(find_images([get_settings().photos_dir / get_settings().eval_photos])[0])
    img.thumbnail((128, 128))
    return np.asarray(img)


def test_content_distance_of_an_image_to_itself_is_zero(vgg, one_torch_thread):
    img = with_strokes(gradient())[:96, :128]
    same = quality.content_distance(vgg, img, img)
    assert same == {"content_relu2_2": 0.0, "content_relu3_1": 0.0, "content": 0.0}
    assert quality.content_distance(vgg, 255 - img, img)["content"] > 0.1


def test_perceptual_distances_share_one_pass_and_agree(vgg, painting, one_torch_thread):
    photo = small_photo()
    output = with_strokes(gradient())[: photo.shape[0], : photo.shape[1]]
    both = quality.perceptual_distances(vgg, output, quality.content_features(vgg, photo), painting)
    expected = quality.style_distance(vgg, output, painting) | quality.content_distance(vgg, output, photo)
    assert both == pytest.approx(expected, rel=1e-5)


def panning_clip(frames: int = 4) -> list[np.ndarray]:
    """A camera panning 3 px right per frame over blurred noise (texture any flow can track)."""
    import cv2

    rng = np.random.default_rng(1)
    scene = cv2.GaussianBlur(rng.random((96, 128 + 3 * frames, 3)).astype(np.float32), (0, 0), 2)
    scene = (scene - scene.min()) / (scene.max() - scene.min())
    return [(scene[:, 3 * t : 3 * t + 128] * 255).astype(np.uint8) for t in range(frames)]


def test_warping_ratio_of_the_input_is_one_and_flicker_raises_it():
    clip = panning_clip()
    flows = quality.pair_flows(clip)
    assert quality.warping_ratio(clip, clip, flows)["warping_ratio"] == pytest.approx(1.0)
    # Brightness jumping up and down from frame to frame, as a stylizer's textures do.
    flicker = [np.clip(f.astype(np.int16) + (-1) ** t * 20, 0, 255).astype(np.uint8) for t, f in enumerate(clip)]
    both = quality.warping_ratio(clip, {"steady": clip, "flicker": flicker}, flows)
    assert both["steady_warping_ratio"] == pytest.approx(1.0)
    assert both["flicker_warping_ratio"] > 2.0


def sliding_plate(frames: int = 5, speed: int = 4) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """A flat bright plate sliding down over a still textured floor, as the bus roof in bikes.mp4; and two
    paintings of it: strokes tied to the plate (the same strokes on it in every frame, so they move with it)
    and the same strokes fixed to the screen (the plate slides under them: the "shower door" effect)."""
    import cv2

    rng = np.random.default_rng(1)
    floor = cv2.GaussianBlur(rng.random((120, 160)).astype(np.float32), (0, 0), 2)
    floor = (floor - floor.min()) / (floor.max() - floor.min()) * 120 + 40
    strokes = cv2.GaussianBlur(rng.standard_normal((200, 120)).astype(np.float32), (0, 0), 2) * 60
    inputs, tied, fixed = [], [], []
    for t in range(frames):
        top = 10 + speed * t
        plate = (slice(top, top + 70), slice(20, 140))
        picture = floor.copy()
        picture[plate] = 230
        with_tied, with_fixed = picture.copy(), picture.copy()
        with_tied[plate] += strokes[100:170]
        with_fixed[plate] += strokes[top : top + 70]
        for clip, image in ((inputs, picture), (tied, with_tied), (fixed, with_fixed)):
            clip.append(np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2))
    return inputs, tied, fixed


def test_warping_ratio_prefers_strokes_that_move_with_a_flat_surface():
    # The reference flow must follow a flat moving surface from its edges. Farneback read the plate's inside
    # as still and scored the screen-fixed strokes better (1.28 against 1.82), as it did on bikes.mp4.
    inputs, tied, fixed = sliding_plate()
    ratios = quality.warping_ratio(inputs, {"tied": tied, "fixed": fixed})
    assert ratios["tied_warping_ratio"] < 0.95 * ratios["fixed_warping_ratio"]
    assert ratios["tied_warping_ratio"] < 1.15  # nearly as steady as the input itself


def test_flow_taken_on_shrunk_frames_comes_back_at_full_scale(monkeypatch):
    a, b = panning_clip(2)
    full = np.median(quality.reference_flow(a, b)[8:-8, 8:-8], axis=(0, 1))
    monkeypatch.setattr(quality, "FLOW_SIDE", 64)  # half the frame's width
    half = quality.reference_flow(a, b)
    assert half.shape == (*a.shape[:2], 2)
    assert np.median(half[8:-8, 8:-8], axis=(0, 1)) == pytest.approx(full, abs=0.5)
    assert full == pytest.approx([-3, 0], abs=0.5)  # the scene moves 3 px left between frames


def test_grid_keeps_images_at_their_own_size():
    from PIL import Image

    from clipmorph.training.contact_sheet import grid, label_height

    wide, tall = Image.new("RGB", (64, 36), "red"), Image.new("RGB", (30, 40), "blue")
    sheet = grid([[wide, tall], [tall, wide]], [["a", "b"], ["c", "d"]])
    assert sheet.size == (64 + 64, 2 * (40 + label_height(1)))
    assert sheet.getpixel((10, 10)) == (255, 0, 0) and sheet.getpixel((70, 10)) == (0, 0, 255)


def _benchmark():
    """benchmarks/quality.py as a module (benchmarks/ is not a package)."""
    import importlib.util
    import sys

    from clipmorph.settings import REPO_ROOT

    spec = importlib.util.spec_from_file_location("quality_benchmark", REPO_ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_benchmark_names_same_named_folders_apart_and_records_figures(settings, tmp_path):
    import json

    from clipmorph.model.artifact import ModelInfo, save_model
    from clipmorph.model.network import build

    bench = _benchmark()
    info = ModelInfo(net=build("rt_bn").config, style={"name": "kandinsky"})
    paths = [save_model(build("rt_bn"), info, tmp_path / run / "model") for run in ("a", "b")]
    subjects = bench.load_subjects(paths)
    assert [s.name for s in subjects] == ["a-model", "b-model"]

    row = {"ours": {"style": 0.4}, "peer": {"style": 0.3}, "warping_max": {"ours_stab": 2.0}, "pass": {}}
    results = [row | {"model": "a-model", "size": "640x360"}, row | {"model": "b-model", "size": "640x360"}]
    environment = {"peer": None, "clips": ["bikes.mp4"], "frames_per_clip": 24, "photos": [], "stabilize": "flow"}
    bench.record(subjects[:1], results, environment)
    recorded = json.loads((paths[0] / "config.json").read_text())["quality"]
    assert recorded["640x360"]["ours"] == {"style": 0.4} and recorded["measured_with"]["clips"] == ["bikes.mp4"]
    assert "quality" not in json.loads((paths[1] / "config.json").read_text())
