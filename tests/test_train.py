import itertools
import shutil

import pytest
import torch

from clipmorph import registry
from clipmorph.model.artifact import load_model
from clipmorph.training.train import Checkpoint, TrainConfig, TrainStep, train


@pytest.fixture
def tiny_photos(tmp_path, assets):
    """A handful of photos (one greyscale-converted, one unreadable) in a nested folder."""
    from PIL import Image

    root = tmp_path / "photos"
    (root / "nested").mkdir(parents=True)
    src = sorted((assets / "photos" / "coco128_train2017").glob("*.jpg"))[:3]
    for i, p in enumerate(src):
        shutil.copy(p, root / ("nested" if i else ".") / p.name)
    Image.open(src[0]).convert("L").save(root / "grey.png")
    (root / "broken.jpg").write_bytes(b"not a jpeg at all")
    val = tmp_path / "val"
    val.mkdir()
    shutil.copy(sorted((assets / "photos" / "coco128_val2017").glob("*.jpg"))[0], val / "v.jpg")
    return root, val


def tiny_config(tiny_photos, tmp_path, **overrides) -> TrainConfig:
    root, val = tiny_photos
    base = dict(
        style="kandinsky",
        iters=6,
        batch_size=2,
        size=48,
        style_size=96,
        preset="fast",  # the loop is under test; a small net learns in a few steps at this lr
        lr=1e-2,
        style_weight=1e5,
        checkpoint_every=2,
        val_every=3,
        val_images=1,
        workers=0,
        train_dirs=(str(root),),
        val_dir=str(val),
        run_dir=str(tmp_path / "run"),
        evaluate=False,
    )
    return TrainConfig(**(base | overrides))


def test_few_steps_lower_the_loss_register_a_loadable_version(settings, tiny_photos, tmp_path):
    cfg = tiny_config(tiny_photos, tmp_path, iters=8)
    result = train(cfg)

    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.5 * first
    assert result.version == "1" and result.registered_name == "clipmorph-kandinsky"

    resolved = registry.resolve("kandinsky/1")
    model, info = load_model(resolved.path)
    assert info.style["images"][0]["name"] == "kandinsky" and len(info.style["images"][0]["sha256"]) == 64
    assert info.train["unreadable_images"] == 1
    with torch.no_grad():
        out = model(torch.rand(1, 3, 41, 57))
    assert out.shape == (1, 3, 41, 57)
    assert (tmp_path / "run" / "val_000003.png").exists()


def test_interrupted_run_resumes_from_its_checkpoint(settings, tiny_photos, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_photos, tmp_path, iters=6, register=False)
    original = Checkpoint.save

    def save_then_crash(self, model, optimizer, step, cfg_, elapsed):
        original(self, model, optimizer, step, cfg_, elapsed)
        if step == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["optimizer"]["state"][0]["step"].item() == 4

    monkeypatch.setattr(Checkpoint, "save", original)
    result = train(cfg)
    assert result.resumed_from == 4
    assert len(result.history) == 2
    _, info = load_model(result.model_dir)
    assert info.train["steps"] == 6
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_on_step_reports_every_step_and_an_exception_from_it_stops_the_run(settings, tiny_photos, tmp_path):
    """What a training job's progress is built on: steps, losses, rate, validation sheets; a cancel by raising."""
    steps: list[TrainStep] = []
    cfg = tiny_config(tiny_photos, tmp_path, iters=4, val_every=2, register=False)
    train(cfg, on_step=steps.append)
    assert [s.step for s in steps] == [1, 2, 3, 4] and all(s.total == 4 for s in steps)
    assert [s.validation.name if s.validation else None for s in steps] == [
        None,
        "val_000002.png",
        None,
        "val_000004.png",
    ]
    assert set(steps[-1].losses) >= {"loss", "content", "style"} and steps[-1].steps_per_second > 0
    assert steps[-1].eta_seconds == 0 and steps[0].eta_seconds > 0

    class Stop(Exception):
        pass

    def stop_at_2(step: TrainStep) -> None:
        if step.step == 2:
            raise Stop

    with pytest.raises(Stop):
        train(tiny_config(tiny_photos, tmp_path, iters=4, register=False, run_dir=str(tmp_path / "stopped")), stop_at_2)
    assert torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["step"] == 2  # resumable


def test_blended_style_and_bad_override(settings):
    with pytest.raises(ValueError, match="unknown training option 'itters'"):
        TrainConfig.from_overrides({"itters": "5"})
    cfg = TrainConfig.from_overrides({"style": "starrynight:1,kanagawa:3", "iters": "5", "style_scales": "1,0.5"})
    assert cfg.iters == 5 and cfg.style_scales == (1.0, 0.5) and cfg.name == "starrynight-1+kanagawa-3"


def test_cosine_learning_rate_falls_to_its_floor_and_depends_on_the_step_alone():
    from clipmorph.training.train import lr_at

    cfg = TrainConfig(lr=1e-3, iters=100, lr_schedule="cosine", lr_floor=0.1)
    rates = [lr_at(cfg, step) for step in range(101)]
    assert rates[0] == pytest.approx(1e-3) and rates[50] == pytest.approx(0.55e-3) and rates[100] == pytest.approx(1e-4)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert lr_at(TrainConfig(lr=1e-3, iters=100), 70) == 1e-3  # constant by default
    with pytest.raises(ValueError, match="unknown lr_schedule 'step'"):
        TrainConfig(lr_schedule="step")


def test_wandb_offline_run_gets_config_losses_and_validation_images(settings, tiny_photos, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    train(tiny_config(tiny_photos, tmp_path, iters=3, register=False))
    (run,) = (settings.var_dir / "wandb").glob("offline-run-*")
    assert list(run.glob("run-*.wandb"))
    images = list((run / "files" / "media" / "images").glob("validation_3_*.png"))
    assert len(images) == 1


def test_warm_start_takes_the_weights_of_a_model_of_the_same_preset(settings, tmp_path):
    from clipmorph.model.artifact import ModelInfo, save_model
    from clipmorph.model.network import PRESETS, build
    from clipmorph.training.train import TrainConfig, initial_model

    torch.manual_seed(1)
    source = build("rt_ln")
    folder = save_model(source, ModelInfo(net=PRESETS["rt_ln"]), tmp_path / "src")
    warm = initial_model(TrainConfig(preset="rt_ln", init_from=str(folder)))
    for (name, a), b in zip(source.state_dict().items(), warm.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="not a 'fast' network"):
        initial_model(TrainConfig(preset="fast", init_from=str(folder)))
