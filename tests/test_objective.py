"""The perceptual objective shared by training, optimisation and evaluation, with the real VGG and paintings."""

from __future__ import annotations

import pytest
import torch

from clipmorph.evaluation import quality
from clipmorph.settings import get_settings
from clipmorph.training import losses, objective
from clipmorph.training.data import StyleImage, load_style_tensor

LAYERS = ("relu1_1", "relu2_1", "relu3_1")
SCALES = (1.0, 0.5)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def vgg(assets):
    return quality.load_project_vgg()


def painting(name: str, weight: float = 1.0) -> StyleImage:
    return StyleImage(get_settings().styles_dir / f"{name}.jpg", weight)


def test_multiscale_grams_reuse_the_full_size_pass_exactly(vgg, one_torch_thread):
    img = load_style_tensor(painting("kandinsky").path, 64)
    fresh = losses.multiscale_grams(vgg, img, LAYERS, (0.5, 1.0))
    reused = losses.multiscale_grams(vgg, img, LAYERS, (0.5, 1.0), full=vgg(img, list(LAYERS)))
    assert list(fresh) == [f"{layer}@{s}" for s in ("0.5", "1") for layer in LAYERS]  # the order of `scales`
    assert all(torch.equal(fresh[k], reused[k]) for k in fresh)
    assert fresh["relu2_1@1"].shape == (1, 128, 128)


def test_a_blend_target_is_the_weighted_sum_of_its_paintings(vgg, one_torch_thread):
    def target(*images: StyleImage) -> dict[str, torch.Tensor]:
        return objective.style_targets(vgg, images, 64, LAYERS, SCALES, CPU)

    blend = target(painting("kandinsky", 0.25), painting("klimt", 0.75))
    kandinsky, klimt = target(painting("kandinsky")), target(painting("klimt"))
    assert blend.keys() == kandinsky.keys() and len(blend) == len(LAYERS) * len(SCALES)
    for key in blend:
        assert torch.allclose(blend[key], 0.25 * kandinsky[key] + 0.75 * klimt[key], rtol=1e-5, atol=0)
    assert not torch.allclose(kandinsky["relu3_1@0.5"], klimt["relu3_1@0.5"], rtol=0.1)


def test_the_quality_benchmark_grades_against_the_training_target(vgg, one_torch_thread):
    spec = painting("kandinsky")
    graded = quality.painting_grams(vgg, str(spec.path), 64, LAYERS, SCALES)
    trained = objective.style_targets(vgg, [spec], 64, LAYERS, SCALES, CPU)
    assert graded.keys() == trained.keys()
    assert all(torch.equal(graded[k], trained[k]) for k in graded)


def test_perceptual_losses_vanish_on_their_own_targets_and_not_on_another_painting(vgg, one_torch_thread):
    x = load_style_tensor(painting("kandinsky").path, 64)
    own = objective.style_targets(vgg, [painting("kandinsky")], 64, LAYERS, SCALES, CPU)
    other = objective.style_targets(vgg, [painting("klimt")], 64, LAYERS, SCALES, CPU)
    content = objective.content_target(vgg, x.clone().requires_grad_(True), "relu2_2")
    assert not content.requires_grad  # a fixed target: no graph back to the input

    same = objective.perceptual_losses(vgg, x, content, own, "relu2_2", LAYERS, SCALES)
    assert same["content"].item() == 0.0 and same["style"].item() < 1e-12
    noisy = (x + 0.2 * torch.rand_like(x)).clamp(0, 1).requires_grad_(True)
    found = objective.perceptual_losses(vgg, noisy, content, other, "relu2_2", LAYERS, SCALES, balanced=True)
    assert found["content"].item() > 0 and found["style"].item() > 1e-3
    (found["content"] + found["style"]).backward()  # a loss to train on: the gradient reaches the image
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0


def test_perceptual_losses_are_float32_under_bfloat16_autocast(vgg, one_torch_thread):
    x = load_style_tensor(painting("kandinsky").path, 32)
    target = objective.style_targets(vgg, [painting("klimt")], 32, LAYERS, SCALES, CPU)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        content = objective.content_target(vgg, x, "relu2_2")
        assert content.dtype == torch.bfloat16  # the VGG itself does run in bfloat16 here
        grams = losses.multiscale_grams(vgg, x, LAYERS, SCALES)
        found = objective.perceptual_losses(vgg, x, content, target, "relu2_2", LAYERS, SCALES)
    assert {g.dtype for g in grams.values()} == {torch.float32}  # the bmm alone gives bfloat16 here
    assert {v.dtype for v in found.values()} == {torch.float32}
    assert found["style"].item() > 0


def test_the_distribution_term_is_near_zero_on_the_painting_and_large_on_a_washed_out_copy(vgg, one_torch_thread):
    """feature_targets + perceptual_losses(feature_target=...): the sliced Wasserstein term of training."""
    spec = painting("kandinsky")
    layers = ("rgb", "relu1_1", "relu3_1")
    targets = objective.feature_targets(vgg, [spec], 64, layers, CPU)
    assert set(targets) == set(layers) and targets["rgb"].shape[0] == 3 and targets["relu3_1"].shape[0] == 256
    x = load_style_tensor(spec.path, 64)
    grams = objective.style_targets(vgg, [spec], 64, LAYERS, SCALES, CPU)
    content = objective.content_target(vgg, x, "relu2_2")

    def distribution(img: torch.Tensor) -> float:
        found = objective.perceptual_losses(vgg, img, content, grams, "relu2_2", LAYERS, SCALES, feature_target=targets)
        return found["distribution"].item()

    own = distribution(x)
    washed = distribution(0.5 * x + 0.5 * x.mean())
    assert own < 0.02 and washed > 10 * own
    assert "distribution" not in objective.perceptual_losses(vgg, x, content, grams, "relu2_2", LAYERS, SCALES)
