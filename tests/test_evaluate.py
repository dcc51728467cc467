"""Evaluation of tiny untrained models on real validation photos and a real clip, logged to a real registry."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clipmorph import registry
from clipmorph.evaluation import evaluate as ev
from clipmorph.model.artifact import ModelInfo, save_model
from clipmorph.model.network import PRESETS, build

TINY = ev.EvalOptions(photos=2, photo_size=64, frames=4, frame_side=96, batch=2, fps_batch=1, fps_warmup=0, fps_iters=1)


def tiny_model(directory, style=None, train=None, smoothing=0.5):
    torch.manual_seed(0)
    info = ModelInfo(
        net=PRESETS["fast"],
        style={"spec": "kandinsky"} if style is None else style,
        train=train or {"style_size": 96},  # a small style image keeps the VGG passes cheap
        recommended={"norm_smoothing": smoothing},
    )
    return save_model(build("fast"), info, directory)


def test_quick_evaluation_returns_every_metric_and_logs_them(settings, tmp_path):
    client = registry.configure(settings)
    with mlflow.start_run() as run:
        pass
    mv = registry.register_model_dir(client, tiny_model(tmp_path / "m"), "evaltest", run.info.run_id)

    metrics = ev.evaluate_and_log(client, "evaltest", str(mv.version), options=TINY)

    assert set(ev.METRIC_KEYS) <= set(metrics)
    assert all(math.isfinite(v) and v >= 0 for v in metrics.values())
    assert metrics["warping_ratio"] == pytest.approx(metrics["warping_error"] / metrics["warping_error_input"])
    logged = client.get_run(run.info.run_id).data.metrics
    assert {k: logged[k] for k in metrics} == pytest.approx(metrics)
    tags = client.get_model_version(mv.name, mv.version).tags
    assert float(tags["metric.style_loss"]) == pytest.approx(metrics["style_loss"], rel=1e-5)
    assert tags["eval.profile"] == "quick"


def test_baseline_measures_the_clip_without_stabilisation(settings, tmp_path):
    model_dir = tiny_model(tmp_path / "m", smoothing=0.9)
    metrics = ev.evaluate(model_dir, baseline=True, options=TINY, device="cpu")
    for key in ev.METRIC_KEYS:
        assert f"{ev.BASELINE_PREFIX}{key}" in metrics
    # Photos are never stabilised; the clip is (as `clipmorph stylize` does by default), which steadies it.
    assert metrics["baseline_style_loss"] == metrics["style_loss"]
    assert metrics["baseline_warping_error_input"] == metrics["warping_error_input"]
    assert metrics["warping_error"] < metrics["baseline_warping_error"]


def test_smoothing_state_carries_across_batches(settings):
    model = build("fast").eval()
    model.set_norm_smoothing(0.8)
    frames = ev.read_frames(settings.videos_dir / "carphone_pristine.mp4", 4, 64)
    one_batch = ev.stylize_frames(model, frames, 4, torch.device("cpu"))
    two_batches = ev.stylize_frames(model, frames, 2, torch.device("cpu"))
    np.testing.assert_allclose(np.stack(one_batch), np.stack(two_batches), atol=1e-5)
    model.set_norm_smoothing(0.0)
    unsmoothed = ev.stylize_frames(model, frames, 4, torch.device("cpu"))
    assert not np.allclose(np.stack(unsmoothed[1:]), np.stack(one_batch[1:]), atol=1e-5)


def test_read_frames_downscales_and_stops_early(settings):
    frames = ev.read_frames(settings.videos_dir / "carphone_pristine.mp4", 3, 88)  # 176x144 source
    assert len(frames) == 3 and frames[0].shape == (72, 88, 3) and frames[0].dtype == np.uint8


def test_validation_photos_are_fixed_centre_crops(settings):
    a, b = ev.validation_photos(2, 48), ev.validation_photos(2, 48)
    assert a.shape == (2, 3, 48, 48) and torch.equal(a, b)


def test_style_comes_from_recorded_images_then_spec():
    images = [{"name": "kandinsky", "weight": 0.7}, {"name": "candy", "weight": 0.3}]
    info = ModelInfo(net=PRESETS["fast"], style={"spec": "ignored", "images": images})
    assert ev.style_spec(info) == "kandinsky:0.7,candy:0.3"
    assert ev.style_spec(ModelInfo(net=PRESETS["fast"], style={"spec": "udnie"})) == "udnie"
    with pytest.raises(ValueError, match="no style"):
        ev.style_spec(ModelInfo(net=PRESETS["fast"]))


def test_losses_use_the_training_layers_recorded_in_the_model():
    train = {"content_layer": "relu3_1", "style_layers": ["relu1_1"], "style_scales": [1.0], "style_size": 128}
    setup = ev.LossSetup.from_info(ModelInfo(net=PRESETS["fast"], train=train))
    assert setup == ev.LossSetup("relu3_1", ("relu1_1",), (1.0,), 128)
    defaults = ev.LossSetup.from_info(ModelInfo(net=PRESETS["fast"]))
    assert defaults.content_layer == "relu2_2" and defaults.style_scales == (1.0, 0.5, 0.25)


def test_model_without_a_style_needs_one_given(settings, tmp_path):
    model_dir = tiny_model(tmp_path / "m", style={})
    with pytest.raises(ValueError, match="no style"):
        ev.evaluate(model_dir, options=TINY)


def test_cli_evaluate_prints_a_table_for_a_folder(settings, tmp_path, monkeypatch):
    from clipmorph.cli import app

    monkeypatch.setattr(ev.EvalOptions, "preset", classmethod(lambda cls, quick: TINY))
    model_dir = tiny_model(tmp_path / "m", style={})
    result = CliRunner().invoke(app, ["evaluate", str(model_dir), "--style", "candy", "--baseline"])
    assert result.exit_code == 0, result.output
    assert "warping_ratio" in result.output and "no stabilisation" in result.output

    no_style = CliRunner().invoke(app, ["evaluate", str(model_dir)])
    assert no_style.exit_code != 0 and "no style" in no_style.output
