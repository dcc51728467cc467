"""The perceptual objective (Johnson et al. 2016), written once for training, optimisation and evaluation.

What the losses of `clipmorph.training.losses` compare: the paintings' Gram matrices (the style target),
the input's VGG features (the content target), and an output's content features and multi-scale Grams.
Training (`train.loss_terms`), per-image optimisation (`optimize.Objective`), the evaluation's
`style_loss`/`content_loss` and the quality benchmark's painting Grams all come through here, so a
number one of them reports is the same number the others would compute.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from clipmorph.model.vgg import VGGFeatures
from clipmorph.training import losses
from clipmorph.training.data import StyleImage, load_style_tensor

# Random directions per layer and step for the sliced Wasserstein term: as many as relu3_1 has channels made
# a training step 2.4x slower (5 s against 2.1 here); fresh directions every step cover the rest over time.
PROJECTIONS = 32
# The "layer" of the sliced Wasserstein term that is the picture itself (its colours), not a VGG activation.
PIXELS = "rgb"


def _vgg_layers(layers: Sequence[str]) -> list[str]:
    return [layer for layer in layers if layer != PIXELS]


def style_targets(
    vgg: VGGFeatures,
    images: Sequence[StyleImage],
    side: int,
    layers: Sequence[str],
    scales: Sequence[float],
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Weighted sum of each painting's multi-scale Grams ("relu2_1@0.5", ...), each shown with longer side `side`.

    The weights are taken as given: parse_style_spec already makes them sum to 1.
    """
    target: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for item in images:
            img = load_style_tensor(item.path, side).to(device)
            for key, g in losses.multiscale_grams(vgg, img, layers, scales).items():
                target[key] = target.get(key, 0) + item.weight * g
    return target


def feature_targets(
    vgg: VGGFeatures,
    images: Sequence[StyleImage],
    side: int,
    layers: Sequence[str],
    device: torch.device,
    most: int = 16384,
) -> dict[str, torch.Tensor]:
    """The paintings' features at every position, (C, M) per layer (PIXELS: the pixels themselves), for the
    sliced Wasserstein term; each painting contributes positions in proportion to its weight, at most `most`."""
    parts: dict[str, list[torch.Tensor]] = {}
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for item in images:
            img = load_style_tensor(item.path, side).to(device)
            feats = vgg(img, _vgg_layers(layers)) | {PIXELS: img}
            for layer in layers:
                f = feats[layer].float().flatten(2)[0]  # (C, HW)
                keep = max(1, min(f.shape[1], round(most * item.weight)))
                picked = torch.randperm(f.shape[1], generator=generator)[:keep].to(device)
                parts.setdefault(layer, []).append(f[:, picked])
    return {layer: torch.cat(p, dim=1) for layer, p in parts.items()}


def content_target(vgg: VGGFeatures, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The input's features at the content layer: a fixed target, so no graph is kept."""
    with torch.no_grad():
        return vgg(x, [layer])[layer]


def perceptual_losses(
    vgg: VGGFeatures,
    y: torch.Tensor,
    content_feat: torch.Tensor,
    style_target: dict[str, torch.Tensor],
    content_layer: str,
    style_layers: Sequence[str],
    style_scales: Sequence[float],
    balanced: bool = False,
    feature_target: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted "content" and "style" losses of the output batch y against fixed targets, and with
    feature_target (feature_targets) the "distribution" term: sliced Wasserstein distances to the painting.

    One VGG pass of y at full size serves the content term and the scale-1 Grams. Both losses are
    float32 also when the VGG runs in bfloat16 under autocast.
    """
    feats = vgg(y, sorted({content_layer, *style_layers, *_vgg_layers(list(feature_target or {}))}))
    grams = losses.multiscale_grams(vgg, y, style_layers, style_scales, full=feats)
    terms = {
        "content": losses.content_loss(feats[content_layer].float(), content_feat.float()),
        "style": losses.style_loss(grams, style_target, balanced),
    }
    if feature_target:  # the sliced Wasserstein term, on the same VGG pass
        feats = feats | {PIXELS: y}
        # Each layer relative to the painting's own spread there: raw, relu3_1 would count ~1000x the pixels.
        terms["distribution"] = sum(
            losses.sliced_wasserstein(
                feats[layer].float(), target, losses.random_projections(target.shape[0], PROJECTIONS, y.device)
            )
            / target.var(dim=1).mean()
            for layer, target in feature_target.items()
        )
    return terms
