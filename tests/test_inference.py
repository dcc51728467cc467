"""Model loading through the registry, still images, and tiled inference of large images."""

from __future__ import annotations

import itertools

import mlflow
import numpy as np
import PIL.Image
import pytest
import torch
from typer.testing import CliRunner

from clipmorph import registry
from clipmorph.cli import app
from clipmorph.model.artifact import ModelInfo, save_model
from clipmorph.model.network import PRESETS, build
from clipmorph.video.inference import (
    ImageError,
    StylizeOptions,
    load_stylizer,
    stylize_array,
    stylize_image,
    stylize_pil,
    to_tensor,
    to_uint8,
)
from clipmorph.video.tiling import spans, stylize_tiled


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build("fast").eval()


def photo(assets, size: tuple[int, int]) -> PIL.Image.Image:
    return PIL.Image.open(assets / "photos" / "pytorch_examples" / "amber.jpg").convert("RGB").resize(size)


def test_load_stylizer_by_name_alias_version_and_folder(settings, model, tmp_path):
    folder = save_model(model, ModelInfo(net=PRESETS["fast"], recommended={"norm_smoothing": 0.8}), tmp_path / "m")
    client = registry.configure()
    with mlflow.start_run() as run:
        pass
    mv = registry.register_model_dir(client, folder, "tiny", run.info.run_id)
    client.set_registered_model_alias(mv.name, settings.champion_alias, mv.version)
    for ref in ("tiny", "tiny@champion", f"tiny/{mv.version}"):
        loaded = load_stylizer(ref, device="cpu")
        assert (loaded.name, loaded.version) == ("clipmorph-tiny", str(mv.version))
        assert loaded.info.recommended["norm_smoothing"] == 0.8
        assert not loaded.model.training
    plain = load_stylizer(str(folder), device="cpu")
    assert (plain.name, plain.version) == (None, None)
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        assert torch.allclose(plain.model(x), model(x), atol=1e-5)
    with pytest.raises(registry.ModelNotFoundError):
        load_stylizer("nope")


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_stylize_image_keeps_format_and_odd_size(model, assets, tmp_path, suffix):
    src = tmp_path / f"in{suffix}"
    photo(assets, (855, 481)).save(src)
    stylize_image(model, src, tmp_path / f"out{suffix}", StylizeOptions(max_side=200))
    with PIL.Image.open(tmp_path / f"out{suffix}") as out:
        assert out.size == (855, 481)
        assert out.format == PIL.Image.open(src).format
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, f"out{suffix}"])


def test_alpha_and_exif_orientation_survive(model, assets, tmp_path):
    rgba = photo(assets, (65, 33)).convert("RGBA")
    rgba.putalpha(PIL.Image.linear_gradient("L").resize((65, 33)))
    out = stylize_pil(model, rgba, StylizeOptions())
    assert out.mode == "RGBA" and out.size == (65, 33)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(rgba.getchannel("A")))
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    photo(assets, (64, 40)).save(tmp_path / "rot.jpg", exif=exif)
    stylize_image(model, tmp_path / "rot.jpg", tmp_path / "out.jpg", StylizeOptions())
    assert PIL.Image.open(tmp_path / "out.jpg").size == (40, 64)


def test_strength_zero_is_the_original(model, assets):
    img = np.asarray(photo(assets, (97, 61)))
    assert np.array_equal(stylize_array(model, img, StylizeOptions(strength=0.0)), img)
    half = stylize_array(model, img, StylizeOptions(strength=0.5)).astype(int)
    full = stylize_array(model, img, StylizeOptions()).astype(int)
    assert np.abs(half - (full + img) / 2).max() <= 1


