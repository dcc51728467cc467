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
) -> dict[str, torch.Tensor]:
    """Unweighted "content" and "style" losses of the output batch y against fixed targets.

    One VGG pass of y at full size serves the content term and the scale-1 Grams. Both losses are
    float32 also when the VGG runs in bfloat16 under autocast.
    """
    feats = vgg(y, sorted({content_layer, *style_layers}))
    grams = losses.multiscale_grams(vgg, y, style_layers, style_scales, full=feats)
    return {
        "content": losses.content_loss(feats[content_layer].float(), content_feat.float()),
        "style": losses.style_loss(grams, style_target, balanced),
    }