def test_bad_images_are_clear_errors(model, tmp_path, settings, monkeypatch):
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageError, match="not a readable image"):
        stylize_image(model, tmp_path / "bad.png", tmp_path / "out.png", StylizeOptions())
    PIL.Image.new("RGB", (40, 30)).save(tmp_path / "ok.png")
    with pytest.raises(ImageError, match="output must end in"):
        stylize_image(model, tmp_path / "ok.png", tmp_path / "out.gif", StylizeOptions())
    monkeypatch.setenv("CLIPMORPH_MAX_IMAGE_PIXELS", "1000")
    from clipmorph.settings import get_settings

    get_settings.cache_clear()
    with pytest.raises(ImageError, match="exceeds the limit"):
        stylize_image(model, tmp_path / "ok.png", tmp_path / "out.png", StylizeOptions())
    assert not (tmp_path / "out.png").exists()


def test_options_are_validated():
    for bad in ({"stabilize": "wobble"}, {"strength": 1.5}, {"batch_size": 0}, {"crf": 60}, {"max_side": 4}):
        with pytest.raises(ValueError):
            StylizeOptions(**bad)


def test_spans_cover_with_aligned_overlapping_windows():
    for length in (100, 257, 1000, 1031):
        windows = spans(length, 256, 64, 8)
        assert windows[0][0] == 0 and windows[-1][1] == length
        for (_, a1), (b0, _) in itertools.pairwise(windows):
            assert b0 % 8 == 0 and a1 - b0 >= 64


def test_tiles_match_untiled_inference(model, assets):
    x = to_tensor(np.asarray(photo(assets, (400, 304)))[None], torch.device("cpu"))
    with torch.inference_mode():
        whole = to_uint8(model(x)).astype(int)
        # Statistics from the full image: what is left is the receptive field cut at the seams.
        tiled = to_uint8(stylize_tiled(model, x, 256 * 256, stats_pixels=400 * 304)).astype(int)
    diff = np.abs(tiled - whole)
    # A random net is far more sensitive than a trained one (outputs span about -10..6 before clamping).
    assert diff.mean() < 1.5
    assert np.percentile(diff, 99.9) < 32


@pytest.mark.slow
def test_large_image_is_tiled_without_seams(model, assets, settings):
    """3072x2048 through the default path (1 Mpx tiles): no step in the image where tiles meet."""
    img = np.asarray(photo(assets, (3072, 2048)))
    out = stylize_array(model, img, StylizeOptions()).astype(float)
    assert out.shape == img.shape
    # Mean absolute step between neighbouring columns: at seams it must look like anywhere else.
    steps = np.abs(np.diff(out, axis=1)).mean(axis=(0, 2))
    tile = 1024
    seams = [s - 1 for s, _ in spans(3072, tile, 192, 8)[1:]] + [e - 1 for _, e in spans(3072, tile, 192, 8)[:-1]]
    assert steps[seams].max() < 2 * np.median(steps)


def test_cli_stylizes_an_image(model, assets, tmp_path):
    save_model(model, ModelInfo(net=PRESETS["fast"]), tmp_path / "model")
    photo(assets, (81, 47)).save(tmp_path / "in.png")
    runner = CliRunner()
    args = ["stylize", str(tmp_path / "in.png"), str(tmp_path / "out.png"), "--model", str(tmp_path / "model")]
    result = runner.invoke(app, [*args, "--strength", "0.7"])
    assert result.exit_code == 0, result.output
    assert PIL.Image.open(tmp_path / "out.png").size == (81, 47)
    result = runner.invoke(app, [*args[:3], "--model", str(tmp_path / "missing")])
    assert result.exit_code != 0


def test_network_runs_at_the_models_frame_side_unless_told_otherwise():
    from clipmorph.video.inference import network_size

    m = build("rt_ln")
    assert network_size(1280, 720, None, m) == (1280, 720)  # no frame side: the input size
    m.frame_side = 640
    assert network_size(1280, 720, None, m) == (640, 360)  # shrunk to the frame side
    assert network_size(320, 180, None, m) == (640, 360)  # and enlarged: strokes keep their relative size
    assert network_size(1280, 720, 0, m) == (1280, 720)  # 0: the input's own size
    assert network_size(1280, 720, 320, m) == (320, 180)  # an explicit max_side only shrinks
    assert network_size(200, 100, 320, m) == (200, 100)
